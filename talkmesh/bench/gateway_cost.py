"""What the gateway costs per frame: the messages it relays and the CPU of its process.

``talkmesh bench gateway [--requests N] [--concurrency C]``

1. Messages: the five stages in this process (the in-process yardstick), the gateway's pipeline
   driving them through a counting wrapper: every message the gateway sends to or reads from a
   stage, and every chunk it sends to the client, per video frame of one Speak of the paragraph.
2. CPU: the five processes of the mesh; user + system CPU seconds of the gateway process (from
   /proc) over ``--requests`` Speak calls of the paragraph, ``--concurrency`` at a time, divided by
   the frames they produced. A warm-up request runs first and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from talkmesh.bench.metrics import process_cpu_seconds
from talkmesh.bench.speakers import GrpcSpeaker, InProcessSpeaker, consume
from talkmesh.bench.workload import PARAGRAPH, Workload
from talkmesh.common.calls import Stream
from talkmesh.common.registry import DEFAULT_RENDERER_BACKEND


class _CountedStream(Stream):
    def __init__(self, inner: Stream, counts: Counter[str], key: str) -> None:
        self.inner, self.counts, self.key = inner, counts, key

    async def _read(self) -> AsyncIterator[Any]:
        async for msg in self.inner:
            self.counts[self.key] += 1
            yield msg

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._read()

    async def admitted(self) -> None:
        await self.inner.admitted()

    async def trailers(self) -> tuple[tuple[str, str | bytes], ...]:
        return await self.inner.trailers()

    async def cancel(self) -> None:
        await self.inner.cancel()


class CountingDownstreams:
    """Wraps the gateway's ``Downstreams``: counts each message in each direction per stage."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.counts: Counter[str] = Counter()

    async def _requests(self, requests: AsyncIterable[Any], key: str) -> AsyncIterator[Any]:
        async for msg in requests:
            self.counts[key] += 1
            yield msg

    def _wrap(self, stage: str, method: str, requests: Any, timeout: float | None) -> Stream:
        if isinstance(requests, AsyncIterable):
            requests = self._requests(requests, f"to {stage}")
        else:
            self.counts[f"to {stage}"] += 1
        return _CountedStream(getattr(self.inner, method)(requests, timeout), self.counts, f"from {stage}")

    def synthesize(self, request: Any, timeout: float | None) -> Stream:
        return self._wrap("tts", "synthesize", request, timeout)

    def synthesize_stream(self, requests: AsyncIterable[Any], timeout: float | None) -> Stream:
        return self._wrap("tts", "synthesize_stream", requests, timeout)

    def extract(self, requests: AsyncIterable[Any], timeout: float | None) -> Stream:
        return self._wrap("audio_features", "extract", requests, timeout)

    def encode(self, requests: AsyncIterable[Any], timeout: float | None) -> Stream:
        return self._wrap("encoder", "encode", requests, timeout)

    async def avatar_id(self, value: str, field: str, timeout: float | None) -> str:
        """The avatar's id (a name resolved by the renderer; none asked for the default avatar)."""
        if value:
            self.counts["to renderer"] += 1
        return await self.inner.avatar_id(value, field, timeout)  # type: ignore[no-any-return]


async def count_messages(env: Mapping[str, str], work: Workload) -> tuple[Counter[str], int]:
    """Messages the gateway moves for one Speak of the paragraph, and the frames it made."""
    speaker = await InProcessSpeaker.start(env)
    try:
        counting = CountingDownstreams(speaker.servicer.pipeline.ds)
        speaker.servicer.pipeline.ds = counting
        from talkmesh.common.inprocess import InProcessContext

        client = Counter[str]()

        async def chunks() -> AsyncIterator[Any]:
            async for chunk in speaker.servicer.Speak(work.request(PARAGRAPH, 0), InProcessContext()):
                client["to client"] += 1
                yield chunk

        result = await consume(chunks(), time.perf_counter())
        return counting.counts + client, result.frames
    finally:
        await speaker.close()


async def gateway_cpu(
    env: Mapping[str, str], work: Workload, requests: int, concurrency: int, idle_seconds: float
) -> tuple[float, int, float, float]:
    """Gateway CPU seconds and frames over ``requests`` Speak calls, ``concurrency`` at a time; the
    wall seconds they took; the gateway's CPU seconds per second while idle (health checks...)."""
    from talkmesh.launcher import Mesh

    with tempfile.TemporaryDirectory() as logs:
        async with Mesh(env=dict(env), log_dir=Path(logs)) as mesh:
            pid = mesh.processes["gateway"].proc.pid
            speaker = GrpcSpeaker(mesh.gateway)
            try:
                await speaker.speak(work.request(PARAGRAPH, 0))  # warm-up
                sem = asyncio.Semaphore(concurrency)

                async def one(i: int) -> int:
                    async with sem:
                        return (await speaker.speak(work.request(PARAGRAPH, i))).frames

                idle = process_cpu_seconds(pid)
                await asyncio.sleep(idle_seconds)
                before = process_cpu_seconds(pid)
                idle_rate = (before - idle) / idle_seconds if idle_seconds > 0 else 0.0
                start = time.monotonic()
                frames = sum(await asyncio.gather(*(one(i + 1) for i in range(requests))))
                return process_cpu_seconds(pid) - before, frames, time.monotonic() - start, idle_rate
            finally:
                await speaker.close()


async def main_async(args: argparse.Namespace) -> None:
    work = Workload(backend=args.backend)
    env = {**os.environ}
    counts, frames = await count_messages(env, work)
    total = sum(counts.values())
    print(f"messages through the gateway for one Speak ({frames} frames, backend {work.backend}):")
    for key, n in sorted(counts.items()):
        print(f"  {key:<22} {n:6d}  {n / frames:6.3f} per frame")
    print(f"  {'total':<22} {total:6d}  {total / frames:6.3f} per frame")
    if args.requests:
        cpu, frames, wall, idle_rate = await gateway_cpu(env, work, args.requests, args.concurrency, args.idle)
        busy = max(0.0, cpu - idle_rate * wall)
        print(
            f"gateway CPU: {cpu:.2f} s over {args.requests} requests x {args.concurrency} concurrent "
            f"({wall:.1f} s), {frames} frames: {1000 * cpu / max(frames, 1):.3f} ms per frame; idle it uses "
            f"{1000 * idle_rate:.1f} ms/s, so {1000 * busy / max(frames, 1):.3f} ms per frame above idle"
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=8, help="Speak calls measured for CPU (0: messages only)")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measured before the requests")
    p.add_argument("--backend", default=DEFAULT_RENDERER_BACKEND, choices=("viseme", "wav2lip"))


def run(args: argparse.Namespace) -> int:
    asyncio.run(main_async(args))
    return 0
