"""Entry points of the TTS service: ``load_config`` and ``create_service``."""

from __future__ import annotations

import os
from collections.abc import Mapping

from services.tts.config import TTSConfig
from services.tts.service import TTSService
from talkmesh.common.server import Service
from talkmesh.common.service_config import load_service_config
from talkmesh.common.telemetry import Telemetry


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> TTSConfig:
    """The dataclass defaults, overlaid by ``path`` (if given), then TALKMESH_TTS__* overrides."""
    return load_service_config(TTSConfig, "tts", path, env)


def create_service(config: TTSConfig, telemetry: Telemetry) -> Service:
    return TTSService(config, telemetry)
