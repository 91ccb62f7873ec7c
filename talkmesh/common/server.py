"""Hosting a talkmesh service: grpc.aio server, health, reflection, metrics endpoint, graceful drain.

A service implements ``Service`` (register its servicer, warm up, shut down); ``ServiceHost`` does
the rest the same way for all five:

* TLS or mutual TLS when ``server.tls`` is set (certificates reloaded when their files change);
* standard health checking (``server.health``): ``""`` and the service's own names report readiness
  (SERVING only after ``Service.start`` finished warming up), ``"liveness"`` reports SERVING while
  the process is up;
* server reflection (``server.reflection``); explicit max message sizes on both directions;
* interceptors for request ids, admission control, metrics and tracing;
* ``/metrics`` on ``metrics_port`` with the service's own registry, ``talkmesh_ready`` following readiness;
* graceful shutdown: readiness NOT_SERVING, new streams refused with UNAVAILABLE, streams in flight
  finish within ``grace_seconds``, then ``server.stop``.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import json
import logging
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from talkmesh.common.aio import cancel_and_wait
from talkmesh.common.channel import server_keepalive_options, transport_options
from talkmesh.common.config import ConfigError, ServerConfig
from talkmesh.common.health import LIVENESS, DependencyWatch
from talkmesh.common.interceptors import AdmissionState, ServerInterceptor
from talkmesh.common.logs import JsonFormatter
from talkmesh.common.telemetry import Series, Telemetry
from talkmesh.common.tls import ReloadingServerCertificates

log = logging.getLogger(__name__)



class Service(abc.ABC):
    """One talkmesh service: what ``ServiceHost`` needs from it."""

    #: short name used in metrics and logs ("tts", "renderer", ...)
    name: str

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    @abc.abstractmethod
    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        """Adds the servicer(s) to ``server``; returns the full gRPC service names."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Loads models and warms up. Readiness turns SERVING after this returns."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Releases resources after the server stopped."""

    def known_series(self) -> Sequence[Series]:
        """The series this service's own code records whose label values it knows before any
        request (its stages, queues, reasons, the metrics only it observes), built from the enums
        that define those values: exported at 0 from start-up (``Telemetry.init_series``), so
        every dashboard panel and alert has a series from the first scrape. The host adds those
        of the calls it serves (``ServerInterceptor.known_series``)."""
        return ()

    def dependencies(self) -> Mapping[str, grpc.aio.Channel]:
        """Channels to the stages this service calls (their health decides its readiness)."""
        return {}

    def dependencies_changed(self, down: list[str]) -> str:
        """Called when stages stop or start answering; returns why new streams are refused with
        UNAVAILABLE ("" accepts them: a service whose every call needs the stages refuses)."""
        return ""

    #: True for the public edge (the gateway): statuses it returns are scrubbed of internal
    #: addresses, file paths and exception text (talkmesh.common.errors.scrub; logs keep them),
    #: and the caller's API key is never taken from metadata (talkmesh.common.principal).
    external: bool = False

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        """Interceptors of this service, run inside the common one (e.g. the gateway's API keys):
        errors they raise become statuses like a handler's."""
        return ()

    def bound(self, address: str) -> None:  # noqa: B027 - optional hook
        """Called with the ``host:port`` the server listens on, once it is bound."""

    async def drain(self) -> None:  # noqa: B027 - optional hook
        """SIGTERM: long-lived streams (live sessions) are asked to end within the grace period."""


def grpc_methods(services: Sequence[str]) -> list[str]:
    """The methods (``/package.Service/Method``, as a call names them) of the gRPC services named
    in full, from their generated descriptors (none for a service served without descriptors, by a
    generic handler)."""
    pool = descriptor_pool.Default()
    out = []
    for name in services:
        try:
            service = pool.FindServiceByName(name)
        except KeyError:
            continue
        out += [f"/{name}/{method.name}" for method in service.methods]
    return out


class BindError(RuntimeError):
    """A port or socket the service needs is taken; the message is one line naming it."""


def check_port_free(service: str, what: str, host: str, port: int) -> None:
    """BindError naming ``host:port`` if something already listens there."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "is already in use (another talkmesh mesh?)" if exc.errno == errno.EADDRINUSE else str(exc)
            raise BindError(f"{service}: {what} port {host}:{port} {reason}") from None


def prepare_unix_socket(service: str, path: str) -> None:
    """Removes a stale socket file at ``path``; BindError if a live server still listens there."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(p))
            except OSError:
                p.unlink(missing_ok=True)  # nobody listens: a leftover from a killed process
            else:
                raise BindError(f"{service}: unix socket {path} is already served by another process")
    p.parent.mkdir(parents=True, exist_ok=True)


def _add_port(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


class ServiceHost:
    def __init__(self, service: Service, config: ServerConfig) -> None:
        self.service = service
        self.config = config
        self.telemetry = service.telemetry
        self.admission = AdmissionState(config.max_concurrent_streams, config.max_concurrent_unary)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.metrics_port = -1
        self._metrics_server: Any = None
        self._grpc_server: grpc.aio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._deps_down: list[str] = []
        self._names: Sequence[str] = ()
        self._stopped = asyncio.Event()
        #: the server's certificates when ``server.tls`` is set (reloaded when the files change)
        self.certificates: ReloadingServerCertificates | None = None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def start(self) -> int:
        """Binds, serves, warms the service up, then reports ready. On failure nothing is left
        listening (the error is raised: BindError for a busy port, the service's own otherwise)."""
        try:
            return await self._start()
        except BaseException:
            await self._abort_start()
            raise

    async def _abort_start(self) -> None:
        await cancel_and_wait(self._watch)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        if self._grpc_server is not None:
            await self._grpc_server.stop(0)
            self._grpc_server = None
        self.server = None

    async def _start(self) -> int:
        cfg = self.config
        common = ServerInterceptor(
            self.telemetry,
            self.admission,
            write_timeout=cfg.write_timeout_seconds,
            edge=self.service.external,
            require_principal=cfg.require_principal,
        )
        server = grpc.aio.server(interceptors=[common, *self.service.interceptors()], options=self._server_options())
        self._names = list(self.service.register(server))
        # before /metrics serves: the first scrape sees every series known in advance, at 0
        self.telemetry.init_series([*common.known_series(grpc_methods(self._names)), *self.service.known_series()])
        served = list(self._names)
        if cfg.health:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            served.append(health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        if cfg.reflection:
            reflection.enable_server_reflection([*served, reflection.SERVICE_NAME], server)
        credentials = None
        if cfg.tls.enabled:
            try:
                self.certificates = ReloadingServerCertificates(cfg.tls)
            except ConfigError as exc:
                raise exc.under("server") from None
            credentials = self.certificates.credentials()
        await self._set_ready(False)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        name = self.service.name
        # Ports are checked before gRPC binds them: a busy port is one clear line (BindError), and
        # gRPC's SO_REUSEPORT is off, so a second mesh can never silently share a running one's port.
        if cfg.port:
            check_port_free(name, "gRPC", cfg.host, cfg.port)
        if cfg.metrics_port > 0:
            check_port_free(name, "metrics", cfg.host, cfg.metrics_port)
        try:
            self.port = _add_port(server, f"{cfg.host}:{cfg.port}", credentials)
        except RuntimeError as exc:
            raise BindError(f"{name}: cannot listen on {cfg.host}:{cfg.port} (gRPC): {exc}") from None
        if cfg.unix_socket:
            prepare_unix_socket(name, cfg.unix_socket)
            try:
                _add_port(server, f"unix:{cfg.unix_socket}", credentials)
            except RuntimeError as exc:
                raise BindError(f"{name}: cannot listen on unix:{cfg.unix_socket}: {exc}") from None
        if cfg.metrics_port >= 0:
            try:
                httpd, _thread = start_http_server(
                    cfg.metrics_port, addr=cfg.host, registry=self.telemetry.metrics.registry
                )
            except OSError as exc:
                raise BindError(f"{name}: cannot listen on {cfg.host}:{cfg.metrics_port} (metrics): {exc}") from None
            self._metrics_server = httpd
            self.metrics_port = httpd.server_port
        self._grpc_server = server
        self.service.bound(self.address)
        await server.start()
        self.server = server
        await self.service.start()
        deps = self.service.dependencies()
        if deps and self.config.dependency_check_seconds > 0:
            watch = DependencyWatch(
                deps,
                self._dependencies_changed,
                interval=self.config.dependency_check_seconds,
                timeout=self.config.dependency_check_seconds,
            )
            await watch.check_once()
            self._watch = asyncio.create_task(watch.run(), name=f"{name}-dependency-watch")
        await self._set_ready(not self._deps_down)
        log.info(
            "%s serving on %s%s (metrics port %s)",
            self.service.name,
            self.address,
            "" if credentials is None else " over mutual TLS" if cfg.tls.client_ca_file else " over TLS",
            self.metrics_port,
            extra={"fields": {"port": self.port, "metrics_port": self.metrics_port}},
        )
        return self.port

    def _server_options(self) -> list[tuple[str, object]]:
        # Large receive windows: the encoder receives raw frames; for small messages it is harmless.
        opts = transport_options(self.config.max_message_bytes, large_window=True)
        # ...and fixed at that size: with BDP probing gRPC replaces the stream window by twice its
        # bandwidth-delay estimate (at least 4 MiB, rounded up to a power of two), and a starved
        # process (late ping acks) inflates the estimate: a renderer under CPU load had 620 MiB of heap in use
        # (six upload streams' unread data) beside their 400 MiB budget (BENCHMARKS.md, stop 40).
        opts.append(("grpc.http2.bdp_probe", 0))
        opts += server_keepalive_options()
        opts.append(("grpc.so_reuseport", 0))
        if self.config.max_connection_age_seconds > 0:
            opts.append(("grpc.max_connection_age_ms", int(self.config.max_connection_age_seconds * 1000)))
            opts.append(("grpc.max_connection_age_grace_ms", 2**31 - 1))
        return opts

    async def _dependencies_changed(self, down: list[str]) -> None:
        self._deps_down = down
        self.admission.unavailable = self.service.dependencies_changed(down)
        if self.server is not None and not self.admission.draining:
            await self._set_ready(not down)

    async def _set_ready(self, ready: bool) -> None:
        """Readiness: the health service "" and the service's own names, and ``talkmesh_ready``."""
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self._names):
            await self.health.set(name, status)
        self.telemetry.metrics.ready.labels(self.telemetry.service).set(1 if ready else 0)

    async def stop(self, grace: float | None = None) -> None:
        """Drains: NOT_SERVING, refuse new streams, let streams in flight finish, then stop."""
        if self.server is None or self._stopped.is_set():
            return
        grace = self.config.grace_seconds if grace is None else grace
        await self._set_ready(False)
        self.admission.draining = True
        await cancel_and_wait(self._watch)
        await self.service.drain()
        log.info(
            "%s draining: %d stream(s) and %d unary call(s) in flight, grace %.1fs",
            self.service.name,
            self.admission.active,
            self.admission.unary_active,
            grace,
        )
        drained = await self.admission.wait_idle(grace)
        if not drained:
            log.warning(
                "%s: grace period over with %d stream(s) still in flight", self.service.name, self.admission.active
            )
        await self.health.enter_graceful_shutdown()
        await self.server.stop(0.5 if drained else 0)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        await self.service.stop()
        self._stopped.set()

    async def wait_closed(self) -> None:
        await self._stopped.wait()

    async def run_until_signal(self) -> None:
        """Starts, then serves until SIGTERM/SIGINT, then drains (for `talkmesh serve`)."""
        await run_until_signal(self, self.service.name, json_line=self.config.log_json)


class Host(Protocol):
    """What `talkmesh serve` runs: a ServiceHost, or a service that hosts itself (the web edge)."""

    telemetry: Telemetry
    metrics_port: int

    @property
    def address(self) -> str: ...

    async def start(self) -> object: ...

    async def stop(self) -> object: ...


def ready_line(name: str, address: str, metrics_port: int, *, json_line: bool = False) -> str:
    """The line a service prints on its stdout once it serves, which the launcher waits for:
    ``READY <name> <address> metrics=<port>``; with ``server.log_json`` that text is the ``msg`` of
    a JSON log line, so a container's output stays JSON throughout."""
    text = f"READY {name} {address} metrics={metrics_port}"
    if not json_line:
        return text
    record = logging.LogRecord(name, logging.INFO, __file__, 0, text, None, None)
    return JsonFormatter(name).format(record)


def parse_ready_line(line: str) -> str | None:
    """The ``READY ...`` text of a line ``ready_line`` printed (plain or JSON), else None."""
    if line.startswith("READY "):
        return line
    if line.startswith("{"):
        try:
            msg = json.loads(line).get("msg")
        except (ValueError, AttributeError):
            return None
        if isinstance(msg, str) and msg.startswith("READY "):
            return msg
    return None


async def run_until_signal(host: Host, name: str, *, json_line: bool = False) -> None:
    """Starts ``host``, prints the READY line the launcher waits for (``ready_line``), serves
    until SIGTERM or SIGINT, then drains and flushes telemetry."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await host.start()
    print(ready_line(name, host.address, host.metrics_port, json_line=json_line), flush=True)
    await stop.wait()
    await host.stop()
    host.telemetry.shutdown()
