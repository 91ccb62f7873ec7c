"""Entry points of the TTS service: ``load_config`` and ``create_service``."""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Mapping

from services.tts.config import TTSConfig
from services.tts.server import TTSService
from talkmesh.common.config import load_config as _load_config
from talkmesh.common.server import Service
from talkmesh.common.telemetry import Telemetry

ENV_PREFIX = "TALKMESH_TTS"


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> TTSConfig:
    """Reads ``path`` (default: the packaged config.yaml), then TALKMESH_TTS__* overrides from ``env``."""
    if path is None:
        with importlib.resources.as_file(importlib.resources.files("services.tts") / "config.yaml") as p:
            return _load_config(TTSConfig, p, env_prefix=ENV_PREFIX, env=env)
    return _load_config(TTSConfig, path, env_prefix=ENV_PREFIX, env=env)


def create_service(config: TTSConfig, telemetry: Telemetry) -> Service:
    return TTSService(config, telemetry)
