"""Entry points of the encoder service: ``load_config`` and ``create_service``."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from importlib import resources

from services.encoder.backends import probe_nvenc
from services.encoder.config import EncoderConfig
from services.encoder.server import EncoderService
from talkmesh.common.config import load_config as _load_config
from talkmesh.common.server import Service
from talkmesh.common.telemetry import Telemetry

ENV_PREFIX = "TALKMESH_ENCODER"


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> EncoderConfig:
    """The config from ``path`` (default: the packaged config.yaml) with TALKMESH_ENCODER__* overrides."""
    if path is None:
        with resources.as_file(resources.files("services.encoder") / "config.yaml") as default:
            return _load_config(EncoderConfig, default, env_prefix=ENV_PREFIX, env=env)
    return _load_config(EncoderConfig, path, env_prefix=ENV_PREFIX, env=env)


def create_service(
    config: EncoderConfig, telemetry: Telemetry, *, nvenc_probe: Callable[[int], bool] = probe_nvenc
) -> Service:
    """The encoder service; NVENC is probed in ``start()`` (``nvenc_probe`` replaces the probe)."""
    return EncoderService(config, telemetry, nvenc_probe=nvenc_probe)
