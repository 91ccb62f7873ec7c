"""`talkmesh bench overload`: how fast a full mesh refuses a call it has no capacity for.

Starts a mesh of separate processes (as `talkmesh up`) whose encoder admits one stream
(``server.max_concurrent_streams: 1``), keeps one Speak stream busy, then starts ``--calls``
Speak calls one after the other: each must end with RESOURCE_EXHAUSTED naming the encoder. Reports
the time from the call's start to its status (p50/p95/max), whether TTS started any stream for
the refused calls (its ``talkmesh_streams_total``; target: none) and the gateway's readiness
afterwards (target: SERVING). Issue 19's target: the refusal within 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from talkmesh.bench.report import machine, publish
from talkmesh.bench.workload import TEXTS

TARGET_MS = 100.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calls", type=int, default=50, help="refused calls to time")
    p.add_argument("--out-dir", default="docs/benchmarks", help="where the JSON goes")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="file to append the results to ('' = none)")


@dataclass
class OverloadReport:
    machine: str = ""
    #: seconds from each refused call's start to its status
    refusals: list[float] = field(default_factory=list)
    #: status codes that were not RESOURCE_EXHAUSTED (or calls that were served)
    unexpected: list[str] = field(default_factory=list)
    tts_streams_started: float = 0.0
    gateway_ready: bool = False

    def ms(self, q: float) -> float:
        return 1000 * float(np.percentile(self.refusals, q)) if self.refusals else float("nan")


def _counter(url: str, name: str) -> float:
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines() if ln.startswith(name + "{"))


async def refuse(gateway: str, calls: int, report: OverloadReport) -> None:
    """Times ``calls`` sequential Speak calls against ``gateway`` (which must be at capacity)."""
    import grpc

    from talkmesh.client import TalkmeshClient

    async with TalkmeshClient(gateway) as client:
        for i in range(calls):
            t0 = time.monotonic()
            try:
                async for _chunk in client.speak(TEXTS[i % len(TEXTS)], timeout=30):
                    pass
                report.unexpected.append("OK")
            except grpc.aio.AioRpcError as exc:
                took = time.monotonic() - t0
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "encoder" in (exc.details() or ""):
                    report.refusals.append(took)
                else:
                    report.unexpected.append(exc.code().name)


async def overload(args: argparse.Namespace) -> OverloadReport:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from talkmesh.client import TalkmeshClient
    from talkmesh.common.channel import create_channel
    from talkmesh.launcher import Mesh

    m = machine()
    report = OverloadReport(machine=f"{m.cpu}, {m.cores} cores, {m.memory}, {m.os}, Python {m.python}, GPU: {m.gpu}")
    env = {"TALKMESH_ENCODER__SERVER__MAX_CONCURRENT_STREAMS": "1"}
    async with Mesh(env=env, log_dir=Path(tempfile.mkdtemp(prefix="talkmesh-overload-"))) as mesh:
        tts_metrics = mesh.metrics_url("tts")
        async with TalkmeshClient(mesh.gateway) as client:
            busy = client.speak(" ".join(TEXTS) * 3, timeout=300)
            try:
                assert (await busy.read()).media.init_segment  # type: ignore[attr-defined]
                before = _counter(tts_metrics, "talkmesh_streams_total")
                await refuse(mesh.gateway, args.calls, report)
                report.tts_streams_started = _counter(tts_metrics, "talkmesh_streams_total") - before
            finally:
                busy.cancel()  # type: ignore[attr-defined]
        async with create_channel(mesh.gateway) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            report.gateway_ready = resp.status == health_pb2.HealthCheckResponse.SERVING
    return report


def markdown(r: OverloadReport, command: str) -> str:
    return "\n".join(
        [
            f"### Overload refusals ({time.strftime('%Y-%m-%d')})",
            "",
            f"Machine: {r.machine}. Command: `{command}`.",
            "",
            "| refused calls | p50 ms | p95 ms | max ms | target | TTS streams started | gateway readiness |",
            "|---|---|---|---|---|---|---|",
            f"| {len(r.refusals)} | {r.ms(50):.0f} | {r.ms(95):.0f} | {r.ms(100):.0f} | p95 ≤ {TARGET_MS:.0f} ms "
            f"| {r.tts_streams_started:.0f} | {'SERVING' if r.gateway_ready else 'NOT SERVING'} |",
            "",
            f"Other outcomes: {', '.join(r.unexpected) or 'none'}.",
            "",
        ]
    )


def run(args: argparse.Namespace) -> int:
    import sys

    report = asyncio.run(overload(args))
    text = markdown(report, "talkmesh bench overload " + " ".join(sys.argv[3:] if len(sys.argv) > 3 else []))
    publish(text, report, args.out_dir, "bench-{stamp}-overload.json", args.markdown)
    ok = not report.unexpected and report.tts_streams_started == 0 and report.gateway_ready
    return 0 if ok and report.ms(95) <= TARGET_MS else 1
