"""Exit 0 when a talkmesh service's gRPC health check says SERVING (the images' HEALTHCHECK).

    python -m talkmesh.healthcheck HOST:PORT [HEALTH_SERVICE]
    python -m talkmesh.healthcheck --service NAME [--config FILE] [--check HEALTH_SERVICE]

Health service "" is readiness, "liveness" is liveness. With ``--service`` the port and the TLS
settings are the ones the service itself uses: its registry ports, overlaid by ``--config`` and
by ``TALKMESH_<NAME>__SERVER__...`` environment variables. When ``server.tls.cert_file`` is set the
check connects to ``localhost`` over TLS, verifying the server against ``server.tls.client_ca_file``
and presenting the service's own certificate (the mesh requires client certificates); that is how a
probe reaches a service whose port accepts only mutual TLS. The HTTP edge (``web``) is checked
over HTTP instead: ``/readyz`` for readiness, ``/healthz`` for liveness.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from talkmesh.common import registry


def check(
    target: str, service: str = "", timeout: float = 3.0, credentials: grpc.ChannelCredentials | None = None
) -> bool:
    options = [("grpc.ssl_target_name_override", "localhost")] if credentials is not None else []
    channel = (
        grpc.secure_channel(target, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(target)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            print(f"unhealthy: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return False
    ok = resp.status == health_pb2.HealthCheckResponse.SERVING
    if not ok:
        print(f"unhealthy: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}", file=sys.stderr)
    return ok


def check_http(port: int, service: str = "", timeout: float = 3.0) -> bool:
    """An HTTP service's ``/readyz`` (``service`` "") or ``/healthz`` ("liveness") answers 200."""
    import urllib.error
    import urllib.request

    path = "/healthz" if service == "liveness" else "/readyz"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            ok = resp.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {path}: {exc}", file=sys.stderr)
        return False
    return ok


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def server_settings(service: str, config: str | None, env: Mapping[str, str]) -> dict[str, Any]:
    """The ``server`` section as the service would see it (registry ports, moved by
    ``$TALKMESH_PORT_BASE`` when set, ``config``, env).

    The service's own defaults are its config dataclass; of them the check needs only the ports,
    which come from the registry (without importing the service's modules).
    """
    spec = registry.spec(service)
    port, metrics_port = spec.ports(registry.port_base_from_env(env))  # $TALKMESH_PORT_BASE, as `serve`
    layers: list[Mapping[str, Any]] = [{"server": {"port": port, "metrics_port": metrics_port}}]
    if config:
        layers.append(yaml.safe_load(Path(config).read_text()) or {})
    head = f"{spec.env_prefix}__SERVER__"
    from_env: dict[str, Any] = {}
    for name, value in env.items():
        if name.startswith(head):
            node = from_env
            path = [p.lower() for p in name[len(head) :].split("__") if p]
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
    layers.append({"server": from_env})
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer)
    return dict(merged.get("server") or {})


def target_for(server: Mapping[str, Any]) -> tuple[str, grpc.ChannelCredentials | None]:
    port = int(server["port"])
    tls = server.get("tls") or {}
    if not tls.get("cert_file"):
        return f"127.0.0.1:{port}", None
    ca = Path(tls["client_ca_file"]).read_bytes() if tls.get("client_ca_file") else None
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=Path(tls["key_file"]).read_bytes(),
        certificate_chain=Path(tls["cert_file"]).read_bytes(),
    )
    return f"localhost:{port}", creds


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and not args[0].startswith("-"):
        if len(args) > 2:
            print("usage: python -m talkmesh.healthcheck HOST:PORT [HEALTH_SERVICE]", file=sys.stderr)
            return 2
        return 0 if check(args[0], args[1] if len(args) > 1 else "") else 1
    parser = argparse.ArgumentParser(prog="python -m talkmesh.healthcheck")
    parser.add_argument("--service", required=True, help="the talkmesh service (gateway, tts, renderer, ...)")
    parser.add_argument("--config", help="the service's config file (as for `talkmesh serve`)")
    parser.add_argument("--check", default="", help='health service: "" (readiness, default) or "liveness"')
    opts = parser.parse_args(args)
    try:
        server = server_settings(opts.service, opts.config, os.environ)
        if registry.spec(opts.service).protocol == "http":
            return 0 if check_http(int(server["port"]), opts.check) else 1
        target, creds = target_for(server)
    except (OSError, KeyError, ValueError, ModuleNotFoundError, yaml.YAMLError) as exc:
        print(f"unhealthy: cannot read the {opts.service} config: {exc}", file=sys.stderr)
        return 1
    return 0 if check(target, opts.check, credentials=creds) else 1


if __name__ == "__main__":
    sys.exit(main())
