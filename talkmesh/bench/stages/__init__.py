"""Per-stage measurements (`talkmesh bench components`): each module drives one service's internals
in-process. They belong to the benchmark, not to the services: no image contains them and the
services never import them (the import contracts in pyproject.toml check both)."""
