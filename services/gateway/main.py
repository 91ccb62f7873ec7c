"""Entry points used by `talkmesh serve gateway`."""

from __future__ import annotations

import os
from collections.abc import Mapping

from services.gateway.config import GatewayConfig
from services.gateway.server import GatewayService
from talkmesh.common.server import Service
from talkmesh.common.service_config import load_service_config
from talkmesh.common.telemetry import Telemetry


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """The dataclass defaults, overlaid by ``path`` (if given), then TALKMESH_GATEWAY__* overrides."""
    return load_service_config(GatewayConfig, "gateway", path, env)


def create_service(config: GatewayConfig, telemetry: Telemetry) -> Service:
    return GatewayService(config, telemetry)
