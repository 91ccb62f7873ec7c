"""Entry points of the audio features service: configuration and service construction."""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping

from services.audio_features.config import AudioFeaturesConfig
from services.audio_features.server import AudioFeaturesService
from talkmesh.common import config as config_lib
from talkmesh.common.telemetry import Telemetry

ENV_PREFIX = "TALKMESH_AUDIO_FEATURES"


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> AudioFeaturesConfig:
    """The config at ``path`` (default: the packaged config.yaml), with environment overrides."""
    if path is not None:
        return config_lib.load_config(AudioFeaturesConfig, path, env_prefix=ENV_PREFIX, env=env)
    resource = importlib.resources.files("services.audio_features") / "config.yaml"
    with importlib.resources.as_file(resource) as default_path:
        return config_lib.load_config(AudioFeaturesConfig, default_path, env_prefix=ENV_PREFIX, env=env)


def create_service(config: AudioFeaturesConfig, telemetry: Telemetry) -> AudioFeaturesService:
    return AudioFeaturesService(config, telemetry)
