"""A long soak of live sessions with a customer-service script, and the analysis of what it recorded.

    python -m tools.live_soak run --target 127.0.0.1:45800 --metrics 127.0.0.1:45810-45815 \\
        --pid-of-up PID --minutes 30 --out out/soak
    python -m tools.live_soak analyze out/soak

``run`` keeps four live sessions (A-D) going against a running mesh (``talkmesh up``) for the given
wall time: text turns of varied length (some streamed like an LLM's tokens), long idle stretches
with keep-alives, interrupts at random moments (before the first frame, right after it, mid-turn,
while idle), per-turn voices (C), an audio turn sent at the pace it was recorded (A), a watcher
joining and leaving (B), and an avatar switch (D reopens with ``--second-avatar``). Every session's
fMP4 stream goes to ``<out>/<name>.mp4`` with one JSON line per fragment and event
(``<name>.jsonl``); every minute the RSS, open fds and threads of ``talkmesh up``'s processes, the
load average and the mesh's live metrics go to ``<out>/samples.jsonl``.

``analyze`` decodes the recordings (PyAV) and reports per session: the audio and video track end
times, the A/V lead per minute (drift), gaps in either track, the fragments' pacing against the
wall clock, the speech still heard after each interrupt (in ms of media) and whether the idle video
keeps moving; and the per-minute process table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import time
import urllib.request
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkmesh.bench.metrics import process_cpu_seconds
from talkmesh.bench.soak import rss_mib
from talkmesh.client import TalkmeshClient
from talkmesh.v1 import live_pb2 as lpb

SHORT = [
    "Sure, one moment please.",
    "Thanks for waiting.",
    "Got it.",
    "Let me check that for you.",
    "Of course.",
]
MEDIUM = [
    "I can see your order here. It left our warehouse yesterday and should arrive by Thursday.",
    "Your account is set up for monthly billing, and the next invoice goes out on the first.",
    "I have reset the password link for you. It is valid for the next thirty minutes.",
    "The refund was approved this morning; your bank may take three to five days to show it.",
]
LONG = [
    "Let me walk you through the whole process, step by step, so that nothing gets lost. First, open "
    "the settings page from the menu at the top right. Then choose the tab called devices, and you will "
    "see every phone and laptop that is signed in to your account. Remove the ones you do not recognise. "
    "After that, go back to the security tab and turn on two step verification; it takes about a minute, "
    "and you will need your phone nearby to receive the code. Finally, sign out everywhere and sign in "
    "again with your new password. If anything looks different from what I described, just tell me and "
    "I will stay with you until it works.",
    "There are three plans to choose from. The basic plan covers one user and includes email support "
    "during office hours. The team plan adds up to ten users, shared folders and phone support on "
    "weekdays. The business plan has no user limit, a dedicated account manager, single sign on, and "
    "support around the clock, every day of the year. You can switch between them at any time, and the "
    "difference is worked out to the day, so you never pay twice for the same period. Most customers of "
    "your size start on the team plan and move up when they need to.",
]
VOICES_C = ["espeak:en-us", "espeak:en-gb", "espeak:en-gb-scotland", "espeak:en-029"]


def _now() -> float:
    return time.time()


@dataclass
class Recorder:
    """One session's stream: the fMP4 bytes to a file, one JSON line per fragment and event."""

    name: str
    out: Path
    media: Any = None
    log: Any = None
    #: index after the last video frame received (the live edge at the client)
    edge: int = 0
    speaking: set[str] = field(default_factory=set)
    waiters: list[tuple[Any, asyncio.Future[Any]]] = field(default_factory=list)
    fps: float = 25.0
    frame0: float = 0.0
    turns: int = 0

    def open(self, suffix: str = "") -> None:
        self.close()
        self.media = open(self.out / f"{self.name}{suffix}.mp4", "wb")
        self.log = open(self.out / f"{self.name}{suffix}.jsonl", "w")
        self.edge = 0
        self.speaking.clear()

    def close(self) -> None:
        for f in (self.media, self.log):
            if f is not None:
                f.close()
        self.media = self.log = None

    def note(self, **row: Any) -> None:
        row.setdefault("t", _now())
        self.log.write(json.dumps(row) + "\n")

    def wait(self, pred: Any, timeout: float) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters.append((pred, fut))
        return asyncio.ensure_future(asyncio.wait_for(fut, timeout))

    def seen(self, msg: lpb.LiveServerMessage) -> None:
        t = _now()
        kind = msg.WhichOneof("kind")
        if kind == "started":
            s = msg.started
            self.fps = s.fps_numerator / s.fps_denominator
            self.frame0 = s.frame0_unix_seconds
            self.note(t=t, k="started", id=s.session_id, sr=s.sample_rate, fps=self.fps, frame0=self.frame0,
                      w=s.width, h=s.height, mime=s.mime_type)
        elif kind == "media":
            m = msg.media
            self.media.write(m.data)
            if m.init_segment:
                self.note(t=t, k="init", n=len(m.data))
            else:
                self.edge = m.first_frame + m.frame_count
                self.note(t=t, k="m", ff=m.first_frame, fc=m.frame_count, fs=m.first_sample, sc=m.sample_count,
                          kf=m.keyframe, turn=m.turn_id, und=m.underrun, n=len(m.data))
        elif kind == "event":
            e = msg.event
            which = e.WhichOneof("kind")
            row: dict[str, Any] = {"t": t, "k": which, "frame": e.frame, "ut": e.unix_seconds, "edge": self.edge}
            if which == "speaking_started":
                row["turn"] = e.speaking_started.turn_id
                self.speaking.add(e.speaking_started.turn_id)
            elif which == "speaking_stopped":
                s2 = e.speaking_stopped
                row.update(turn=s2.turn_id, reason=lpb.StopReason.Name(s2.reason), samples=s2.samples_played,
                           sr=s2.sample_rate, frames=s2.frames_played, voice=s2.voice)
                self.speaking.discard(s2.turn_id)
            elif which == "interrupt_acknowledged":
                ack = e.interrupt_acknowledged
                row.update(turn=ack.turn_id, stopped=list(ack.stopped_turn_ids))
            elif which == "underrun":
                row.update(turn=e.underrun.turn_id, tf=e.underrun.turn_frame)
            elif which == "session_ending":
                row.update(reason=lpb.EndReason.Name(e.session_ending.reason), left=e.session_ending.seconds_left)
            elif which == "caption":
                row.update(turn=e.caption.turn_id, seg=e.caption.segment_index)
            self.note(**row)
        elif kind == "error":
            er = msg.error
            self.note(t=t, k="error", code=er.code, msg=er.message, field=er.field, turn=er.turn_id)
        for pred, fut in list(self.waiters):
            if not fut.done() and pred(msg):
                fut.set_result((t, msg))
        self.waiters = [(p, f) for p, f in self.waiters if not f.done()]


def _event(which: str, turn: str | None = None) -> Any:
    def pred(msg: lpb.LiveServerMessage) -> bool:
        if msg.WhichOneof("kind") != "event" or msg.event.WhichOneof("kind") != which:
            return False
        return turn is None or getattr(msg.event, which).turn_id == turn

    return pred


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.end = 0.0
        self.sessions_open = 0
        self.watchers_open = 0
        self.recs: dict[str, Recorder] = {}

    def left(self) -> float:
        return self.end - time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(seconds, self.left())))

    async def interrupt(self, live: Any, rec: Recorder, kind: str, turn_id: str = "") -> None:
        """Sends an interrupt, notes when and where (the live edge), waits for its acknowledgement."""
        def acked(msg: lpb.LiveServerMessage) -> bool:
            if msg.WhichOneof("kind") == "error":
                return msg.error.field == "interrupt.turn_id"
            return _event("interrupt_acknowledged", turn_id)(msg)  # type: ignore[no-any-return]

        ack = rec.wait(acked, 15.0)
        rec.note(k="interrupt_sent", kind=kind, turn=turn_id, edge=rec.edge, speaking=sorted(rec.speaking))
        await live.interrupt(turn_id)
        try:
            await ack
        except TimeoutError:
            rec.note(k="interrupt_lost", kind=kind)

    async def turn(self, live: Any, rec: Recorder, rng: random.Random, voice: str = "") -> None:
        """One text turn of a random length, played to its end or interrupted at a random moment."""
        size = rng.choices(["short", "medium", "long"], [3, 4, 2])[0]
        pool = {"short": SHORT, "medium": MEDIUM, "long": LONG}[size]
        text = rng.choice(pool)
        if size == "medium" and rng.random() < 0.4:
            text += " " + rng.choice(MEDIUM)
        how = rng.choices(["complete", "before", "early", "mid"], [5, 1, 2, 3])[0]
        if size == "short" and how == "mid":
            how = "complete"
        rec.turns += 1
        tid = f"{rec.name}-{rec.turns}"
        started = rec.wait(_event("speaking_started", tid), 60.0)
        stopped = rec.wait(_event("speaking_stopped", tid), 600.0)
        rec.note(k="turn_sent", turn=tid, size=size, how=how, chars=len(text), voice=voice)
        if rng.random() < 0.4:  # streamed like an LLM's tokens

            async def tokens() -> Any:
                for word in text.split(" "):
                    yield word + " "
                    await asyncio.sleep(rng.uniform(0.01, 0.06))

            sender: asyncio.Task[Any] = asyncio.create_task(live.say_stream(tokens(), turn_id=tid, voice=voice))
        else:
            sender = asyncio.create_task(live.say(text, turn_id=tid, voice=voice))
        try:
            if how == "before":
                await asyncio.sleep(rng.uniform(0.02, 0.08))
                await self.interrupt(live, rec, "before_first_frame", rng.choice(["", tid]))
            else:
                try:
                    await started
                except TimeoutError:
                    rec.note(k="turn_never_started", turn=tid)
                if how == "early":
                    await asyncio.sleep(rng.uniform(0.0, 0.3))
                    await self.interrupt(live, rec, "early", rng.choice(["", tid]))
                elif how == "mid":
                    approx = len(text) / 14.0  # ~14 characters a second
                    await asyncio.sleep(rng.uniform(0.8, max(1.0, approx * 0.85)))
                    await self.interrupt(live, rec, "mid", rng.choice(["", tid]))
            try:
                await asyncio.wait_for(asyncio.shield(stopped), max(1.0, self.left() + 5))
            except TimeoutError:
                rec.note(k="turn_never_stopped", turn=tid)
        finally:
            await sender
            for f in (started, stopped):
                f.cancel()

    async def idle(self, live: Any, rec: Recorder, rng: random.Random) -> None:
        seconds = rng.choice([rng.uniform(5, 30), rng.uniform(30, 150)])
        rec.note(k="idle_for", s=seconds)
        if rng.random() < 0.3:
            await self.sleep(rng.uniform(1, seconds))
            await self.interrupt(live, rec, "idle")
        await self.sleep(seconds)

    async def queued(self, live: Any, rec: Recorder, rng: random.Random) -> None:
        """Three turns queued at once, all interrupted while the first speaks."""
        rec.turns += 1
        base = f"{rec.name}-{rec.turns}"
        tids = [f"{base}q{i}" for i in range(3)]
        started = rec.wait(_event("speaking_started", tids[0]), 60.0)
        rec.note(k="turn_sent", turn=",".join(tids), size="queued3", how="mid")
        for tid in tids:
            await live.say(rng.choice(MEDIUM), turn_id=tid)
        with_timeout = True
        try:
            await started
        except TimeoutError:
            with_timeout = False
        if with_timeout:
            await asyncio.sleep(rng.uniform(0.5, 3.0))
        await self.interrupt(live, rec, "mid_queued")

    async def audio_turn(self, live: Any, rec: Recorder, pcm: bytes, rate: int, interrupt_at: float | None) -> None:
        """The caller's own speech, sent in 100 ms chunks at the pace it was recorded."""
        tid = f"{rec.name}-audio{int(time.monotonic())}"
        stopped = rec.wait(_event("speaking_stopped", tid), 600.0)
        rec.note(k="turn_sent", turn=tid, size="audio", how="complete" if interrupt_at is None else "mid",
                 seconds=len(pcm) / 2 / rate)

        async def chunks() -> Any:
            step = rate // 10 * 2
            for i in range(0, len(pcm), step):
                yield pcm[i : i + step]
                await asyncio.sleep(0.1)

        sender = asyncio.create_task(live.say_audio(chunks(), rate, turn_id=tid))
        if interrupt_at is not None:
            await rec.wait(_event("speaking_started", tid), 30.0)
            await asyncio.sleep(interrupt_at)
            await self.interrupt(live, rec, "mid_audio", tid)
        await sender
        try:
            await stopped
        except TimeoutError:
            rec.note(k="turn_never_stopped", turn=tid)

    async def read(self, live: Any, rec: Recorder) -> None:
        try:
            async for msg in live:
                rec.seen(msg)
        except Exception as exc:
            rec.note(k="stream_error", error=repr(exc))
        rec.note(k="stream_end")

    async def keepalive(self, live: Any) -> None:
        while self.left() > 0:
            await self.sleep(60)
            if self.left() > 0:
                await live.keep_alive()

    async def session(self, client: TalkmeshClient, name: str, seed: int) -> None:
        rng = random.Random(seed)
        rec = self.recs[name] = Recorder(name, self.out)
        pcm, rate = _speech()
        avatars = [""] if name != "D" else ["", self.args.second_avatar]
        audio_done = False
        for part, avatar in enumerate(avatars):
            rec.open("" if part == 0 else f"-{part}")
            until = self.end if part == len(avatars) - 1 else time.monotonic() + self.left() / 2
            async with client.live(avatar=avatar, request_id=f"soak-{name}-{part}") as live:
                self.sessions_open += 1
                reader = asyncio.create_task(self.read(live, rec))
                pinger = asyncio.create_task(self.keepalive(live))
                watcher: asyncio.Task[None] | None = None
                try:
                    while time.monotonic() < until - 5:
                        if name == "A" and not audio_done and self.left() < self.args.minutes * 60 * 0.7:
                            await self.audio_turn(live, rec, pcm, rate, None)
                            await self.sleep(rng.uniform(3, 10))
                            await self.audio_turn(live, rec, pcm * 3, rate, rng.uniform(0.5, 3.0))
                            audio_done = True
                            continue
                        if name == "B" and watcher is None and self.args.minutes * 60 - self.left() > 120:
                            watcher = asyncio.create_task(self.watch(client, live.session_id, rng))
                        action = rng.choices(["turn", "idle", "queued"], [6, 3, 1])[0]
                        if action == "turn":
                            voice = rng.choice(VOICES_C) if name == "C" else ""
                            await self.turn(live, rec, rng, voice)
                        elif action == "queued":
                            await self.queued(live, rec, rng)
                        else:
                            await self.idle(live, rec, rng)
                        await self.sleep(rng.uniform(0.5, 4.0))
                    await asyncio.sleep(max(0.0, until - time.monotonic()))
                    await live.close()
                    await asyncio.wait_for(reader, 30)
                finally:
                    self.sessions_open -= 1
                    for task in (pinger, watcher):
                        if task is not None:
                            task.cancel()
                    for task in (reader, pinger, watcher):
                        if task is not None:
                            try:
                                await task
                            except asyncio.CancelledError:
                                pass
        rec.close()

    async def watch(self, client: TalkmeshClient, session_id: str, rng: random.Random) -> None:
        """Joins the session as a viewer for a minute or so, leaves, and comes back, until the end."""
        k = 0
        while self.left() > 90:
            await self.sleep(rng.uniform(60, 240))
            if self.left() < 90:
                return
            k += 1
            rec = Recorder(f"B-watch{k}", self.out)
            rec.open()
            stay = rng.uniform(30, 90)
            self.watchers_open += 1
            try:
                async with client.watch(session_id) as w:

                    async def take(rec: Recorder = rec) -> None:
                        async for msg in w:
                            rec.seen(msg)

                    try:
                        await asyncio.wait_for(take(), stay)
                    except TimeoutError:
                        pass
            except Exception as exc:
                rec.note(k="stream_error", error=repr(exc))
            finally:
                self.watchers_open -= 1
                rec.note(k="left")
                rec.close()

    async def sampler(self, pids: dict[int, str]) -> None:
        start = time.monotonic()
        with open(self.out / "samples.jsonl", "a") as f:
            while True:
                row: dict[str, Any] = {
                    "t": _now(),
                    "minute": round((time.monotonic() - start) / 60, 2),
                    "load": os.getloadavg(),
                    "procs": {name: proc_stats(pid) for pid, name in pids.items()},
                    "sessions_open": self.sessions_open,
                    "watchers_open": self.watchers_open,
                    "speaking": sum(len(r.speaking) for r in self.recs.values()),
                    "metrics": await asyncio.to_thread(scrape, self.args.metrics),
                }
                f.write(json.dumps(row) + "\n")
                f.flush()
                if self.left() < -30:
                    return
                await asyncio.sleep(60)

    async def run(self) -> None:
        self.end = time.monotonic() + 60 * self.args.minutes
        pids = mesh_pids(self.args.pid_of_up)
        sampler = asyncio.create_task(self.sampler(pids))
        async with TalkmeshClient(self.args.target) as client:
            await asyncio.gather(*(self.session(client, n, self.args.seed + i) for i, n in enumerate("ABCD")))
        await asyncio.sleep(20)  # the sessions' ends reach the metrics
        sampler.cancel()
        try:
            await sampler
        except asyncio.CancelledError:
            pass
        with open(self.out / "samples.jsonl", "a") as f:
            f.write(json.dumps({"t": _now(), "minute": "after", "load": os.getloadavg(),
                                "procs": {name: proc_stats(pid) for pid, name in pids.items()},
                                "sessions_open": 0, "watchers_open": 0, "speaking": 0,
                                "metrics": scrape(self.args.metrics)}) + "\n")


def _speech() -> tuple[bytes, int]:
    path = Path(__file__).resolve().parent.parent / "docs" / "examples" / "my-voice.wav"
    with wave.open(str(path)) as w:
        return w.readframes(w.getnframes()), w.getframerate()


def mesh_pids(up: int) -> dict[int, str]:
    """pid -> service name of ``talkmesh up``'s children (and the launcher itself)."""
    out = {up: "launcher"}
    children: list[int] = []
    for task in Path(f"/proc/{up}/task").iterdir():
        children += [int(x) for x in (task / "children").read_text().split()]
    for pid in children:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        words = [a.decode() for a in argv if a]
        name = words[words.index("serve") + 1] if "serve" in words else " ".join(words[-2:])
        out[pid] = name
    return out


def proc_stats(pid: int) -> dict[str, float]:
    try:
        return {
            "rss_mib": rss_mib(pid),
            "threads": len(os.listdir(f"/proc/{pid}/task")),
            "fds": len(os.listdir(f"/proc/{pid}/fd")),
            "cpu_s": process_cpu_seconds(pid),
        }
    except (FileNotFoundError, ProcessLookupError):
        return {"rss_mib": math.nan, "threads": 0, "fds": 0, "cpu_s": math.nan}


WANTED = (
    "talkmesh_live_sessions{",
    "talkmesh_live_lead_frames{",
    "talkmesh_live_late_ticks_total{",
    "talkmesh_live_underruns_total{",
    "talkmesh_live_turns_total{",
    "talkmesh_live_interrupt_seconds_count{",
    "talkmesh_live_interrupt_seconds_sum{",
    "talkmesh_streams_active{",
)


def scrape(spec: str) -> dict[str, float]:
    """The live metrics of each metrics port in ``host:first-last``."""
    host, ports = spec.rsplit(":", 1)
    first, last = (int(p) for p in ports.split("-"))
    out: dict[str, float] = {}
    for port in range(first, last + 1):
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(WANTED):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
    return out


# ---------------------------------------------------------------------------------------------- analysis


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def decode(path: Path, sizes: list[int] | None = None) -> dict[str, Any]:
    """Packets' times of both tracks, the audio's loudness per 10 ms, a fingerprint per video frame,
    and with ``sizes`` (the init segment's and each fragment's bytes, in order) each track's end
    after every fragment: the A/V lead as a player that appends fragment by fragment sees it."""
    import bisect

    import av

    vts: list[float] = []
    ats: list[tuple[float, float]] = []
    audio: list[np.ndarray] = []
    prints: list[float] = []
    offsets = list(np.cumsum(sizes)) if sizes else []
    nfrag = max(0, len(offsets) - 1)
    vend = np.full(nfrag, -np.inf)
    aend = np.full(nfrag, -np.inf)
    with av.open(str(path)) as c:
        vs, as_ = c.streams.video[0], c.streams.audio[0]
        vs.thread_type = "AUTO"
        rate = as_.codec_context.sample_rate
        vdur = 0.0
        for packet in c.demux(vs, as_):
            if packet.pts is None:
                continue
            t = float(packet.pts * packet.time_base)
            d = float((packet.duration or 0) * packet.time_base)
            frag = bisect.bisect_right(offsets, packet.pos) - 1 if offsets and packet.pos is not None else -1
            if packet.stream.type == "video":
                vts.append(t)
                vdur = d or vdur
                if 0 <= frag < nfrag:
                    vend[frag] = max(vend[frag], t + (d or vdur))
                for frame in packet.decode():
                    assert isinstance(frame, av.VideoFrame)
                    y = frame.to_ndarray(format="gray")[::8, ::8].astype(np.float32)
                    prints.append(float(y.mean()) + float(y[::7, ::5].sum()) * 1e-6)
            else:
                ats.append((t, d))
                if 0 <= frag < nfrag:
                    aend[frag] = max(aend[frag], t + d)
                for frame in packet.decode():
                    assert isinstance(frame, av.AudioFrame)
                    arr = frame.to_ndarray().astype(np.float32)
                    audio.append(arr[0] if arr.ndim > 1 and frame.format.is_planar else arr.reshape(-1))
    samples = np.concatenate(audio) if audio else np.zeros(0, np.float32)
    win = rate // 100
    n = len(samples) // win
    rms = np.sqrt((samples[: n * win].reshape(n, win) ** 2).mean(axis=1)) if n else np.zeros(0)
    vend = np.maximum.accumulate(vend) if nfrag else vend
    aend = np.maximum.accumulate(aend) if nfrag else aend
    return {"vts": vts, "vdur": vdur, "ats": ats, "rms": rms, "rate": rate, "prints": prints,
            "audio_first": ats[0][0] if ats else 0.0, "vend": vend, "aend": aend}


def analyze(folder: Path) -> str:
    lines: list[str] = []
    for jl in sorted(folder.glob("*.jsonl")):
        if jl.name == "samples.jsonl" or "watch" in jl.name:
            continue
        lines += analyze_session(jl)
    lines += analyze_watchers(folder)
    lines += analyze_samples(folder / "samples.jsonl")
    return "\n".join(lines)


def analyze_session(jl: Path) -> list[str]:
    rows = _rows(jl)
    name = jl.stem
    started = next(r for r in rows if r["k"] == "started")
    fps, sr, frame0 = started["fps"], started["sr"], started["frame0"]
    media = [r for r in rows if r["k"] == "m"]
    out = [f"## session {name}: {len(media)} fragments, {media[-1]['ff'] + media[-1]['fc'] if media else 0} frames"]
    # the contract: contiguous frames and samples, sample ranges as the proto says
    bad_cont = bad_samples = 0
    nxt = 0
    for r in media:
        if r["fc"] == 0:  # the audio encoder's tail at the end: no frames, no sample range
            continue
        if r["ff"] != nxt:
            bad_cont += 1
        nxt = r["ff"] + r["fc"]
        lo = math.floor(r["ff"] * sr / fps)
        hi = math.floor((r["ff"] + r["fc"]) * sr / fps)
        if r["fs"] != lo or r["sc"] != hi - lo:
            bad_samples += 1
    out.append(f"- fragments out of sequence: {bad_cont}; sample ranges off the contract: {bad_samples}")
    # pacing: when each fragment arrived vs when its first frame was due
    late = np.array([r["t"] - (frame0 + r["ff"] / fps) for r in media])
    if len(late):
        minutes = np.array([(r["t"] - frame0) // 60 for r in media])
        out.append(
            f"- arrival minus due (ms): p50 {1000 * np.median(late):.0f}, p99 {1000 * np.percentile(late, 99):.0f}, "
            f"max {1000 * late.max():.0f}, min {1000 * late.min():.0f}; by minute p50: "
            + " ".join(f"{int(m)}:{1000 * np.median(late[minutes == m]):.0f}" for m in np.unique(minutes)[::3])
        )
        gaps = np.diff([r["t"] for r in media])
        out.append(f"- receive gaps > 200 ms: {int((gaps > 0.2).sum())}, max {1000 * gaps.max():.0f} ms")
        underruns = sum(1 for r in media if r["und"])
        events = sum(1 for r in rows if r["k"] == "underrun")
        out.append(f"- underrun fragments: {underruns}; underrun events: {events}")
    mp4 = jl.with_suffix(".mp4")
    sizes = [r["n"] for r in rows if r["k"] in ("init", "m")]
    d = decode(mp4, sizes)
    vts, ats = d["vts"], d["ats"]
    vend = vts[-1] + d["vdur"] if vts else 0.0
    aend = ats[-1][0] + ats[-1][1] if ats else 0.0
    out.append(f"- decoded: {len(vts)} video frames, video ends {vend:.3f} s, audio ends {aend:.3f} s "
               f"(audio - video {1000 * (aend - vend):+.1f} ms); audio starts {1000 * d['audio_first']:.1f} ms")
    vgaps = np.diff(vts) if len(vts) > 1 else np.zeros(0)
    out.append(f"- video pts steps != 1 frame: {int((np.abs(vgaps - 1 / fps) > 1e-3).sum())}")
    agaps = [ats[i + 1][0] - (ats[i][0] + ats[i][1]) for i in range(len(ats) - 1)]
    out.append(f"- audio packet gaps/overlaps > 1 ms: {sum(1 for g in agaps if abs(g) > 1e-3)}")
    vend_f, aend_f = d["vend"], d["aend"]
    if len(vend_f):
        frag_t = np.array([r["ff"] / fps for r in media[: len(vend_f)]])
        lead = (aend_f - vend_f) * 1000
        ok = np.isfinite(lead)
        mins = (frag_t // 60).astype(int)
        table = [
            "| minute | A/V lead after each fragment: min ms | mean ms | max ms | at the minute's last fragment ms |",
            "|---|---|---|---|---|",
        ]
        for m in np.unique(mins):
            sel = lead[(mins == m) & ok]
            if len(sel):
                table.append(f"| {m} | {sel.min():.1f} | {sel.mean():.1f} | {sel.max():.1f} | {sel[-1]:.1f} |")
        out += ["", *table, ""]
        speaking = np.array([bool(r["turn"]) for r in media[: len(vend_f)]])
        out += [
            "| window | speaking fragments: n, lead mean / min / max ms | idle fragments: n, mean / min / max ms |",
            "|---|---|---|",
        ]
        for w in range(0, int(frag_t.max() // 300) + 1):
            win = (frag_t // 300 == w) & ok

            def cell(x: np.ndarray) -> str:
                return f"{len(x)}, {x.mean():.1f} / {x.min():.1f} / {x.max():.1f}" if len(x) else "-"

            out.append(f"| {5 * w}-{5 * w + 5} min | {cell(lead[win & speaking])} | {cell(lead[win & ~speaking])} |")
        out.append("")
        sel = lead[ok]
        k = max(1, len(sel) // 10)
        out.append(
            f"- A/V lead, mean of the first tenth {sel[:k].mean():.1f} ms, of the last tenth {sel[-k:].mean():.1f} ms"
        )
    # idle video: the longest run of identical frames, and in idle stretches
    prints = np.array(d["prints"])
    same = np.abs(np.diff(prints)) < 1e-9 if len(prints) > 1 else np.zeros(0, bool)
    longest = run = 0
    for s in same:
        run = run + 1 if s else 0
        longest = max(longest, run)
    out.append(f"- longest run of identical frames: {longest + 1} ({(longest + 1) / fps:.1f} s)")
    out += stale(rows, d, fps)
    return out


def stale(rows: list[dict[str, Any]], d: dict[str, Any], fps: float) -> list[str]:
    """Speech heard after each interrupt: loud audio (10 ms windows over -50 dBFS) after the
    acknowledgement's frame and after the live edge when the interrupt was sent, up to the next
    turn's first frame (or 3 s)."""
    rms = d["rms"]
    loud = rms > 10 ** (-50 / 20)
    starts = sorted(r["frame"] for r in rows if r["k"] == "speaking_started")
    sent = [r for r in rows if r["k"] == "interrupt_sent"]
    acks = [r for r in rows if r["k"] == "interrupt_acknowledged"]
    media = [r for r in rows if r["k"] == "m"]
    header = (
        "| interrupt | kind | stopped turns | send→ack ms (wall) | ack frame - edge at send "
        "| speech after ack (ms of media) | speech after send edge (ms) | turn frames after send edge "
        "| peak dBFS 50 ms before / 0-20 ms after / 20-50 ms after the cut |"
    )
    out = ["", header, "|---|---|---|---|---|---|---|---|---|"]
    after_ack: dict[str, list[float]] = {}
    for i, (s, a) in enumerate(zip(sent, acks, strict=False)):
        t0 = a["frame"] / fps
        e0 = s["edge"] / fps
        nxt = next((f for f in starts if f >= a["frame"]), None)
        stop = min(t0 + 3.0, nxt / fps if nxt is not None else t0 + 3.0)

        def last_loud(since: float, until: float) -> float:
            lo, hi = int(since * 100), int(until * 100)
            idx = np.nonzero(loud[lo:hi])[0]
            return (idx[-1] + 1) / 100 + lo / 100 - since if len(idx) else 0.0

        heard_ack = last_loud(t0, stop) * 1000
        heard_send = last_loud(e0, stop) * 1000 if e0 < stop else 0.0
        frames = sum(r["fc"] for r in media if r["ff"] >= s["edge"] and r["turn"] and r["turn"] in a["stopped"])

        def db(lo: float, hi: float) -> str:
            w = rms[max(0, round(lo * 100)) : round(hi * 100)]
            return f"{20 * np.log10(max(float(w.max()), 1e-9)):.0f}" if len(w) else "-"

        levels = f"{db(t0 - 0.05, t0)} / {db(t0, t0 + 0.02)} / {db(t0 + 0.02, t0 + 0.05)}"
        after_ack.setdefault(s["kind"], []).append(heard_ack)
        out.append(f"| {i} | {s['kind']} | {len(a['stopped'])} | {1000 * (a['t'] - s['t']):.0f} | "
                   f"{a['frame'] - s['edge']} | {heard_ack:.0f} | {heard_send:.0f} | {frames} | {levels} |")
    out.append("")
    out.append(f"- interrupts sent {len(sent)}, acknowledged {len(acks)}, lost "
               f"{sum(1 for r in rows if r['k'] == 'interrupt_lost')}")
    for kind, vals in sorted(after_ack.items()):
        v = np.array(vals)
        out.append(f"- speech after ack, {kind}: n {len(v)}, p50 {np.median(v):.0f} ms, p95 "
                   f"{np.percentile(v, 95):.0f} ms, max {v.max():.0f} ms")
    problems = [r for r in rows if r["k"] in ("error", "stream_error", "turn_never_started", "turn_never_stopped")]
    out.append(f"- errors/anomalies: {len(problems)} " + "; ".join(json.dumps(p) for p in problems[:8]))
    reasons: dict[str, int] = {}
    for r in rows:
        if r["k"] == "speaking_stopped":
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    out.append(f"- turns stopped by reason: {reasons}")
    return out


def analyze_watchers(folder: Path) -> list[str]:
    out = ["", "## watchers of B"]
    for jl in sorted(folder.glob("B-watch*.jsonl")):
        rows = _rows(jl)
        media = [r for r in rows if r["k"] == "m"]
        first = media[0] if media else None
        try:
            d = decode(jl.with_suffix(".mp4"))
            dec = f"{len(d['vts'])} frames decoded"
        except Exception as exc:
            dec = f"decode failed: {exc!r}"
        out.append(f"- {jl.stem}: {len(media)} fragments, first keyframe {first['kf'] if first else None}, "
                   f"{dec}, errors {[r for r in rows if r['k'] in ('error', 'stream_error')]}")
    return out


def analyze_samples(path: Path) -> list[str]:
    rows = _rows(path)
    names = list(rows[0]["procs"])
    out = ["", "## processes per minute (RSS MiB / fds / threads)", "",
           "| minute | load 1m | " + " | ".join(names)
           + " | sessions (client) | live_sessions gateway | live_sessions encoder | lead frames (encoder) |",
           "|---" * (len(names) + 6) + "|"]
    for r in rows:
        cells = [f"{p['rss_mib']:.0f}/{p['fds']}/{p['threads']}" for p in r["procs"].values()]
        m = r["metrics"]

        def live(service: str, m: dict[str, float] = m) -> str:
            sp = m.get(f'talkmesh_live_sessions{{service="{service}",state="speaking"}}', 0)
            idle = m.get(f'talkmesh_live_sessions{{service="{service}",state="idle"}}', 0)
            return f"{sp:.0f} sp + {idle:.0f} idle"

        lead = m.get('talkmesh_live_lead_frames{service="encoder"}', math.nan)
        out.append(f"| {r['minute']} | {r['load'][0]:.2f} | " + " | ".join(cells)
                   + f" | {r['sessions_open']} ({r['speaking']} sp, {r['watchers_open']} w) | {live('gateway')} | "
                   f"{live('encoder')} | {lead:.0f} |")
    last = rows[-1]["metrics"]
    out.append("")
    keys = ("turns_total", "late", "underrun", "interrupt")
    counters = [f"{k} {v:g}" for k, v in sorted(last.items()) if any(w in k for w in keys)]
    out.append("- final counters: " + ", ".join(counters))
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tools.live_soak", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--target", required=True, help="the gateway, host:port")
    r.add_argument("--metrics", required=True, help="metrics ports, host:first-last")
    r.add_argument("--pid-of-up", type=int, required=True, help="the pid of `talkmesh up`")
    r.add_argument("--minutes", type=float, default=30.0)
    r.add_argument("--out", required=True)
    r.add_argument("--seed", type=int, default=43)
    r.add_argument("--second-avatar", default="default", help="the avatar session D switches to halfway")
    a = sub.add_parser("analyze")
    a.add_argument("folder")
    args = p.parse_args()
    if args.cmd == "run":
        asyncio.run(Soak(args).run())
    else:
        print(analyze(Path(args.folder)))


if __name__ == "__main__":
    main()
