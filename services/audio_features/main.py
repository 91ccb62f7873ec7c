"""Entry points of the audio features service: configuration and service construction."""

from __future__ import annotations

import os
from collections.abc import Mapping

from services.audio_features.config import AudioFeaturesConfig
from services.audio_features.server import AudioFeaturesService
from talkmesh.common.service_config import load_service_config
from talkmesh.common.telemetry import Telemetry


def load_config(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> AudioFeaturesConfig:
    """The dataclass defaults, overlaid by ``path`` (if given), then TALKMESH_AUDIO_FEATURES__* overrides."""
    return load_service_config(AudioFeaturesConfig, "audio_features", path, env)


def create_service(config: AudioFeaturesConfig, telemetry: Telemetry) -> AudioFeaturesService:
    return AudioFeaturesService(config, telemetry)
