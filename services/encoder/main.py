"""Entry points of the encoder service: ``load_config`` and ``create_service``."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from services.encoder.backends import probe_nvenc
from services.encoder.config import EncoderConfig
from services.encoder.render import FrameSource
from services.encoder.server import EncoderService
from talkmesh.common.server import Service
from talkmesh.common.service_config import load_service_config
from talkmesh.common.telemetry import Telemetry


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> EncoderConfig:
    """The dataclass defaults, overlaid by ``path`` (if given), then TALKMESH_ENCODER__* overrides."""
    return load_service_config(EncoderConfig, "encoder", path, env)


def create_service(
    config: EncoderConfig,
    telemetry: Telemetry,
    *,
    nvenc_probe: Callable[[int], bool] = probe_nvenc,
    frame_source: FrameSource | None = None,
) -> Service:
    """The encoder service; NVENC is probed in ``start()`` (``nvenc_probe`` replaces the probe).
    ``frame_source`` replaces the gRPC connection to the renderer (in-process runs)."""
    return EncoderService(config, telemetry, nvenc_probe=nvenc_probe, frame_source=frame_source)
