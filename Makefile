# talkmesh: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= all,dev,tools,bench

.PHONY: demo test install proto lint typecheck bench clean up

$(BIN)/talkmesh: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	PIP=$(BIN)/pip EDITABLE=1 scripts/install.sh $(EXTRAS)
	touch $(BIN)/talkmesh

install: $(BIN)/talkmesh

## Start the five services, speak a paragraph with the default avatar, write out/demo.mp4, stop.
demo: install
	$(BIN)/talkmesh demo -o out/demo.mp4

## Lint, type-check and run the whole test suite.
test: install
	$(BIN)/ruff check .
	$(BIN)/mypy talkmesh services tools
	$(BIN)/pytest -q

## Regenerate talkmesh/v1/*_pb2*.py from protos/.
proto: install
	PYTHON=$(BIN)/python scripts/gen_protos.sh

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy talkmesh services tools

up: install
	$(BIN)/talkmesh up

bench: install
	$(BIN)/talkmesh bench

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .mypy_cache .ruff_cache
