"""The five gRPC services in this process, each on its own port (port 0), for end-to-end tests;
with ``web=True`` also the browser edge (HTTP on a free port)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.trace import TracerProvider

from talkmesh.common import registry
from talkmesh.common.config import ServerConfig, ServerTLS
from talkmesh.common.server import ServiceHost
from talkmesh.common.telemetry import Telemetry


@dataclass
class InProcessMesh:
    hosts: dict[str, Any] = field(default_factory=dict)  # ServiceHost (gRPC) or WebHost
    telemetry: dict[str, Telemetry] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return self.hosts["gateway"].address

    @property
    def web_url(self) -> str:
        """``http://host:port/`` of the browser edge (``inprocess_mesh(web=True)``)."""
        return str(self.hosts["web"].url)

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
    pki: Path | None = None,
    web: bool = False,
    max_streams: Mapping[str, int] | None = None,
) -> AsyncIterator[InProcessMesh]:
    """``pki``: a directory made by ``talkmesh.devcerts.make_dev_pki``: mutual TLS on every internal
    hop (each service presents its own certificate, requires the mesh CA's) and TLS without client
    certificates on the gateway's port, as the Kubernetes mtls component sets them up.
    ``web``: also start the browser edge (an HTTP service, not a gRPC one).
    ``max_streams``: a service's ``server.max_concurrent_streams`` when not the default."""
    # frame rings in a directory of the test's own: none may be left behind (checked at the end)
    rings = tmp_path / "frame-rings"
    rings.mkdir(exist_ok=True)
    base_env = {
        "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "avatars"),
        "TALKMESH_RENDERER__FRAME_RING__DIRECTORY": str(rings),
        "TALKMESH_ENCODER__FRAME_RING__DIRECTORY": str(rings),
    }
    base_env.update(env or {})
    mesh = InProcessMesh()
    plain = ServerConfig(port=0, metrics_port=0 if metrics else -1, grace_seconds=2.0)
    async with contextlib.AsyncExitStack() as stack:
        for spec in registry.start_order():
            name = spec.name
            if spec.protocol == "http" and not web:
                continue
            main = importlib.import_module(spec.main_module)
            local_env = dict(base_env)
            for callee in spec.calls:
                local_env[f"{spec.env_prefix}__{callee.upper()}__TARGET"] = mesh.hosts[callee].address
                if pki is not None:  # this service's own certificate, the mesh CA, the callee's name
                    tls = f"{spec.env_prefix}__{callee.upper()}__TLS__"
                    local_env[tls + "CA_FILE"] = str(pki / name / "ca.crt")
                    local_env[tls + "CERT_FILE"] = str(pki / name / "tls.crt")
                    local_env[tls + "KEY_FILE"] = str(pki / name / "tls.key")
                    local_env[tls + "SERVER_NAME"] = callee.replace("_", "-")
            config = main.load_config(None, env=local_env)
            server_cfg = plain
            if pki is not None:
                client_ca = "" if name == "gateway" else str(pki / name / "ca.crt")
                server_cfg = dataclasses.replace(
                    plain,
                    tls=ServerTLS(str(pki / name / "tls.crt"), str(pki / name / "tls.key"), client_ca_file=client_ca),
                )
            tel = Telemetry(name, tracer_provider=tracer_provider)
            # (the stages' principal check, as `up --api-keys` sets it: principal_required_env)
            server_cfg = dataclasses.replace(server_cfg, require_principal=config.server.require_principal)
            if max_streams and name in max_streams:
                server_cfg = dataclasses.replace(server_cfg, max_concurrent_streams=max_streams[name])
            if spec.protocol == "http":  # the web edge hosts itself, with the same server settings
                config = dataclasses.replace(config, server=server_cfg)
            service = main.create_service(config, tel)
            host = service if spec.protocol == "http" else ServiceHost(service, server_cfg)
            await host.start()
            stack.push_async_callback(host.stop, 2.0)
            mesh.hosts[name] = host
            mesh.telemetry[name] = tel
        yield mesh
    for _ in range(50):  # a ring made while its stream ended is unlinked once made
        if not any(rings.iterdir()):
            break
        await asyncio.sleep(0.02)
    assert not any(rings.iterdir()), f"frame rings left behind: {sorted(p.name for p in rings.iterdir())}"
