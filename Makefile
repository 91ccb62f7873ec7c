# talkmesh: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# buf (the protobuf linter, from npm) lives next to the Python venv; scripts/buf.sh installs it on
# first use, once per version.
BUF := BUF_NODE_DIR=$(abspath $(VENV))/node scripts/buf.sh
# `make demo` installs what the services need; `make test` adds the test tools and the model
# export tools (PyTorch, transformers, diffusers), which the services never import.
RUNTIME_EXTRAS ?= all,bench
DEV_EXTRAS ?= all,bench,dev,tools
# `make test` runs the suite on this many pytest-xdist workers (0: in this process, one test at a time).
TEST_WORKERS ?= 2

.PHONY: demo test install install-dev proto lint typecheck bench clean up images images-gpu images-push images-gpu-push

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-runtime: pyproject.toml scripts/install.sh | $(BIN)/python
	PIP=$(BIN)/pip EDITABLE=1 scripts/install.sh $(RUNTIME_EXTRAS)
	touch $@

$(VENV)/.installed-dev: pyproject.toml scripts/install.sh | $(BIN)/python
	PIP=$(BIN)/pip EDITABLE=1 scripts/install.sh $(DEV_EXTRAS)
	touch $@ $(VENV)/.installed-runtime

install: $(VENV)/.installed-runtime
install-dev: $(VENV)/.installed-dev

## Start the six services (five gRPC stages and the web edge), speak a paragraph with the default avatar, write out/demo.mp4, stop.
demo: install
	$(BIN)/talkmesh demo -o out/demo.mp4

## Lint, type-check and run the whole test suite.
test: lint typecheck
	$(BIN)/pytest -q -n $(TEST_WORKERS)

## Regenerate talkmesh/v1/*_pb2*.py from protos/.
proto: install-dev
	PYTHON=$(BIN)/python scripts/gen_protos.sh

## ruff over the Python; buf over protos/ (buf.yaml: every element documented, naming rules).
lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BUF) lint

typecheck: install-dev
	$(BIN)/mypy talkmesh services tools

## Start every service (the five gRPC stages and the web edge on :8080) on their default ports (Ctrl-C stops them).
up: install
	$(BIN)/talkmesh up

## Measure latency, real-time factor and concurrency; appends to BENCHMARKS.md.
bench: install
	$(BIN)/talkmesh bench

## Container images, all from the one Dockerfile (`--build-arg SERVICE=<name>`); see docs/DEPLOY.md.
## IMAGES is every service of the registry (talkmesh/common/registry.py, read without installing
## anything); GPU_IMAGES the services whose GPU image an overlay runs (only the renderer: audio_features
## and tts run on CPU nodes in every overlay; `make gpu-image-audio_features` builds one if you move it).
## No image is published: build them and push them to your registry (docs/DEPLOY.md, section 1).
REGISTRY ?= ghcr.io/talkmesh
TAG ?= 0.1.0
IMAGES ?= $(shell PYTHONPATH=$(CURDIR) $(PYTHON) -c "from talkmesh.common.registry import NAMES; print(*NAMES)")
GPU_IMAGES ?= renderer
image_name = $(REGISTRY)/$(subst _,-,$(1))

images: $(addprefix image-,$(IMAGES))
images-gpu: $(addprefix gpu-image-,$(GPU_IMAGES))
## Build and push to $(REGISTRY) (`docker login` first); then pin the pushed digests in your overlay.
images-push: $(addprefix push-,$(IMAGES))
images-gpu-push: $(addprefix gpu-push-,$(GPU_IMAGES))

image-%:
	docker build --build-arg SERVICE=$* -t $(call image_name,$*):$(TAG) .

gpu-image-%:
	docker build --build-arg SERVICE=$* --target gpu -t $(call image_name,$*):$(TAG)-gpu .

push-%: image-%
	docker push $(call image_name,$*):$(TAG)

gpu-push-%: gpu-image-%
	docker push $(call image_name,$*):$(TAG)-gpu

clean:
	rm -rf $(VENV) out build *.egg-info .pytest_cache .mypy_cache .ruff_cache
