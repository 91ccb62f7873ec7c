"""The five services in this process, each on its own gRPC port (port 0), for end-to-end tests."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.trace import TracerProvider

from talkmesh.common import registry
from talkmesh.common.config import ServerConfig
from talkmesh.common.server import ServiceHost
from talkmesh.common.telemetry import Telemetry


@dataclass
class InProcessMesh:
    hosts: dict[str, ServiceHost] = field(default_factory=dict)
    telemetry: dict[str, Telemetry] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return self.hosts["gateway"].address

    def active_streams(self) -> dict[str, float]:
        return {
            name: tel.metrics.registry.get_sample_value("talkmesh_streams_active", {"service": name}) or 0.0
            for name, tel in self.telemetry.items()
        }


@contextlib.asynccontextmanager
async def inprocess_mesh(
    tmp_path: Path,
    tracer_provider: TracerProvider | None = None,
    env: Mapping[str, str] | None = None,
    metrics: bool = False,
    max_streams: Mapping[str, int] | None = None,
) -> AsyncIterator[InProcessMesh]:
    """``max_streams``: a service's ``server.max_concurrent_streams`` when not the default."""
    base_env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "avatars")}
    base_env.update(env or {})
    mesh = InProcessMesh()
    server_cfg = ServerConfig(port=0, metrics_port=0 if metrics else -1, grace_seconds=2.0)
    async with contextlib.AsyncExitStack() as stack:
        for spec in registry.start_order():
            name = spec.name
            main = importlib.import_module(spec.main_module)
            local_env = dict(base_env)
            for callee in spec.calls:
                local_env[f"{spec.env_prefix}__{callee.upper()}__TARGET"] = mesh.hosts[callee].address
            config = main.load_config(None, env=local_env)
            tel = Telemetry(name, tracer_provider=tracer_provider)
            cfg = server_cfg
            if max_streams and name in max_streams:
                cfg = dataclasses.replace(server_cfg, max_concurrent_streams=max_streams[name])
            host = ServiceHost(main.create_service(config, tel), cfg)
            await host.start()
            stack.push_async_callback(host.stop, 2.0)
            mesh.hosts[name] = host
            mesh.telemetry[name] = tel
        yield mesh
