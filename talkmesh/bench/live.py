"""`talkmesh bench live`: live sessions against the mesh (five processes), measured at the client.

What it measures (issue targets in parentheses):

* interrupts: interrupt sent -> acknowledgement received, -> the last frame of the turn received,
  -> the first idle frame received; frames of the stopped turn after the acknowledgement (0);
* text turns: the text sent -> the turn's first frame received, next to the time TTS alone takes
  to produce its first audio for the same text (<= TTS first audio + 250 ms, p95);
* audio turns: the first 40 ms chunk of the caller's PCM sent (in real time) -> the turn's first
  frame received (<= 250 ms, p95);
* the clock: every frame's arrival against its due time (frame 0's wall-clock time + n / fps) over
  a long session; gaps and repeats in the frame sequence (0; media time within 40 ms of the wall
  clock after 10 minutes);
* cost: CPU seconds of the five service processes per second, with N idle sessions and with N
  speaking sessions (an idle session <= 10 % of a speaking one), and the sessions 2 cores hold.

Every figure is taken at the client on loopback, so it includes the hop from the gateway and the
client's own scheduling: an upper bound of the server-side figures.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkmesh.bench.metrics import process_cpu_seconds
from talkmesh.bench.report import git_revision, machine, publish
from talkmesh.common.registry import spec

TEXTS = (
    "Thanks for waiting. Here is what I found about your order and when it will arrive.",
    "Let me think about that for a moment, then I will walk you through the answer step by step.",
    "The weather tomorrow looks bright and warm, with a light breeze in the afternoon.",
    "Great question! The short answer is yes, and the longer answer has three parts.",
)
LONG = " ".join(TEXTS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--turns", type=int, default=20, help="turns per latency series")
    p.add_argument("--minutes", type=float, default=2.0, help="length of the clock-drift session")
    p.add_argument("--sessions", default="1,4,8,16", help="session counts for the cost measurement")
    p.add_argument("--cost-seconds", type=float, default=20.0, help="seconds of CPU measured per point")
    p.add_argument("--quick", action="store_true", help="few turns, short sessions (smoke test)")
    p.add_argument("--out-dir", default="docs/benchmarks", help="where the JSON goes")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="file to append the results to ('' = none)")


def _machine() -> str:
    m = machine()
    return f"{m.cpu}, {m.cores} cores, {m.memory}, {m.os}, Python {m.python}, GPU: {m.gpu}"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass
class Series:
    values_ms: list[float] = field(default_factory=list)

    def add(self, seconds: float) -> None:
        self.values_ms.append(1000.0 * seconds)

    def row(self) -> str:
        v = self.values_ms
        if not v:
            return "n/a"
        return f"{pct(v, 50):.0f} / {pct(v, 95):.0f} / {pct(v, 99):.0f} / {max(v):.0f} (n={len(v)})"


@dataclass
class LiveReport:
    machine: str
    command: str
    git: str
    date: str
    interrupt_ack: Series = field(default_factory=Series)
    interrupt_last_speech: Series = field(default_factory=Series)
    interrupt_first_idle: Series = field(default_factory=Series)
    frames_after_cut: int = 0
    tts_first_audio: Series = field(default_factory=Series)
    text_turn_first_frame: Series = field(default_factory=Series)
    text_turn_over_tts: Series = field(default_factory=Series)
    audio_turn_first_frame: Series = field(default_factory=Series)
    drift_minutes: float = 0.0
    drift_first_ms: float = 0.0
    drift_last_ms: float = 0.0
    drift_max_ms: float = 0.0
    drift_growth_ms: float = 0.0
    frames: int = 0
    fragments: int = 0  # media messages carrying those frames (fewer while idle frames are batched)
    gaps: int = 0
    repeats: int = 0
    underruns: int = 0
    cost: list[dict[str, float]] = field(default_factory=list)
    # CPU cores the five services use with no session open (health watches, metrics, timers): the
    # mesh's own floor, subtracted before a session's share is taken.
    baseline_cores: float = 0.0
    cost_seconds: float = 0.0


class Session:
    """A live session with every message's arrival time."""

    def __init__(self, client: Any, **options: Any) -> None:
        self.ctx = client.live(**options)
        self.live: Any = None
        self.messages: list[tuple[float, Any]] = []
        self.task: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    async def __aenter__(self) -> Session:
        self.live = await self.ctx.__aenter__()
        self.task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.ctx.__aexit__(*exc)
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _read(self) -> None:
        async for msg in self.live:
            self.messages.append((time.perf_counter(), msg))
            self.changed.set()

    async def wait(self, predicate: Any, since: int = 0, timeout: float = 60.0) -> tuple[int, float, Any]:
        deadline = time.perf_counter() + timeout
        i = since
        while time.perf_counter() < deadline:
            while i < len(self.messages):
                at, msg = self.messages[i]
                if predicate(msg):
                    return i, at, msg
                i += 1
            self.changed.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.perf_counter())):
                    await self.changed.wait()
            except TimeoutError:
                break
        raise TimeoutError("live bench: expected message did not come")


def _event(name: str, turn_id: str | None = None) -> Any:
    def match(msg: Any) -> bool:
        if msg.WhichOneof("kind") != "event" or msg.event.WhichOneof("kind") != name:
            return False
        return turn_id is None or getattr(getattr(msg.event, name), "turn_id", None) == turn_id

    return match


async def interrupts(client: Any, report: LiveReport, turns: int) -> None:
    async with Session(client) as s:
        for i in range(turns):
            tid = await s.live.say(LONG, turn_id=f"i{i}")
            start_i, _, _ = await s.wait(_event("speaking_started", tid), len(s.messages) - 1)
            await asyncio.sleep(random.uniform(0.4, 1.2))
            mark = len(s.messages)
            sent = time.perf_counter()
            await s.live.interrupt()
            ack_i, ack_at, _ = await s.wait(_event("interrupt_acknowledged"), mark)
            report.interrupt_ack.add(ack_at - sent)
            turn_media = [
                (at, j) for j, (at, m) in enumerate(s.messages[start_i:], start_i)
                if m.WhichOneof("kind") == "media" and m.media.turn_id == tid
            ]  # fmt: skip
            report.frames_after_cut += sum(1 for _at, j in turn_media if j > ack_i)
            last_at = max(at for at, _j in turn_media)
            report.interrupt_last_speech.add(max(0.0, last_at - sent))
            _, idle_at, _ = await s.wait(
                lambda m: m.WhichOneof("kind") == "media" and not m.media.turn_id and m.media.frame_count, ack_i
            )
            report.interrupt_first_idle.add(idle_at - sent)
            await asyncio.sleep(0.5)


async def text_turns(client: Any, tts_target: str, report: LiveReport, turns: int) -> None:
    from talkmesh.common.channel import create_channel
    from talkmesh.v1 import tts_pb2, tts_pb2_grpc

    async with create_channel(tts_target) as channel, Session(client) as s:
        tts = tts_pb2_grpc.TTSStub(channel)
        for i in range(turns):
            text = TEXTS[i % len(TEXTS)]
            t0 = time.perf_counter()
            call = tts.Synthesize(tts_pb2.SynthesizeRequest(text=text))
            async for chunk in call:
                if chunk.pcm:
                    break
            call.cancel()
            tts_first = time.perf_counter() - t0
            report.tts_first_audio.add(tts_first)
            mark = len(s.messages)
            sent = time.perf_counter()
            tid = await s.live.say(text, turn_id=f"t{i}")
            _, at, _ = await s.wait(_event("speaking_started", tid), mark)
            report.text_turn_first_frame.add(at - sent)
            report.text_turn_over_tts.add(at - sent - tts_first)
            await s.wait(_event("speaking_stopped", tid), mark)
            await asyncio.sleep(0.3)


def _speech(rate: int, seconds: float) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    envelope = (np.sin(2 * np.pi * 3 * t) > 0).astype(np.float64)
    return (np.sin(2 * np.pi * 190 * t) * 8000 * envelope).astype("<i2").tobytes()


async def audio_turns(client: Any, report: LiveReport, turns: int) -> None:
    rate = 16000
    pcm = _speech(rate, 1.5)
    chunk = 2 * rate * 40 // 1000
    async with Session(client) as s:
        for i in range(turns):
            tid = f"a{i}"
            mark = len(s.messages)
            sent = time.perf_counter()
            waiter = asyncio.create_task(s.wait(_event("speaking_started", tid), mark))
            for k in range(0, len(pcm), chunk):
                due = sent + (k // chunk) * 0.04
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                await s.live.audio(tid, pcm[k : k + chunk], rate)
            await s.live.end_turn(tid)
            _, at, _ = await waiter
            report.audio_turn_first_frame.add(at - sent)
            await s.wait(_event("speaking_stopped", tid), mark)
            await asyncio.sleep(0.3)


def timeline(fragments: list[tuple[int, int]]) -> tuple[int, int, int, int]:
    """(frames, fragments, gaps, repeats) of fragments given as (first_frame, frame_count) in the
    order received: a gap is a fragment starting after the previous one's end, a repeat (or an
    overlap) one starting before it."""
    spans = [(first, first + count) for first, count in fragments]
    gaps = sum(1 for (_a0, a1), (b0, _b1) in itertools.pairwise(spans) if b0 > a1)
    repeats = sum(1 for (_a0, a1), (b0, _b1) in itertools.pairwise(spans) if b0 < a1)
    return sum(count for _first, count in fragments), len(fragments), gaps, repeats


async def drift(client: Any, report: LiveReport, minutes: float) -> None:
    """A long session, speaking now and then; every frame's arrival vs its due time."""
    async with Session(client) as s:
        end = time.perf_counter() + 60 * minutes
        i = 0
        while time.perf_counter() < end:
            await s.live.say(TEXTS[i % len(TEXTS)], turn_id=f"d{i}")
            i += 1
            await asyncio.sleep(min(8.0, max(0.0, end - time.perf_counter())))
        await asyncio.sleep(0.5)
        started = next(m.started for _at, m in s.messages if m.WhichOneof("kind") == "started")
    fps = started.fps_numerator / started.fps_denominator
    # perf_counter <-> wall clock: one reading of each, so the offsets below are on one clock
    offset = time.time() - time.perf_counter()
    frames = [(at, m.media) for at, m in s.messages if m.WhichOneof("kind") == "media" and m.media.frame_count]
    # a fragment leaves when its first frame is due; idle fragments may carry more frames, riding
    # ahead of the clock (live.idle_frames_per_fragment), so lateness is taken on the first frame
    lateness = [1000 * (at + offset - (started.frame0_unix_seconds + med.first_frame / fps)) for at, med in frames]
    report.frames, report.fragments, report.gaps, report.repeats = timeline(
        [(med.first_frame, med.frame_count) for _at, med in frames]
    )
    head, tail = lateness[: 25 * 10], lateness[-25 * 10 :]
    report.drift_minutes = minutes
    report.drift_first_ms = statistics.median(head)
    report.drift_last_ms = statistics.median(tail)
    report.drift_growth_ms = report.drift_last_ms - report.drift_first_ms
    report.drift_max_ms = max(lateness)
    report.underruns = sum(1 for _at, m in s.messages if _event("underrun")(m))


async def cost(client: Any, pids: dict[str, int], report: LiveReport, counts: list[int], seconds: float) -> None:
    def cpu() -> float:
        return sum(process_cpu_seconds(pid) for pid in pids.values())

    c0, t0 = cpu(), time.perf_counter()
    await asyncio.sleep(seconds)
    report.baseline_cores = (cpu() - c0) / (time.perf_counter() - t0)
    report.cost_seconds = seconds
    print(f"  no session: {report.baseline_cores:.3f} cores", flush=True)
    for n in counts:
        for speaking in (False, True):
            sessions = [Session(client) for _ in range(n)]
            for s in sessions:
                await s.__aenter__()
            talkers: list[asyncio.Task[None]] = []
            try:
                if speaking:

                    async def talk(s: Session) -> None:
                        k = 0
                        while True:  # always one turn queued behind the one playing
                            tid = await s.live.say(LONG, turn_id=f"c{k}")
                            await s.wait(_event("speaking_started", tid), 0, timeout=120)
                            k += 1

                    talkers = [asyncio.create_task(talk(s)) for s in sessions]
                await asyncio.sleep(3.0)  # warm-up: idle loops built, turns started
                m0 = sum(len(s.messages) for s in sessions)
                c0, t0 = cpu(), time.perf_counter()
                await asyncio.sleep(seconds)
                elapsed = time.perf_counter() - t0
                used = (cpu() - c0) / elapsed
                rate = (sum(len(s.messages) for s in sessions) - m0) / elapsed / n
                late = sum(1 for s in sessions for _at, m in s.messages if _event("underrun")(m))
                per_session = max(0.0, used - report.baseline_cores) / n
                report.cost.append(
                    {"sessions": n, "speaking": float(speaking), "cpu_cores": used, "per_session": per_session,
                     "underruns": float(late), "messages_per_s": rate}
                )  # fmt: skip
                print(f"  {n:3d} {'speaking' if speaking else 'idle':8s} sessions: {used:.3f} cores "
                      f"({per_session:.4f} per session over the floor), {rate:.1f} messages/s per session, "
                      f"underruns {late}", flush=True)  # fmt: skip
            finally:
                for t in talkers:
                    t.cancel()
                await asyncio.gather(*talkers, return_exceptions=True)
                for s in sessions:
                    await s.__aexit__(None, None, None)
            await asyncio.sleep(1.0)


async def bench(args: argparse.Namespace) -> LiveReport:
    from talkmesh.client import TalkmeshClient
    from talkmesh.launcher import Mesh

    turns = 4 if args.quick else args.turns
    minutes = 0.25 if args.quick else args.minutes
    counts = [1, 2] if args.quick else [int(x) for x in args.sessions.split(",") if x.strip()]
    report = LiveReport(
        machine=_machine(),
        command="talkmesh bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        git=git_revision(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    gateway = spec("gateway").env_prefix
    env = {f"{gateway}__LIVE__MAX_SESSIONS": str(max(counts) + 2)}
    # each session is one stream at the gateway and one at the encoder: room for the most measured
    for service in ("gateway", "encoder"):
        limit = max(max(counts) + 4, spec(service).max_streams)
        env[f"{spec(service).env_prefix}__SERVER__MAX_CONCURRENT_STREAMS"] = str(limit)
    with tempfile.TemporaryDirectory() as logs:
        async with Mesh(env=env, log_dir=Path(logs)) as mesh, TalkmeshClient(mesh.gateway) as client:
            pids = {name: sp.proc.pid for name, sp in mesh.processes.items()}
            print("interrupts ...", flush=True)
            await interrupts(client, report, turns)
            print("text turns ...", flush=True)
            await text_turns(client, mesh.address("tts"), report, turns)
            print("audio turns ...", flush=True)
            await audio_turns(client, report, turns)
            print(f"clock over {minutes:g} min ...", flush=True)
            await drift(client, report, minutes)
            print("cost ...", flush=True)
            await cost(client, pids, report, counts, 5.0 if args.quick else args.cost_seconds)
    return report


def markdown(r: LiveReport) -> str:
    idle = {int(c["sessions"]): c for c in r.cost if not c["speaking"]}
    talk = {int(c["sessions"]): c for c in r.cost if c["speaking"]}
    rows = []
    for n in sorted(set(idle) | set(talk)):
        i, t = idle.get(n), talk.get(n)
        ratio = i["per_session"] / t["per_session"] if i and t and t["per_session"] else float("nan")
        raw = i["cpu_cores"] / t["cpu_cores"] if i and t and t["cpu_cores"] else float("nan")
        rates = "/".join(f"{c.get('messages_per_s', float('nan')):.1f}" for c in (i, t) if c)
        rows.append(
            f"| {n} | {i['cpu_cores'] if i else float('nan'):.3f} | {t['cpu_cores'] if t else float('nan'):.3f} "
            f"| {100 * ratio:.1f} % ({100 * raw:.1f} %) | {int(t['underruns']) if t else 0} | {rates} |"
        )
    return "\n".join(
        [
            f"## Live sessions ({r.date})",
            "",
            f"Machine: {r.machine}. Command: `{r.command}`. Revision: `{r.git}`.",
            "Measured at the client on loopback (each figure includes the gateway hop: an upper bound of the",
            "server-side figure). Milliseconds: p50 / p95 / p99 / max (n).",
            "",
            "| measurement | ms | target |",
            "|---|---|---|",
            f"| interrupt -> acknowledgement received | {r.interrupt_ack.row()} | <= 20 p99 |",
            f"| interrupt -> last speech frame received | {r.interrupt_last_speech.row()} | <= 40 p99 |",
            f"| interrupt -> first idle frame received | {r.interrupt_first_idle.row()} | <= 80 p95 |",
            f"| frames of a stopped turn after its acknowledgement | {r.frames_after_cut} | 0 |",
            f"| TTS alone: text -> first audio | {r.tts_first_audio.row()} | |",
            f"| text turn: text sent -> first frame received | {r.text_turn_first_frame.row()} | |",
            f"| text turn minus TTS first audio | {r.text_turn_over_tts.row()} | <= 250 p95 |",
            f"| audio turn: first 40 ms chunk sent -> first frame received | {r.audio_turn_first_frame.row()} "
            "| <= 250 p95 |",
            "",
            f"Clock over {r.drift_minutes:g} min ({r.frames} frames in {r.fragments} fragments): "
            "fragment arrival minus its first frame's due time "
            f"{r.drift_first_ms:.1f} ms at the start, {r.drift_last_ms:.1f} ms at the end "
            f"(growth {r.drift_growth_ms:+.1f} ms; target within 40 ms after 10 min), max {r.drift_max_ms:.1f} ms; "
            f"gaps {r.gaps}, repeated frames {r.repeats} (targets 0), underruns {r.underruns}.",
            "",
            f"CPU of the services (cores, /proc) with N sessions open for {r.cost_seconds:g} s each; with no",
            f"session the mesh uses {r.baseline_cores:.3f} cores (health watches, metrics), subtracted before a",
            "session's share is taken (idle / speaking column; the raw ratio with that floor in brackets).",
            "",
            "| sessions | idle: cores | speaking: cores | idle / speaking per session | underruns while speaking "
            "| messages/s per session, idle/speaking |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def run(args: argparse.Namespace) -> int:
    report = asyncio.run(bench(args))
    publish(markdown(report), report, args.out_dir, "bench-{stamp}-live.json", args.markdown)
    return 0
