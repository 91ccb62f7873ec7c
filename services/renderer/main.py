"""Entry points of the renderer service: ``load_config`` and ``create_service``."""

from __future__ import annotations

import os
from collections.abc import Mapping

from services.renderer.config import RendererConfig
from services.renderer.server import RendererService
from talkmesh.common.server import Service
from talkmesh.common.service_config import load_service_config
from talkmesh.common.telemetry import Telemetry


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> RendererConfig:
    """The dataclass defaults, overlaid by ``path`` (if given), then TALKMESH_RENDERER__* overrides."""
    return load_service_config(RendererConfig, "renderer", path, env)


def create_service(config: RendererConfig, telemetry: Telemetry) -> Service:
    return RendererService(config, telemetry)
