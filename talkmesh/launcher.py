"""Starting the five services as separate local processes (`talkmesh up`, the demo, tests, bench)."""

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

from talkmesh.common import registry

log = logging.getLogger(__name__)

INTERNAL = ("tts", "audio_features", "renderer", "encoder")
SERVICES = (*INTERNAL, "gateway")
DEFAULT_PORTS = {"gateway": 50051, "tts": 50052, "audio_features": 50053, "renderer": 50054, "encoder": 50055}
DEFAULT_METRICS_PORTS = {"gateway": 9101, "tts": 9102, "audio_features": 9103, "renderer": 9104, "encoder": 9105}


def env_prefix(service: str) -> str:
    return f"TALKMESH_{service.upper()}"


@dataclass
class ServiceProcess:
    name: str
    proc: asyncio.subprocess.Process
    address: str = ""
    metrics_port: int = -1
    stdout_task: asyncio.Task[None] | None = None


@dataclass
class Mesh:
    """Five service processes on loopback. ``ephemeral=True`` picks free ports (tests, demo, bench)."""

    ephemeral: bool = True
    host: str = "127.0.0.1"
    env: Mapping[str, str] = field(default_factory=dict)
    log_dir: Path | None = None
    configs: Mapping[str, str] = field(default_factory=dict)
    start_timeout: float = 120.0
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        return self.processes["gateway"].address

    def address(self, service: str) -> str:
        return self.processes[service].address

    def metrics_url(self, service: str) -> str:
        return f"http://{self.host}:{self.processes[service].metrics_port}/metrics"

    async def start(self) -> Mesh:
        try:
            # Services start in waves: each after the services it calls (registry.start_order),
            # with their addresses passed as TALKMESH_<SERVICE>__<CALLEE>__TARGET.
            pending = list(registry.start_order())
            while pending:
                wave = [s for s in pending if all(c in self.processes for c in s.calls)]
                await asyncio.gather(*(self._spawn(s.name, self._targets(s)) for s in wave))
                pending = [s for s in pending if s not in wave]
        except BaseException:
            await self.stop()
            raise
        return self

    def _targets(self, service: registry.ServiceSpec) -> dict[str, str]:
        return {f"{service.env_prefix}__{c.upper()}__TARGET": self.address(c) for c in service.calls}

    async def _spawn(self, name: str, extra_env: Mapping[str, str]) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra_env)
        prefix = env_prefix(name)
        env[f"{prefix}__SERVER__HOST"] = self.host
        env[f"{prefix}__SERVER__PORT"] = "0" if self.ephemeral else str(DEFAULT_PORTS[name])
        env[f"{prefix}__SERVER__METRICS_PORT"] = "0" if self.ephemeral else str(DEFAULT_METRICS_PORTS[name])
        cmd = [sys.executable, "-m", "talkmesh.cli", "serve", name]
        if name in self.configs:
            cmd += ["--config", self.configs[name]]
        stderr: int | None = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            stderr_file = (self.log_dir / f"{name}.log").open("ab")
            stderr = stderr_file.fileno()
        proc = await asyncio.create_subprocess_exec(
            *cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=stderr, start_new_session=True
        )
        if self.log_dir is not None:
            stderr_file.close()
        sp = ServiceProcess(name, proc)
        self.processes[name] = sp
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(self._ready_line(proc.stdout), self.start_timeout)
        except TimeoutError as exc:
            raise RuntimeError(f"{name} did not become ready within {self.start_timeout:.0f}s") from exc
        if not line:
            code = await proc.wait()
            raise RuntimeError(f"{name} exited with code {code} before it was ready (see its log)")
        _, _, address, metrics = line.split()
        sp.address = address
        sp.metrics_port = int(metrics.split("=", 1)[1])
        sp.stdout_task = asyncio.create_task(self._drain(proc.stdout), name=f"mesh-stdout-{name}")
        log.info("%s ready on %s", name, address)

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

    async def stop(self, timeout: float = 30.0) -> dict[str, int]:
        """SIGTERM (gateway first, so it stops taking requests), wait, SIGKILL what remains."""
        codes: dict[str, int] = {}
        order = [n for n in ("gateway", *INTERNAL) if n in self.processes]
        for name in order:
            sp = self.processes[name]
            if sp.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    sp.proc.send_signal(signal.SIGTERM)
        for name in order:
            sp = self.processes[name]
            try:
                codes[name] = await asyncio.wait_for(sp.proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    sp.proc.kill()
                codes[name] = await sp.proc.wait()
            if sp.stdout_task is not None:
                sp.stdout_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sp.stdout_task
        self.processes.clear()
        return codes

    async def __aenter__(self) -> Mesh:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
