"""Starting the services as separate local processes (`talkmesh up`, the demo, tests, bench): the
five gRPC stages and the web edge.

Names, ports, environment prefixes and the start order come from ``talkmesh.common.registry``.
A mesh runs on the default ports, on a block moved with ``port_base`` (``talkmesh up
--port-base``), or on free ports (``ephemeral``). After start-up the mesh watches its children:
``wait_for_exit()`` returns the first one that dies, so ``talkmesh up`` can report it and stop.

Each child runs in its own session (a Ctrl-C in the terminal reaches only the launcher, which stops
the mesh in order), so nothing but the launcher stops it; and no child outlives the launcher: each
child's stdin is a pipe from the launcher, and a child whose stdin reaches end of file (the
launcher has exited, however it died: even SIGKILL) stops itself as on SIGTERM
(``PARENT_PIPE_ENV``). A pipe rather than Linux's PR_SET_PDEATHSIG: that fires when the *thread*
that started the child ends, and exists on Linux only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from talkmesh.common.aio import all_of, cancel_and_wait
from talkmesh.common.registry import SERVICES, ServiceSpec, check_port_base, spec, start_order
from talkmesh.common.server import parse_ready_line

log = logging.getLogger(__name__)


#: Set for the children: "stdin" = stop (as on SIGTERM) when stdin reaches end of file, i.e. when
#: the launcher, which holds the pipe's other end, has exited (``talkmesh serve`` reads it).
PARENT_PIPE_ENV = "TALKMESH_SERVE_PARENT_PIPE"


def stop_with_parent() -> None:
    """In a child (``talkmesh serve``) the launcher started: SIGTERM to itself when the launcher's
    pipe on stdin closes. A daemon thread blocks on the read, so it never delays an exit."""
    import threading

    if os.environ.get(PARENT_PIPE_ENV) != "stdin":
        return

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(0, 4096):
                pass
        log.warning("the launcher has exited: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-pipe", daemon=True).start()


def start_waves() -> list[list[ServiceSpec]]:
    """The services in the waves they start in: each after the services it calls (the stages,
    the encoder, the gateway, the web edge)."""
    waves: list[list[ServiceSpec]] = []
    done: set[str] = set()
    pending = list(start_order())
    while pending:
        wave = [s for s in pending if all(c in done for c in s.calls)]
        waves.append(wave)
        done.update(s.name for s in wave)
        pending = [s for s in pending if s not in wave]
    return waves


def stop_waves() -> list[list[str]]:
    """The services in the order they stop: the start waves reversed (the web edge, then the
    gateway, then the stages each after the services that call it)."""
    return [[s.name for s in wave] for wave in reversed(start_waves())]


#: The least time a stop wave gets, however long the waves before it took.
MIN_WAVE_SECONDS = 2.0


class MeshError(RuntimeError):
    """A service of the mesh did not start; the message is one line naming it."""


@dataclass
class ServiceProcess:
    name: str
    proc: asyncio.subprocess.Process
    address: str = ""
    metrics_port: int = -1
    stdout_task: asyncio.Task[None] | None = None
    exit_task: asyncio.Task[int] | None = None
    log_path: Path | None = None


@dataclass(frozen=True)
class ChildExit:
    """A service process that ended while the mesh was running."""

    name: str
    code: int

    def describe(self) -> str:
        how = f"was killed by signal {-self.code}" if self.code < 0 else f"exited with code {self.code}"
        return f"{self.name} {how}"


def _names_key(path: str | None, key: str) -> bool:
    """Whether the YAML config file at ``path`` sets ``key`` (dotted: ``musetalk.version``; a file
    that cannot be read counts as naming it: the service itself then says what is wrong)."""
    if not path:
        return False
    from talkmesh.common.config import ConfigError, read_yaml

    try:
        data: object = read_yaml(path)
    except (ConfigError, OSError):
        return True
    for part in key.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return False
        data = data[part]
    return True


@dataclass
class Mesh:
    """Five service processes on loopback.

    ``ephemeral=True`` picks free ports (tests, demo, bench); otherwise the registry's ports, moved
    to ``port_base`` when given.
    """

    ephemeral: bool = True
    host: str = "127.0.0.1"
    env: Mapping[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    configs: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 120.0
    port_base: int | None = None
    processes: dict[str, ServiceProcess] = field(default_factory=dict)
    #: what ``_extra_env`` gave each service at start
    _started_with: dict[str, dict[str, str]] = field(default_factory=dict, repr=False)

    @property
    def gateway(self) -> str:
        return self.processes["gateway"].address

    def address(self, service: str) -> str:
        return self.processes[service].address

    def metrics_url(self, service: str) -> str:
        return f"http://{self.host}:{self.processes[service].metrics_port}/metrics"

    def planned_ports(self) -> dict[str, tuple[int, int]]:
        """(gRPC, metrics) port of each service; (0, 0) for an ephemeral mesh."""
        if self.ephemeral:
            return {s.name: (0, 0) for s in SERVICES}
        return {s.name: s.ports(self.port_base) for s in SERVICES}

    def check_ports(self) -> None:
        """BindError naming the first planned port that is already taken."""
        from talkmesh.common.server import check_port_free

        for name, (port, metrics) in self.planned_ports().items():
            if port:
                check_port_free(name, "HTTP" if spec(name).protocol == "http" else "gRPC", self.host, port)
            if metrics > 0:
                check_port_free(name, "metrics", self.host, metrics)

    async def start(self) -> Mesh:
        if self.port_base is not None:
            check_port_base(self.port_base)
        try:
            # Services start in waves: each after the services it calls, with their addresses
            # passed as TALKMESH_<SERVICE>__<CALLEE>__TARGET.
            for wave in start_waves():
                await all_of(*(self._spawn(s, self._extra_env(s)) for s in wave))
        except BaseException:
            await self.stop()
            raise
        return self

    def _extra_env(self, s: ServiceSpec) -> dict[str, str]:
        """What the launcher adds to a service's environment: decided at start, the same at a
        restart (the renderer's config file may have changed since; the running renderer has not)."""
        if s.name not in self._started_with:
            self._started_with[s.name] = {**self._targets(s), **self._derived(s)}
        return self._started_with[s.name]

    def _targets(self, s: ServiceSpec) -> dict[str, str]:
        """``<PREFIX>__<CALLEE>__TARGET`` for each service it calls."""
        return {s.env_name(f"{c}.target"): self.address(c) for c in s.calls}

    def _derived(self, s: ServiceSpec) -> dict[str, str]:
        """What a service's config takes from the renderer's, unless its own config names it:
        the gateway asks for the renderer's default backend when a request names none
        (``gateway.default_renderer_backend`` decides which features it asks for), so it gets the
        renderer's own ``default_backend``; the feature stage's ``musetalk.version`` (its audio
        windows) is the release the renderer's MuseTalk models were exported for, when they say.
        (In Kubernetes the manifests set them; a test keeps the backends equal.)"""
        wanted = {"gateway": "default_renderer_backend", "audio_features": "musetalk.version"}.get(s.name)
        if wanted is None:
            return {}
        key = s.env_name(wanted)
        env = {**os.environ, **self.env}
        if key in env or _names_key(self.configs.get(s.name), wanted):
            return {}
        from services.renderer.config import RendererConfig  # (the config alone: no models, no ONNX Runtime)
        from talkmesh.common.config import ConfigError
        from talkmesh.common.service_config import load_service_config

        try:
            renderer = load_service_config(RendererConfig, "renderer", self.configs.get("renderer"), env)
        except (ConfigError, OSError):
            return {}  # (the renderer itself says what is wrong, and the mesh does not start)
        if s.name == "gateway":
            return {key: renderer.default_backend}
        release = renderer.musetalk.exported_release() if "musetalk" in renderer.backends else None
        return {} if release is None else {key: release}

    async def _spawn(self, s: ServiceSpec, extra_env: Mapping[str, str], ports: tuple[int, int] | None = None) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra_env)
        port, metrics = ports or self.planned_ports()[s.name]
        env[s.env_name("server.host")] = self.host
        env[s.env_name("server.port")] = str(port)
        env[s.env_name("server.metrics_port")] = str(metrics)
        cmd = [sys.executable, "-m", "talkmesh.cli", "serve", s.name]
        if s.name in self.configs:
            cmd += ["--config", self.configs[s.name]]
        stderr: int | None = None
        log_path = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{s.name}.log"
            stderr_file = log_path.open("ab")
            stderr = stderr_file.fileno()
        env[PARENT_PIPE_ENV] = "stdin"  # stops when this process is gone (stop_with_parent)
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
        if self.log_dir is not None:
            stderr_file.close()
        sp = ServiceProcess(s.name, proc, log_path=log_path)
        self.processes[s.name] = sp
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(self.start_timeout):
                line = await self._ready_line(proc.stdout)
        except TimeoutError as exc:
            raise MeshError(f"{s.name} did not become ready within {self.start_timeout:.0f}s") from exc
        if not line:
            code = await proc.wait()
            raise MeshError(f"{s.name} exited with code {code} before it was ready{self._last_words(sp)}")
        _, _, address, metrics_field = line.split()
        sp.address = address
        sp.metrics_port = int(metrics_field.split("=", 1)[1])
        sp.stdout_task = asyncio.create_task(self._relay(proc.stdout, log_path), name=f"mesh-stdout-{s.name}")
        sp.exit_task = asyncio.create_task(proc.wait(), name=f"mesh-exit-{s.name}")
        log.info("%s ready on %s", s.name, address)

    @staticmethod
    def _last_words(sp: ServiceProcess) -> str:
        """``: <its last log line>`` when its log is a file (inherited stderr shows it already)."""
        if sp.log_path is None:
            return ""
        with contextlib.suppress(OSError):
            lines = [ln for ln in sp.log_path.read_text(errors="replace").splitlines() if ln.strip()]
            if lines:
                return f": {lines[-1].strip()}"
        return f" (see {sp.log_path})"

    @staticmethod
    async def _ready_line(stream: asyncio.StreamReader) -> str:
        while True:
            raw = await stream.readline()
            if not raw:
                return ""
            ready = parse_ready_line(raw.decode(errors="replace").strip())
            if ready is not None:
                return ready

    @staticmethod
    async def _relay(stream: asyncio.StreamReader, log_path: Path | None) -> None:
        """What a service writes to its stdout after READY (spans of OTEL_TRACES_EXPORTER=console,
        say) goes where its log goes: its log file, else this process's stderr."""
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(log_path.open("ab")) if log_path is not None else sys.stderr.buffer
            while line := await stream.readline():
                sink.write(line)
                sink.flush()

    async def restart(self, name: str) -> None:
        """Starts service ``name`` again on the same ports (after it died, or killing it first);
        the services that call it reconnect by themselves."""
        sp = self.processes[name]
        if sp.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                sp.proc.kill()
            await sp.proc.wait()
        await cancel_and_wait(sp.stdout_task, sp.exit_task)
        port = int(sp.address.rsplit(":", 1)[1])
        s = spec(name)
        await self._spawn(s, self._extra_env(s), ports=(port, sp.metrics_port))

    async def wait_for_exit(self) -> ChildExit:
        """Waits until any service process ends (a crash, a kill) and says which one."""
        tasks = {sp.exit_task: name for name, sp in self.processes.items() if sp.exit_task is not None}
        if not tasks:
            raise RuntimeError("the mesh is not running")
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = done.pop()
        return ChildExit(tasks[task], task.result())

    async def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """Stops the services in waves (``stop_waves``): SIGTERM to a wave, wait until it has exited,
        then the next. So the gateway drains its streams while the stages still serve them, and
        stops taking requests before anything else stops. ``timeout`` bounds the whole stop: a
        wave gets what is left of it (at least ``MIN_WAVE_SECONDS``), then SIGKILL."""
        codes: dict[str, int] = {}
        self._started_with.clear()  # (a mesh started again gets new ports: decided anew)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for wave in stop_waves():
            names = [name for name in wave if name in self.processes]
            if not names:  # not started (a start that failed on an earlier wave)
                continue
            for name in names:
                sp = self.processes[name]
                if sp.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        sp.proc.send_signal(signal.SIGTERM)
            left = max(MIN_WAVE_SECONDS, deadline - loop.time())
            for name, code in zip(names, await all_of(*(self._reap(name, left) for name in names)), strict=True):
                codes[name] = code
        self.processes.clear()
        return codes

    def kill(self) -> None:
        """SIGKILL to every service still running (a second Ctrl-C while stopping)."""
        for sp in self.processes.values():
            if sp.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    sp.proc.kill()

    async def _reap(self, name: str, timeout: float) -> int:
        """Waits up to ``timeout`` for service ``name`` to exit (SIGKILL after it); its exit code."""
        sp = self.processes[name]
        try:
            async with asyncio.timeout(timeout):
                code = await sp.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                sp.proc.kill()
            code = await sp.proc.wait()
        await cancel_and_wait(sp.stdout_task, sp.exit_task)
        return code

    async def __aenter__(self) -> Mesh:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
