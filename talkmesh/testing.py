"""Test helpers: run a service in-process on port 0."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from talkmesh.common.config import ServerConfig
from talkmesh.common.server import Service, ServiceHost


@contextlib.asynccontextmanager
async def serve(
    service: Service, config: ServerConfig | None = None, *, metrics: bool = False
) -> AsyncIterator[ServiceHost]:
    """Starts ``service`` on 127.0.0.1 port 0 (and /metrics on a free port if asked); drains on exit."""
    cfg = config or ServerConfig(port=0, metrics_port=0 if metrics else -1, grace_seconds=2.0)
    host = ServiceHost(service, cfg)
    await host.start()
    try:
        yield host
    finally:
        await host.stop(grace=2.0)
