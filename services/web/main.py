"""Entry points used by `talkmesh serve web`."""

from __future__ import annotations

import os
from collections.abc import Mapping

from services.web.config import WebConfig
from services.web.server import WebHost
from talkmesh.common.service_config import load_service_config
from talkmesh.common.telemetry import Telemetry


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> WebConfig:
    """The dataclass defaults, overlaid by ``path`` (if given), then TALKMESH_WEB__* overrides."""
    return load_service_config(WebConfig, "web", path, env)


def create_service(config: WebConfig, telemetry: Telemetry) -> WebHost:
    """The web edge is an HTTP server, not a gRPC ``Service``: it hosts itself (same start/stop/
    run_until_signal interface as ``talkmesh.common.server.ServiceHost``)."""
    return WebHost(config, telemetry)
