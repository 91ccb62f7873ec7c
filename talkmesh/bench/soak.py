"""`talkmesh bench soak --minutes N --streams C`: a long run at constant concurrency.

Starts a mesh of separate processes (as `talkmesh up`), keeps ``C`` Speak streams going for ``N``
minutes (each worker speaks one text after another), and samples every service's RSS (from
/proc) every few seconds. Reports per service: RSS at the end of the warm-up and at the end, its
growth in percent (the warm-up, the first ``--warmup`` fraction of the run, is excluded), and the
peak; the requests served and failed (by status); and the time to first fragment p50/p95 of the
first and the last window (a fifth of the run after warm-up each) and their drift.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from talkmesh.bench.report import machine, publish
from talkmesh.bench.workload import TEXTS

SAMPLE_SECONDS = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--minutes", type=float, default=30.0, help="length of the run")
    p.add_argument("--streams", type=int, default=4, help="concurrent Speak streams")
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of the run excluded from growth and drift")
    p.add_argument("--out-dir", default="docs/benchmarks", help="where the JSON goes")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="file to append the results to ('' = none)")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class SoakReport:
    machine: str
    minutes: float
    streams: int
    warmup: float
    requests: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    #: (seconds since start, service -> RSS MiB)
    rss: list[tuple[float, dict[str, float]]] = field(default_factory=list)
    #: (seconds since start, time to first fragment in s)
    ttff: list[tuple[float, float]] = field(default_factory=list)

    def growth(self) -> dict[str, tuple[float, float, float, float]]:
        """service -> (RSS after warm-up, at the end, growth %, peak)."""
        start = self.minutes * 60 * self.warmup
        after = [s for t, s in self.rss if t >= start] or [s for _, s in self.rss]
        out = {}
        for name in after[0]:
            first, last = after[0][name], after[-1][name]
            peak = max(s[name] for _, s in self.rss)
            out[name] = (first, last, 100.0 * (last - first) / first, peak)
        return out

    def windows(self) -> tuple[list[float], list[float]]:
        """TTFF (ms) of the first and last window after warm-up (a fifth of the run each)."""
        total = self.minutes * 60
        start = total * self.warmup
        width = (total - start) / 5
        first = [1000 * v for t, v in self.ttff if start <= t < start + width]
        last = [1000 * v for t, v in self.ttff if t >= total - width]
        return first, last


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def soak(args: argparse.Namespace) -> SoakReport:
    from talkmesh.client import TalkmeshClient
    from talkmesh.common.registry import NAMES
    from talkmesh.launcher import Mesh

    m = machine()
    report = SoakReport(
        machine=f"{m.cpu}, {m.cores} cores, {m.memory}, {m.os}, Python {m.python}, GPU: {m.gpu}",
        minutes=args.minutes,
        streams=args.streams,
        warmup=args.warmup,
    )
    failures: Counter[str] = Counter()
    import tempfile

    async with Mesh(log_dir=Path(tempfile.mkdtemp(prefix="talkmesh-soak-"))) as mesh:
        pids = {name: mesh.processes[name].proc.pid for name in NAMES}
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        end = t0 + 60 * args.minutes

        async def sampler() -> None:
            while loop.time() < end:
                report.rss.append((loop.time() - t0, {n: rss_mib(p) for n, p in pids.items()}))
                await asyncio.sleep(SAMPLE_SECONDS)

        async def worker(client: TalkmeshClient, w: int) -> None:
            import grpc

            i = w
            while loop.time() < end:
                text = TEXTS[i % len(TEXTS)] + " " + TEXTS[(i + 3) % len(TEXTS)]
                started = loop.time()
                try:
                    first = 0.0
                    async for chunk in client.speak(text, timeout=120):
                        if not first and chunk.WhichOneof("kind") == "media" and not chunk.media.init_segment:
                            first = loop.time() - started
                    report.requests += 1
                    if first:
                        report.ttff.append((started - t0, first))
                except grpc.aio.AioRpcError as exc:
                    failures[exc.code().name] += 1
                    await asyncio.sleep(0.5)
                i += args.streams

        async with TalkmeshClient(mesh.gateway) as client:
            await asyncio.gather(sampler(), *(worker(client, w) for w in range(args.streams)))
        report.rss.append((loop.time() - t0, {n: rss_mib(p) for n, p in pids.items()}))
    report.failures = dict(failures)
    return report


def markdown(r: SoakReport, command: str) -> str:
    first, last = r.windows()
    lines = [
        f"### Soak: {r.minutes:g} min at {r.streams} concurrent streams ({time.strftime('%Y-%m-%d')})",
        "",
        f"Machine: {r.machine}. Command: `{command}`.",
        "",
        f"Requests served: {r.requests}; failed: {sum(r.failures.values())} {r.failures or ''}".rstrip(),
        "",
        f"| service | RSS after warm-up ({r.warmup:.0%}) MiB | RSS at end MiB | growth | peak MiB |",
        "|---|---|---|---|---|",
    ]
    for name, (a, b, g, peak) in r.growth().items():
        lines.append(f"| {name} | {a:.0f} | {b:.0f} | {g:+.1f} % | {peak:.0f} |")
    p50a, p95a, p50b, p95b = _pct(first, 50), _pct(first, 95), _pct(last, 50), _pct(last, 95)
    lines += [
        "",
        "| TTFF window | requests | p50 ms | p95 ms |",
        "|---|---|---|---|",
        f"| first (after warm-up) | {len(first)} | {p50a:.0f} | {p95a:.0f} |",
        f"| last | {len(last)} | {p50b:.0f} | {p95b:.0f} |",
        "",
        f"TTFF drift, last vs first window: p50 {100 * (p50b - p50a) / p50a:+.1f} %, "
        f"p95 {100 * (p95b - p95a) / p95a:+.1f} %.",
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import sys

    report = asyncio.run(soak(args))
    text = markdown(report, "talkmesh bench soak " + " ".join(sys.argv[3:] if len(sys.argv) > 3 else []))
    publish(text, report, args.out_dir, "bench-{stamp}-soak.json", args.markdown)
    return 0 if not report.failures else 1
