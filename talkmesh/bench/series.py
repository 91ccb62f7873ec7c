"""Driving a speaker: sequential latency series, one long stream, a concurrency sweep."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import Callable, Sequence

from talkmesh.bench.results import (
    ConcurrencyRow,
    FirstFragmentCpu,
    LatencySummary,
    Percentiles,
    RequestResult,
    SingleStream,
    SpeakerRun,
)
from talkmesh.bench.speakers import Speaker
from talkmesh.bench.workload import PARAGRAPH, TEXTS, Workload

#: A counter of each service so far, by name: CPU seconds of each process, or bytes on the wire of
#: each service and direction ("gateway in").
Probe = Callable[[], dict[str, float]]
CpuProbe = Probe


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile with linear interpolation (NaN for no values)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def percentiles(values: Sequence[float]) -> Percentiles:
    return Percentiles(pct(values, 0.5), pct(values, 0.95), pct(values, 0.99))


async def latency_series(speaker: Speaker, work: Workload, n: int) -> list[RequestResult]:
    return [await speaker.speak(work.request(TEXTS[i % len(TEXTS)], i)) for i in range(n)]


async def paired_latency_series(
    a: Speaker, b: Speaker, work: Workload, n: int
) -> tuple[list[RequestResult], list[RequestResult]]:
    """The same ``n`` requests on two speakers, alternated request by request (``a`` first on even
    ones, ``b`` first on odd ones): both see the same machine at the same time, so the ratio of
    their figures does not compare two moments of a machine whose speed drifts."""
    ra: list[RequestResult] = []
    rb: list[RequestResult] = []
    for i in range(n):
        request = work.request(TEXTS[i % len(TEXTS)], i)
        for speaker, out in ((a, ra), (b, rb)) if i % 2 == 0 else ((b, rb), (a, ra)):
            out.append(await speaker.speak(request))
    return ra, rb


async def first_fragment_cpu(
    a: Speaker, a_cpu: CpuProbe, b: Speaker, b_cpu: CpuProbe, work: Workload, n: int
) -> tuple[FirstFragmentCpu, FirstFragmentCpu]:
    """How much CPU each side spends on the way to a request's first fragment: ``n`` requests
    alternated as in ``paired_latency_series``, each read to its first fragment and stopped
    there, the processes' CPU read at its call and at that fragment. On a machine with few cores
    this is what time to first fragment is made of: every process on the way shares them."""
    samples: dict[int, list[tuple[float, dict[str, float]]]] = {id(a): [], id(b): []}
    for i in range(n):
        request = work.request(TEXTS[i % len(TEXTS)], 3000 + i)
        for speaker, cpu in ((a, a_cpu), (b, b_cpu)) if i % 2 == 0 else ((b, b_cpu), (a, a_cpu)):
            await asyncio.sleep(FIRST_FRAGMENT_SETTLE_SECONDS)  # the last request's cancellation settles
            before = cpu()
            ttff, after = await speaker.first_fragment(request, cpu)
            samples[id(speaker)].append((ttff, {k: after[k] - before.get(k, 0.0) for k in after}))
    return _first_fragment_summary(samples[id(a)]), _first_fragment_summary(samples[id(b)])


#: pause before each request of a ``first_fragment_cpu`` series
FIRST_FRAGMENT_SETTLE_SECONDS = 0.2


def _first_fragment_summary(samples: list[tuple[float, dict[str, float]]]) -> FirstFragmentCpu:
    names = list(samples[0][1]) if samples else []
    return FirstFragmentCpu(
        requests=len(samples),
        ttff_ms_p50=1000 * pct([t for t, _ in samples], 0.5),
        cpu_ms_p50=1000 * pct([sum(c.values()) for _, c in samples], 0.5),
        cpu_ms_p50_by_process={k: 1000 * pct([c[k] for _, c in samples], 0.5) for k in names},
    )


def summarize_latency(results: list[RequestResult]) -> LatencySummary:
    ttff = [r.ttff * 1000 for r in results]
    ttfa = [r.summary.time_to_first_audio_seconds * 1000 for r in results]
    stages: dict[str, list[float]] = {}
    for r in results:
        for st in r.summary.stages:
            stages.setdefault(st.stage, []).append(st.seconds * 1000)
    return LatencySummary(
        requests=len(results),
        ttff_ms=percentiles(ttff),
        ttfa_ms=percentiles(ttfa),
        stages_ms_p50={k: pct(v, 0.5) for k, v in stages.items()},
        stages_ms_p95={k: pct(v, 0.95) for k, v in stages.items()},
        ttff_samples_ms=ttff,
    )


async def concurrent(speaker: Speaker, work: Workload, streams: int, text: str = PARAGRAPH) -> ConcurrencyRow:
    """``streams`` requests of ``text`` started together."""
    start = time.perf_counter()
    results = await asyncio.gather(*(speaker.speak(work.request(text, i)) for i in range(streams)))
    wall = time.perf_counter() - start
    rtfs = [r.rtf for r in results]
    frames = sum(r.frames for r in results)
    return ConcurrencyRow(
        streams=streams,
        wall_seconds=wall,
        frames_per_second=frames / wall,
        aggregate_audio_seconds_per_second=sum(r.audio_seconds for r in results) / wall,
        per_stream_rtf_min=min(rtfs),
        per_stream_rtf_median=statistics.median(rtfs),
        ttff_ms_median=1000 * statistics.median(r.ttff for r in results),
        ttff_ms_max=1000 * max(r.ttff for r in results),
        frames=frames,
    )


async def run_speaker(
    speaker: Speaker,
    work: Workload,
    label: str,
    sweep: bool,
    cpu: CpuProbe | None = None,
    wire: Probe | None = None,
    *,
    yardstick: Speaker | None = None,
    latency: LatencySummary | None = None,
    echo: Callable[[str], None] = lambda line: print(line, flush=True),
) -> SpeakerRun:
    """Warm-up, the latency series, the single stream, then the sweep (or 4 streams only).

    With a ``yardstick`` the latency series is paired with it (``paired_latency_series``) and the
    yardstick's summary is kept in ``SpeakerRun.yardstick_latency``; a ``latency`` given is used
    instead of running a series (the yardstick's own run, later)."""
    for i in range(2):  # warm-up: first connections, lazy allocations
        await speaker.speak(work.request(TEXTS[i], 1000 + i))
        if yardstick is not None:
            await yardstick.speak(work.request(TEXTS[i], 1000 + i))
    paired: LatencySummary | None = None
    if latency is None:
        echo(f"[{label}] {work.requests} sequential requests ...")
        if yardstick is not None:
            mine, theirs = await paired_latency_series(speaker, yardstick, work, work.requests)
            latency, paired = summarize_latency(mine), summarize_latency(theirs)
        else:
            latency = summarize_latency(await latency_series(speaker, work, work.requests))
    single = [await speaker.speak(work.request(PARAGRAPH, 2000 + i)) for i in range(3)]
    one = SingleStream(single[0].audio_seconds, statistics.median(r.rtf for r in single), single[0].frames)
    echo(f"[{label}] one stream: {one.rtf_median:.2f}x real time")
    rows = []
    for c in work.concurrency if sweep else (4,):
        before = cpu() if cpu else {}
        wire_before = wire() if wire else {}
        row = await concurrent(speaker, work, c)
        if cpu and row.frames:
            after = cpu()
            row.cpu_ms_per_frame = {k: 1000 * (after[k] - before[k]) / row.frames for k in before}
        audio = row.aggregate_audio_seconds_per_second * row.wall_seconds
        if wire and audio > 0:
            wire_after = wire()
            row.wire_bytes_per_audio_second = {k: (wire_after[k] - wire_before.get(k, 0.0)) / audio for k in wire_after}
        rows.append(row)
        echo(
            f"[{label}] {c:>2} streams: per-stream rtf min {row.per_stream_rtf_min:.2f}, "
            f"ttff median {row.ttff_ms_median:.0f} ms"
        )
        if sweep and row.per_stream_rtf_min < 1.0:
            break
    return SpeakerRun(label, latency, one, rows, yardstick_latency=paired)
