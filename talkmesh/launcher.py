"""Starting the services as separate local processes (`talkmesh up`, the demo, tests, bench): the
five gRPC stages and the web edge.

Names, ports, environment prefixes and the start order come from ``talkmesh.common.registry``.
A mesh runs on the default ports, on a block moved with ``port_base`` (``talkmesh up
--port-base``), or on free ports (``ephemeral``). After start-up the mesh watches its children:
``wait_for_exit()`` returns the first one that dies, so ``talkmesh up`` can report it and stop.
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
from talkmesh.common.registry import PORT_SPAN, SERVICES, ServiceSpec, spec, start_order

log = logging.getLogger(__name__)


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


def check_port_base(base: int) -> None:
    """ValueError unless a whole port block fits at ``base``."""
    if not 1024 <= base <= 65535 - PORT_SPAN:
        raise ValueError(f"--port-base: {base} is outside 1024..{65535 - PORT_SPAN}")


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
            # Services start in waves: each after the services it calls (registry start order),
            # with their addresses passed as TALKMESH_<SERVICE>__<CALLEE>__TARGET.
            pending = list(start_order())
            while pending:
                wave = [s for s in pending if all(c in self.processes for c in s.calls)]
                await all_of(*(self._spawn(s, self._targets(s)) for s in wave))
                pending = [s for s in pending if s not in wave]
        except BaseException:
            await self.stop()
            raise
        return self

    def _targets(self, s: ServiceSpec) -> dict[str, str]:
        """``<PREFIX>__<CALLEE>__TARGET`` for each service it calls."""
        return {f"{s.env_prefix}__{c.upper()}__TARGET": self.address(c) for c in s.calls}

    async def _spawn(self, s: ServiceSpec, extra_env: Mapping[str, str], ports: tuple[int, int] | None = None) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra_env)
        port, metrics = ports or self.planned_ports()[s.name]
        env[f"{s.env_prefix}__SERVER__HOST"] = self.host
        env[f"{s.env_prefix}__SERVER__PORT"] = str(port)
        env[f"{s.env_prefix}__SERVER__METRICS_PORT"] = str(metrics)
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
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr, start_new_session=True
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
        sp.stdout_task = asyncio.create_task(self._drain(proc.stdout), name=f"mesh-stdout-{s.name}")
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
            line = raw.decode(errors="replace").strip()
            if line.startswith("READY "):
                return line

    @staticmethod
    async def _drain(stream: asyncio.StreamReader) -> None:
        while await stream.readline():
            pass

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
        s = next(x for x in SERVICES if x.name == name)
        await self._spawn(s, self._targets(s), ports=(port, sp.metrics_port))

    async def wait_for_exit(self) -> ChildExit:
        """Waits until any service process ends (a crash, a kill) and says which one."""
        tasks = {sp.exit_task: name for name, sp in self.processes.items() if sp.exit_task is not None}
        if not tasks:
            raise RuntimeError("the mesh is not running")
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        task = done.pop()
        return ChildExit(tasks[task], task.result())

    async def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM (the gateway first, so it stops taking requests), wait, SIGKILL what remains."""
        codes: dict[str, int] = {}
        order = [s.name for s in reversed(start_order()) if s.name in self.processes]
        for name in order:
            sp = self.processes[name]
            if sp.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    sp.proc.send_signal(signal.SIGTERM)
        for name in order:
            sp = self.processes[name]
            try:
                async with asyncio.timeout(timeout):
                    codes[name] = await sp.proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    sp.proc.kill()
                codes[name] = await sp.proc.wait()
            await cancel_and_wait(sp.stdout_task, sp.exit_task)
        self.processes.clear()
        return codes

    async def __aenter__(self) -> Mesh:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
