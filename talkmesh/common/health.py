"""Readiness that means something: a service is ready only while the stages it calls answer.

``DependencyWatch`` asks each downstream stage's health service ("liveness": the process answers,
even while it drains) every ``interval`` seconds with a ``timeout``; after ``failures``
consecutive misses a stage counts as down, and after one answer as up again. The host then
reports NOT_SERVING (Kubernetes stops routing to the replica) and refuses new streams with
UNAVAILABLE naming the stage, instead of letting them hang until their deadline. Streams already
in flight are failed by the transport's keepalive (talkmesh.common.channel: within about 2.5 s).

The web edge watches the gateway the same way, but asks for its readiness (``service=""``: the
gateway is ready only while its own stages answer) and counts it down at the first miss, as its
``/readyz`` reports it (services/web/server.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)

#: Health service name that reports SERVING while the process lives (readiness is service "").
LIVENESS = "liveness"


class DependencyWatch:
    def __init__(
        self,
        channels: Mapping[str, grpc.aio.Channel],
        on_change: Callable[[list[str]], Awaitable[None]],
        *,
        interval: float = 1.0,
        timeout: float = 1.0,
        failures: int = 2,
        service: str = LIVENESS,
        refuses: bool = True,
        log_changes: bool = True,
    ) -> None:
        """``service``: the health service name asked (LIVENESS; "" for readiness). ``refuses``:
        the owner refuses new streams while a stage is down (only what is logged). ``log_changes``
        False: the owner's ``on_change`` logs each change itself (one line per change)."""
        self.stubs = {name: health_pb2_grpc.HealthStub(ch) for name, ch in channels.items()}
        self.on_change = on_change
        self.interval = interval
        self.timeout = timeout
        self.failures = failures
        self.service = service
        self.refuses = refuses
        self.log_changes = log_changes
        self.misses = dict.fromkeys(self.stubs, 0)
        self.down: list[str] = []

    async def _answers(self, stub: health_pb2_grpc.HealthStub) -> bool:
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=self.service), timeout=self.timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    async def check_once(self) -> list[str]:
        """Checks every stage once; returns the stages that are down now."""
        names = list(self.stubs)
        answers = await asyncio.gather(*(self._answers(self.stubs[n]) for n in names))
        for name, ok in zip(names, answers, strict=True):
            self.misses[name] = 0 if ok else self.misses[name] + 1
        down = [n for n in names if self.misses[n] >= self.failures]
        if down != self.down:
            if self.log_changes and down:
                what = "; refusing new streams" if self.refuses else ""
                log.warning("not answering health checks: %s%s", ", ".join(down), what)
            elif self.log_changes:
                log.info("every downstream stage answers again")
            self.down = down
            await self.on_change(down)
        return down

    async def run(self) -> None:
        # One check starts every ``interval`` (not ``interval`` after the last one ended): a hung
        # stage's checks each take the whole ``timeout``, and waiting the interval on top of it
        # would double the time to notice it (~4 s instead of ~2-3 s with the defaults).
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.check_once()
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))
