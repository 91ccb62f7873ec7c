"""Live sessions end to end through the five services (in this process, each on its own port).

The media is checked decoded (FFmpeg through PyAV) and, for the mouth, with the face mesh run on
the decoded frames. Timing figures live in the benchmark (talkmesh bench live); these tests check
the rules: one gap-free timeline, turns in order, nothing of an interrupted turn after the cut,
samples-played accounting, fencing, errors, lifetimes.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gateway.main import create_service as create_gateway
from services.gateway.main import load_config as load_gateway_config
from talkmesh.client import TalkmeshClient
from talkmesh.common.aio import cancel_and_wait
from talkmesh.common.calls import Stream
from talkmesh.common.channel import create_channel
from talkmesh.common.clock import MediaClock
from talkmesh.common.config import ServerConfig
from talkmesh.common.errors import ErrorDetails
from talkmesh.common.server import ServiceHost
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import live_pb2_grpc
from talkmesh.v1 import types_pb2 as api
from tests.live_helpers import Recorder, decode, mouth_openness
from tests.mesh import inprocess_mesh

pytestmark = pytest.mark.timeout(180)

TEXT = "Hello there! This is a live avatar, speaking while it is still being rendered."


OUT = {"service": "renderer", "direction": "out"}


def _turn_frames(rec: Recorder, turn_id: str) -> list[int]:
    return [r.msg.media.first_frame for r in rec.fragments() if r.msg.media.turn_id == turn_id]


def _index(rec: Recorder, predicate) -> int:  # type: ignore[no-untyped-def]
    return next(i for i, r in enumerate(rec.messages) if predicate(r))


def _opens(speaking: np.ndarray, resting: np.ndarray) -> bool:
    """The open-mouth area while speaking clearly exceeds the resting mouth's (whose own range,
    from head motion and breathing, is a few percent of the mouth box)."""
    margin = 0.05
    return bool(speaking.max() > resting.max() + margin and np.percentile(speaking, 80) > np.median(resting) + margin)


async def _in_real_time(pcm: bytes, chunk: int, seconds: float) -> AsyncIterator[bytes]:
    """``pcm`` in pieces of ``chunk`` bytes, one every ``seconds``, as a microphone sends it."""
    for i in range(0, len(pcm), chunk):
        yield pcm[i : i + chunk]
        await asyncio.sleep(seconds)


def _burst(rate: int, seconds: float) -> bytes:
    """Syllable-like tone bursts (on 150 ms, off 100 ms), mono s16le."""
    t = np.arange(int(rate * seconds)) / rate
    on = (t % 0.25) < 0.15
    return (np.sin(2 * np.pi * 180 * t) * 9000 * on).astype("<i2").tobytes()


def _check_timeline(rec: Recorder, clock: MediaClock, idle_batch: int) -> list[lpb.LiveMedia]:
    """Fragments cover session frames 0, 1, 2, ... without gap or overlap, with exactly their audio
    samples; one frame per fragment while speaking, at most ``idle_batch`` while idle."""
    frags = [m for m in rec.media() if m.frame_count]
    assert frags[0].first_frame == 0
    assert all(b.first_frame == a.first_frame + a.frame_count for a, b in itertools.pairwise(frags))
    assert all(
        m.first_sample == clock.start(m.first_frame)
        and m.sample_count == clock.start(m.first_frame + m.frame_count) - clock.start(m.first_frame)
        for m in frags
    )
    assert all(m.frame_count == 1 for m in frags if m.turn_id), "one frame per fragment while speaking"
    assert max(m.frame_count for m in frags) <= idle_batch
    # the audio encoder's tail (no frames) sits at the end of the timeline, not at sample 0
    end = frags[-1].first_frame + frags[-1].frame_count
    tails = [m for m in rec.media() if not m.frame_count and not m.init_segment]
    assert all(m.first_frame == end and m.first_sample == clock.start(end) and not m.sample_count for m in tails)
    return frags


@pytest.mark.parametrize("idle_batch", [4, 1])  # 4: the default (live.idle_frames_per_fragment)
async def test_a_text_turn_plays_on_one_gap_free_timeline(tmp_path: Path, idle_batch: int) -> None:
    env = {} if idle_batch == 4 else {"TALKMESH_ENCODER__LIVE__IDLE_FRAMES_PER_FRAGMENT": str(idle_batch)}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await rec.wait_for(lambda r: r.kind == "media" and r.msg.media.first_frame >= 12)
            registry = mesh.telemetry["renderer"].metrics.registry
            idle_bytes = registry.get_sample_value("talkmesh_stream_bytes_total", OUT) or 0  # the idle loop's
            tid = await live.say(TEXT)
            await rec.wait_event("speaking_started", tid)
            stopped = await rec.wait_event("speaking_stopped", tid, timeout=40)
            last = max(_turn_frames(rec, tid))
            await rec.wait_for(lambda r: r.kind == "media" and r.msg.media.first_frame >= last + 15)
            await live.close()
            await rec.finish()
        ring_hits = registry.get_sample_value(
            "talkmesh_cache_requests_total", {"service": "renderer", "cache": "frame_ring", "result": "hit"}
        )
        turn_bytes = (registry.get_sample_value("talkmesh_stream_bytes_total", OUT) or 0) - idle_bytes

    # the turn's frames came through a frame ring (the renderer shares this machine; docs/ARCHITECTURE.md):
    # its Render stream carried small messages, not 393 KB frames
    assert ring_hits == 1
    assert turn_bytes < 393216
    started = rec.started
    assert rec.messages[0].kind == "started" and rec.media()[0].init_segment
    clock = MediaClock.of(started.fps_numerator / started.fps_denominator, started.sample_rate)
    frags = _check_timeline(rec, clock, idle_batch)
    assert [m.frame_count for m in rec.media()[-1:]] == [0], "a closed session's stream ends with the audio tail"
    idle_counts = {m.frame_count for m in frags if not m.turn_id}
    # one frame per fragment during the cross-fade; full batches of K while idling on the loop
    # (a batch ends before the loop's next keyframe, so shorter ones occur too)
    assert 1 in idle_counts and idle_batch in idle_counts, idle_counts
    assert idle_counts <= set(range(1, idle_batch + 1)), idle_counts
    turn = _turn_frames(rec, tid)
    assert turn == list(range(turn[0], turn[0] + len(turn))), "a turn's frames are contiguous"
    body = stopped.msg.event.speaking_stopped
    assert body.reason == lpb.STOP_REASON_COMPLETED and body.frames_played == len(turn)
    per_frame = body.sample_rate / 25
    assert abs(body.samples_played - len(turn) * per_frame) <= per_frame  # the turn's audio, to a frame
    # events leave after the media they describe
    first_turn_media = _index(rec, lambda r: r.kind == "media" and r.msg.media.turn_id == tid)
    assert _index(rec, lambda r: r.event == "speaking_started") > first_turn_media
    assert rec.events("session_ending")[-1].msg.event.session_ending.reason == lpb.END_REASON_CLIENT_CLOSED

    out = decode(rec.write(tmp_path / "live.mp4"))
    assert len(out.frames) == sum(m.frame_count for m in frags)
    steps = {b - a for a, b in zip(out.pts, out.pts[1:], strict=False)}
    assert len(steps) == 1 and out.frame_seconds == Fraction(1, 25), "monotonic, gap-free, 25 fps"
    assert abs(out.audio_seconds - out.video_seconds) <= 0.045, "audio ends with the video (within a frame)"

    gaps = mouth_openness(out.frames)
    idle = np.r_[gaps[: turn[0]], gaps[turn[-1] + 10 :]]
    speaking = gaps[turn[0] : turn[-1] + 1]
    assert _opens(speaking, idle), "the mouth moves while speaking and rests while idle"


async def test_idle_frames_go_several_per_fragment_paced_and_exactly_labelled(tmp_path: Path) -> None:
    """live.idle_frames_per_fragment = 3 (not the default 4): an idle session sends up to three loop
    frames per fragment when the first is due; a turn starts at the next frame not sent; the
    decoded stream has the same gap-free timestamps, keyframes and audio as one frame per fragment."""
    import av

    env = {"TALKMESH_ENCODER__LIVE__IDLE_FRAMES_PER_FRAGMENT": "3"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await rec.wait_for(lambda r: r.kind == "media" and r.msg.media.first_frame >= 60)
            tid = await live.say("Hello there!")
            await rec.wait_event("speaking_stopped", tid, timeout=40)
            last = max(_turn_frames(rec, tid))
            await rec.wait_for(lambda r: r.kind == "media" and r.msg.media.first_frame >= last + 40)
            await live.close()
            await rec.finish()

    started = rec.started
    fps = Fraction(started.fps_numerator, started.fps_denominator)
    clock = MediaClock(fps, started.sample_rate)
    frags = _check_timeline(rec, clock, 3)
    idle = [m for m in frags if not m.turn_id]
    assert sum(m.frame_count for m in idle) > 2 * len(idle), "idle fragments mostly hold several frames"
    assert [m for m in frags if m.turn_id], "the turn played"
    # pacing: a fragment leaves when its first frame is due, never earlier (the others ride ahead):
    # due by the session's own clock (frame 0's wall time), so that a first fragment that came late
    # (a loaded machine) does not make the ones on time look early
    import time

    wall = time.time() - time.monotonic()  # the recorder's monotonic times -> wall clock (one machine)
    timed = [r for r in rec.fragments() if r.msg.media.frame_count]
    assert len(timed) > 20
    for r in timed:
        due = started.frame0_unix_seconds + float(r.msg.media.first_frame / fps)
        assert r.at + wall >= due - 0.02, (r.msg.media.first_frame, r.at + wall - due)
    # the labels are what the decoder sees: keyframes only ever start a fragment
    path = rec.write(tmp_path / "idle.mp4")
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        packets = [(int(p.pts), p.is_keyframe) for p in c.demux(stream) if p.size]
        step = stream.time_base
    frame_of = {pts: round(pts * step * fps) for pts, _key in packets}
    keys = sorted(frame_of[pts] for pts, key in packets if key)
    assert keys == sorted(m.first_frame for m in frags if m.keyframe), "keyframe labels are exact"
    out = decode(path)
    assert len(out.frames) == sum(m.frame_count for m in frags) == len(packets)
    assert len({b - a for a, b in zip(out.pts, out.pts[1:], strict=False)}) == 1, "no gap, no overlap"
    assert out.frame_seconds == 1 / fps
    assert abs(out.audio_seconds - out.video_seconds) <= 0.045, "audio ends with the video (within a frame)"


async def test_interrupt_cuts_the_turn_at_the_next_frame(tmp_path: Path) -> None:
    long_text = " ".join([TEXT] * 4)
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await rec.wait_for(lambda r: r.kind == "media" and r.msg.media.first_frame >= 25)  # a resting mouth
            said_at = time.monotonic()
            tid = await live.say(long_text)
            await rec.wait_event("speaking_started", tid)
            await rec.wait_for(
                lambda r: (
                    r.kind == "media"
                    and r.msg.media.turn_id == tid
                    and r.msg.media.first_frame >= _turn_frames(rec, tid)[0] + 25
                )
            )
            lead = mesh.telemetry["encoder"].metrics.live_lead_frames.labels("encoder")
            sessions = mesh.telemetry["encoder"].metrics.live_sessions
            for _ in range(100):  # rendered ahead of the clock (read until it is, under load)
                if (speaking_lead := lead._value.get()) > 0:
                    break
                await asyncio.sleep(0.02)
            # the sessions that lead is summed over (the dashboard divides by them)
            speaking_sessions = [sessions.labels("encoder", s)._value.get() for s in ("speaking", "idle")]
            queued = await live.say("And this one was still waiting.")
            await live.interrupt()
            ack = await rec.wait_event("interrupt_acknowledged")
            cut = _turn_frames(rec, tid)[-1] + 1
            await rec.wait_for(lambda r: r.kind == "media" and r.msg.media.first_frame >= cut + 25)
            # input for a stopped turn is discarded: it never plays
            await live.say("more text for the stopped turn", turn_id=tid)
            await asyncio.sleep(0.5)
            await live.close()
            await rec.finish()
        assert speaking_lead > 0 and lead._value.get() == 0, "the lead gauge: frames ahead while speaking, none after"
        assert speaking_sessions == [1, 0]
        assert [sessions.labels("encoder", s)._value.get() for s in ("speaking", "idle")] == [0, 0]
        # every turn counted by how it ended; the reply latency of the one that found the avatar idle
        registry = mesh.telemetry["gateway"].metrics.registry
        ended = {
            reason: registry.get_sample_value("talkmesh_live_turns_total", {"service": "gateway", "reason": reason})
            for reason in ("completed", "interrupted", "failed", "session_ended")
        }
        assert ended == {"completed": 0, "interrupted": 2, "failed": 0, "session_ended": 0}, ended
        start = "talkmesh_live_turn_start_seconds"
        assert registry.get_sample_value(f"{start}_count", {"service": "gateway"}) == 1  # (the queued one waited)
        started = rec.events("speaking_started")[0].at - said_at
        assert 0 < registry.get_sample_value(f"{start}_sum", {"service": "gateway"}) < started + 0.05

    ack_at = rec.messages.index(ack)
    assert not [r for r in rec.messages[ack_at:] if r.kind == "media" and r.msg.media.turn_id], (
        "no frame of a stopped turn after the acknowledgement"
    )
    assert set(ack.msg.event.interrupt_acknowledged.stopped_turn_ids) == {tid, queued}
    stops = {r.msg.event.speaking_stopped.turn_id: r.msg.event.speaking_stopped for r in rec.events("speaking_stopped")}
    assert stops[tid].reason == lpb.STOP_REASON_INTERRUPTED
    assert stops[tid].frames_played == len(_turn_frames(rec, tid))
    per_frame = stops[tid].sample_rate / 25
    assert abs(stops[tid].samples_played - stops[tid].frames_played * per_frame) <= per_frame
    assert stops[queued].frames_played == 0 and not _turn_frames(rec, queued)
    assert stops[queued].sample_rate == stops[tid].sample_rate == 22050, "the voice's rate, even unstarted"
    # cut while its TTS stream was still open (the gateway reads 3 s ahead): the voice all the same
    assert stops[tid].voice == stops[queued].voice == "espeak:en-us"
    assert len(rec.events("speaking_started")) == 1

    out = decode(rec.write(tmp_path / "live.mp4"))
    gaps = mouth_openness(out.frames)
    first = _turn_frames(rec, tid)[0]
    resting = gaps[:first]
    assert _opens(gaps[first:cut], resting), "the mouth moved until the cut"
    after = gaps[cut + 4 : cut + 25]  # after the cross-fade (3 frames) into the idle loop
    assert after.max() <= resting.max() + 0.02, "back to the resting mouth a few frames after the cut"


@pytest.mark.parametrize("rate", [16000, 44100])
async def test_audio_turns_at_the_callers_rate(tmp_path: Path, rate: int) -> None:
    pcm = _burst(rate, 1.2)
    chunk = 2 * rate // 25  # 40 ms chunks, sent in real time
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await rec.wait_for(lambda r: r.kind == "media" and r.msg.media.first_frame >= 5)
            tid = await live.say_audio(_in_real_time(pcm, chunk, 0.04), rate)
            stopped = await rec.wait_event("speaking_stopped", tid, timeout=30)
            await live.close()
            await rec.finish()
    body = stopped.msg.event.speaking_stopped
    assert body.reason == lpb.STOP_REASON_COMPLETED
    assert body.sample_rate == rate and body.samples_played == len(pcm) // 2, "all of the caller's audio played"
    assert body.frames_played == math.ceil(1.2 * 25)
    assert body.voice == "" and list(body.warnings) == []  # no TTS in an audio turn
    out = decode(rec.write(tmp_path / "live.mp4"))
    turn = _turn_frames(rec, tid)
    gaps = mouth_openness(out.frames)
    assert _opens(gaps[turn[0] : turn[-1] + 1], gaps[: turn[0]])


def _noisy_recording(rate: int) -> bytes:
    """A caller in a humming, hissing room: 0.6 s of background, 1 s of syllable-like bursts (peak
    -10 dBFS), 1 s of background, 0.6 s of bursts, 0.4 s of background; white noise at -34 dBFS and
    50 Hz hum at -29 dBFS throughout (mono s16le)."""
    t = np.arange(int(rate * 3.6)) / rate
    harmonics = sum(np.sin(2 * np.pi * k * 140 * t) / k for k in range(1, 12))
    gate = ((t >= 0.6) & (t < 1.6)) | ((t >= 2.6) & (t < 3.2))
    speech = 0.32 * harmonics / np.abs(harmonics).max() * 0.5 * (1 - np.cos(2 * np.pi * 4 * (t - 0.6))) * gate
    background = 0.02 * np.random.default_rng(0).standard_normal(len(t)) + 0.05 * np.sin(2 * np.pi * 50 * t)
    return (np.clip(speech + background, -1, 1) * 32767).astype("<i2").tobytes()


async def test_a_noisy_recording_opens_the_mouth_on_speech_only(tmp_path: Path) -> None:
    """Hiss and hum do not open the mouth in the caller's pauses (they did with the fixed -45 dBFS
    voicing threshold); the bursts do."""
    rate = 16000
    pcm = _noisy_recording(rate)
    chunk = 2 * rate // 10  # 100 ms chunks, in real time
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await rec.wait_for(lambda r: r.kind == "media" and r.msg.media.first_frame >= 5)
            tid = await live.say_audio(_in_real_time(pcm, chunk, 0.1), rate)
            await rec.wait_event("speaking_stopped", tid, timeout=30)
            await live.close()
            await rec.finish()
    out = decode(rec.write(tmp_path / "live.mp4"))
    turn = _turn_frames(rec, tid)
    gaps = mouth_openness(out.frames)
    resting = gaps[: turn[0]]
    # Pauses and bursts are found in the played sound (an underrun under load inserts a silent frame
    # and moves the rest of the turn): pauses are runs of 8+ frames of background only (hiss + hum,
    # -28 dBFS), less 3 frames at each end (the mouth's release, the AAC lead); bursts are the
    # frames well above the background.
    per = out.audio_rate // 25
    level = np.array(
        [20 * np.log10(np.sqrt(np.mean(out.audio[i * per : (i + 1) * per] ** 2)) + 1e-9) for i in range(len(gaps))]
    )
    background = (level > -34) & (level < -24)
    pauses = []
    for is_bg, run in itertools.groupby(range(turn[0], turn[-1] + 1), key=lambda i: bool(background[i])):
        frames = list(run)
        if is_bg and len(frames) >= 8:
            pauses += frames[3:-3]
    bursts = [i for i in turn if level[i] > -20]
    assert len(pauses) >= 15 and len(bursts) >= 12, (len(pauses), len(bursts))
    assert gaps[pauses].max() <= resting.max() + 0.02, ("the mouth rests in the pauses", gaps[pauses], resting.max())
    assert _opens(gaps[bursts], resting), "and opens on the bursts"


def _errors(rec: Recorder) -> list[tuple[str, int, str]]:
    return [(r.msg.error.field, r.msg.error.code, r.msg.error.turn_id) for r in rec.messages if r.kind == "error"]


INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.NOT_FOUND.value[0]


async def test_bad_turn_input_is_one_error_each_and_leaves_no_open_turn(tmp_path: Path) -> None:
    """A refused first piece starts no turn (later input for it is discarded quietly) and ends it
    with one speaking_stopped (FAILED) after its error; a piece that takes a turn's text over
    max_text_chars is refused at once and the turn plays what it had; unknown turn ids are
    NOT_FOUND for end_of_turn and interrupt alike; later turns never wait."""
    env = {"TALKMESH_GATEWAY__MAX_TEXT_CHARS": "60"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            assert live.started is not None and live.started.max_text_chars == 60  # the page's maxlength
            rec = Recorder(live).start()
            await live.audio("odd", b"\x00\x01\x02", 16000)
            await live.audio("odd", b"\x00\x00" * 160, 16000, final=True)  # discarded
            await live.audio("slow", b"\x00\x00" * 10, 4000)
            await live.audio("slow", b"\x00\x00" * 10, 4000)  # discarded
            await live.end_turn("slow")  # discarded
            await live.end_turn("nobody")
            await live.interrupt("nobody")
            await live.say("bell\x07 character", turn_id="bad")
            await live.end_turn("bad")  # discarded
            for _ in range(4):  # 52 characters
                await live.say("Hello there. ", turn_id="long", final=False)
            await live.say("And more.", turn_id="long", final=False)  # 61: over the turn's limit
            await live.say("Even more.", turn_id="long")  # discarded
            await live.say("Still here.", turn_id="good")
            long = await rec.wait_event("speaking_stopped", "long", timeout=30)
            good = await rec.wait_event("speaking_stopped", "good", timeout=30)
            await live.close()
            await rec.finish()
        registry = mesh.telemetry["gateway"].metrics.registry
        ended = {
            reason: registry.get_sample_value("talkmesh_live_turns_total", {"service": "gateway", "reason": reason})
            for reason in ("completed", "failed")
        }
        assert ended == {"completed": 2, "failed": 3}, ended  # (the refused first pieces end as failed turns)
    assert _errors(rec) == [
        ("audio.pcm", INVALID, "odd"),
        ("audio.sample_rate", INVALID, "slow"),
        ("end_of_turn.turn_id", NOT_FOUND, "nobody"),
        ("interrupt.turn_id", NOT_FOUND, "nobody"),
        ("text.text", INVALID, "bad"),
        ("text.text", INVALID, "long"),
    ]
    assert [r.msg.error.message for r in rec.messages if r.kind == "error"][-1] == (
        "text.text: the turn's text would be 61 characters, over the limit of 60"
    )
    for stopped in (long, good):
        body = stopped.msg.event.speaking_stopped
        assert body.reason == lpb.STOP_REASON_COMPLETED and body.frames_played > 15
    assert {r.msg.event.speaking_started.turn_id for r in rec.events("speaking_started")} == {"long", "good"}
    stops = [r.msg.event.speaking_stopped for r in rec.events("speaking_stopped")]
    assert sorted(s.turn_id for s in stops) == ["bad", "good", "long", "odd", "slow"], "one end per turn id"
    for tid in ("odd", "slow", "bad"):
        (body,) = [s for s in stops if s.turn_id == tid]
        assert body.reason == lpb.STOP_REASON_FAILED and body.frames_played == body.samples_played == 0
        assert body.sample_rate == 24000  # the session's
        error_at = _index(rec, lambda r, t=tid: r.kind == "error" and r.msg.error.turn_id == t)
        assert error_at < _index(rec, lambda r, t=tid: r.kind == "event" and r.msg.event.speaking_stopped.turn_id == t)


#: How a browser's MediaRecorder blob (WebM) and a phone's voice memo (M4A) begin.
WEBM_HEAD, M4A_HEAD = b"\x1aE\xdf\xa3\x9fB\x86\x81", b"\x00\x00\x00\x1cftypM4A "


async def test_a_recording_files_bytes_sent_as_pcm_are_refused_not_played_as_noise(tmp_path: Path) -> None:
    """An app that sends its recording's file (its header, then compressed audio) as the turn's
    PCM gets an error naming the format, at the turn's first bytes, whatever came before them (an
    `audio` message naming the turn, as the web socket sends), and no sound of it is played: the
    turn ends FAILED either way (a turn refused before any of its input came has nothing to play),
    its error ahead of its end."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await live.audio("webm", b"", 48000)  # the turn named, its bytes follow
            await live.audio("webm", WEBM_HEAD + bytes(9592), 48000)
            await live.audio("webm", bytes(9600), 48000, final=True)  # discarded
            await live.audio("m4a", M4A_HEAD + bytes(3188), 16000, final=True)
            await live.audio("pcm", b"\x00\x00" * 1600, 16000, final=True)  # later turns play
            await rec.wait_event("speaking_stopped", "pcm", timeout=30)
            await live.close()
            await rec.finish()
    assert _errors(rec) == [("audio.pcm", INVALID, "webm"), ("audio.pcm", INVALID, "m4a")]
    messages = [r.msg.error.message for r in rec.messages if r.kind == "error"]
    assert messages[0].startswith("audio.pcm: these bytes are a WebM file, not raw PCM:"), messages
    assert messages[1].startswith("audio.pcm: these bytes are an MP4 (M4A) file, not raw PCM:"), messages
    stops = {s.turn_id: s for s in (r.msg.event.speaking_stopped for r in rec.events("speaking_stopped"))}
    assert stops["m4a"].reason == lpb.STOP_REASON_FAILED  # refused at its first message: no turn began
    assert stops["webm"].reason == lpb.STOP_REASON_FAILED  # refused at its first bytes, after the turn began
    for tid in ("webm", "m4a"):
        error_at = _index(rec, lambda r, t=tid: r.kind == "error" and r.msg.error.turn_id == t)
        assert error_at < _index(rec, lambda r, t=tid: r.kind == "event" and r.msg.event.speaking_stopped.turn_id == t)
    assert stops["webm"].samples_played == stops["m4a"].samples_played == 0  # nothing of them played
    assert stops["pcm"].reason == lpb.STOP_REASON_COMPLETED and stops["pcm"].samples_played == 1600


async def test_a_turn_whose_input_goes_quiet_is_ended_and_the_next_one_plays(tmp_path: Path) -> None:
    env = {"TALKMESH_GATEWAY__LIVE__TURN_INPUT_TIMEOUT_SECONDS": "1"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live(idle_timeout=3.0) as live:
            rec = Recorder(live).start()
            await live.say("Hello there.", turn_id="open", final=False)  # its stream dies here
            await live.say("Next one.", turn_id="next")
            opened = await rec.wait_event("speaking_stopped", "open", timeout=30)
            await rec.wait_event("speaking_stopped", "next", timeout=30)
            await live.say("too late", turn_id="open")  # discarded
            await rec.finish(timeout=15)  # the idle timeout ends the session: nothing holds it
    assert opened.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED
    assert opened.msg.event.speaking_stopped.frames_played > 10
    assert _errors(rec) == [("", grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "open")]
    assert rec.events("session_ending")[-1].msg.event.session_ending.reason == lpb.END_REASON_IDLE_TIMEOUT


async def test_messages_before_the_config_are_refused(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path) as mesh, create_channel(mesh.gateway) as channel:
        stub = live_pb2_grpc.LiveStub(channel)
        call = stub.Session(iter([lpb.LiveClientMessage(text=lpb.SpeakText(turn_id="t", text="hi"))]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in call:
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "config: must be the first message of the stream"
    assert ErrorDetails.of(err.value).field == "config"


async def test_idle_timeout_warns_then_ends_and_keep_alive_holds_it(tmp_path: Path) -> None:
    env = {"TALKMESH_GATEWAY__LIVE__ENDING_WARNING_SECONDS": "0.5"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live(idle_timeout=3.0) as live:
            rec = Recorder(live).start()
            for _ in range(16):  # 4 s of keep-alives: longer than the timeout
                await asyncio.sleep(0.25)
                await live.keep_alive()
            assert not rec.events("session_ending")
            await rec.finish(timeout=10)
    endings = [r.msg.event.session_ending for r in rec.events("session_ending")]
    assert [e.reason for e in endings] == [lpb.END_REASON_IDLE_TIMEOUT, lpb.END_REASON_IDLE_TIMEOUT]
    assert 0 < endings[0].seconds_left <= 0.5 and endings[1].seconds_left == 0


async def test_short_limits_start_first_and_a_short_session_still_speaks(tmp_path: Path) -> None:
    """Limits under ending_warning_seconds (10 s): `started` is still the first message, the warning
    comes a quarter of the limit before the end, and a 3 s session speaks a short turn."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live(idle_timeout=2.0) as live:
            assert live.started is not None and live.started.session_id
            rec = Recorder(live).start()
            await rec.finish(timeout=10)
        assert rec.messages[0].kind == "started"
        endings = [r.msg.event.session_ending for r in rec.events("session_ending")]
        assert endings[0].reason == lpb.END_REASON_IDLE_TIMEOUT and 0 < endings[0].seconds_left <= 0.5

        async with client.live(max_seconds=3.0) as live:
            assert live.started is not None
            rec = Recorder(live).start()
            tid = await live.say("Hi.")
            cut = await live.say(" ".join([TEXT] * 3))  # longer than the session
            stopped = await rec.wait_event("speaking_stopped", tid, timeout=10)
            await rec.finish(timeout=10)
        assert stopped.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED
        assert not [r for r in rec.messages if r.kind == "error"]
        # the end of the session is not an interrupt
        assert rec.events("speaking_stopped")[-1].msg.event.speaking_stopped.turn_id == cut
        assert rec.events("speaking_stopped")[-1].msg.event.speaking_stopped.reason == lpb.STOP_REASON_SESSION_ENDED
        assert not rec.events("interrupt_acknowledged")
        ending_events = [r.msg.event for r in rec.events("session_ending")]
        endings = [e.session_ending for e in ending_events]
        assert [e.reason for e in endings] == [lpb.END_REASON_MAX_LENGTH] * 2
        assert 0 < endings[0].seconds_left <= 0.75 and endings[1].seconds_left == 0
        assert 0 < ending_events[0].frame < ending_events[1].frame <= rec.media()[-1].first_frame + 1


async def test_a_failed_turn_is_one_error_with_its_code(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:  # voice settings are checked at the start
            async with client.live(rate=50.0):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "config.voice_settings.rate: 50 is outside 0.25..4 (0 = default)"
        assert mesh.active_streams()["encoder"] == 0
        async with client.live() as live:
            rec = Recorder(live).start()
            blank = await live.say("  \n ")  # no words at all: a silent turn, not a failure
            quiet = await rec.wait_event("speaking_stopped", blank, timeout=20)
            # nothing to say (TTS refuses it as a request's text): silent too
            dots = await live.say("。。。\uff01\uff1f\u200b ...")
            quiet_dots = await rec.wait_event("speaking_stopped", dots, timeout=20)
            await mesh.hosts["tts"].stop(0.5)  # TTS goes away: the next text turn fails
            tid = await live.say("Hello.")
            stopped = await rec.wait_event("speaking_stopped", tid, timeout=20)
            await asyncio.sleep(0.5)  # a second error would follow the stop at once
            errors = [r.msg.error for r in rec.messages if r.kind == "error"]
    assert quiet.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED
    assert quiet.msg.event.speaking_stopped.samples_played == 0
    assert quiet_dots.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED
    assert quiet_dots.msg.event.speaking_stopped.samples_played == 0
    assert stopped.msg.event.speaking_stopped.reason == lpb.STOP_REASON_FAILED
    assert [(e.code, e.turn_id) for e in errors] == [(grpc.StatusCode.UNAVAILABLE.value[0], tid)]
    assert errors[0].message.startswith("tts: ") and "127.0.0.1" not in errors[0].message  # scrubbed


async def test_a_feature_stage_failing_mid_turn_fails_that_turn_and_the_next_one_plays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feature stage's stream breaking in the middle of a turn (here: UNAVAILABLE after 20
    answers) fails that turn as a TTS failure does (one LiveError naming the stage, with its code,
    then a FAILED speaking_stopped), and the session goes on: the next turn plays. Before, the
    turn's audio waited for a feature stream nobody read, and the session froze."""
    from services.audio_features.server import AudioFeaturesServicer
    from talkmesh.common.errors import Unavailable

    extract = AudioFeaturesServicer.Extract
    calls = 0

    async def failing(self: AudioFeaturesServicer, requests: Any, context: Any) -> AsyncIterator[fpb.FeatureChunk]:
        nonlocal calls
        calls += 1
        first, answers = calls == 1, 0
        async for chunk in extract(self, requests, context):
            yield chunk
            answers += 1
            if first and answers == 20:
                raise Unavailable("the feature backend went away")

    monkeypatch.setattr(AudioFeaturesServicer, "Extract", failing)
    rate = 16000
    pcm = _burst(rate, 8.0)
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            pieces = [pcm[i : i + 640] for i in range(0, len(pcm), 640)]  # 20 ms each
            sender = asyncio.create_task(live.say_audio(pieces, rate, turn_id="mic"))
            try:
                stopped = await rec.wait_event("speaking_stopped", "mic", timeout=30)
                async with asyncio.timeout(30):  # (a hang guard) the rest of its input is discarded
                    await sender
            finally:
                await cancel_and_wait(sender)
            after = await live.say("Hello again.")
            completed = await rec.wait_event("speaking_stopped", after, timeout=30)
            errors = [r.msg.error for r in rec.messages if r.kind == "error"]
    assert stopped.msg.event.speaking_stopped.reason == lpb.STOP_REASON_FAILED
    assert [(e.code, e.turn_id) for e in errors] == [(grpc.StatusCode.UNAVAILABLE.value[0], "mic")]
    assert errors[0].message.startswith("audio_features: ")
    assert completed.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED
    assert completed.msg.event.speaking_stopped.frames_played > 0


async def test_an_unknown_voice_is_refused_at_the_start_and_spellings_of_a_listed_one_speak(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with client.live(voice="espeak:nope") as live:
                await live.say("Hello.")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert err.value.details() == "config.voice: voice 'espeak:nope' not found"
        assert mesh.active_streams()["encoder"] == 0  # no encoder session was opened for it
        async with client.live(voice="espeak:EN_US") as live:  # as a request's voice accepts it
            rec = Recorder(live).start()
            tid = await live.say("Hello.")
            stopped = await rec.wait_event("speaking_stopped", tid, timeout=20)
        assert stopped.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED
        assert not [r for r in rec.messages if r.kind == "error"]
        listed = await client.list_voices(voice="espeak:EN_US")
        assert [v.id for v in listed] == ["espeak:en-us"]
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.list_voices(voice="espeak:nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and err.value.details().startswith("tts: voice:")


def test_in_band_errors_are_scrubbed_at_the_gateway() -> None:
    from services.gateway.live import _scrubbed

    leak = "tts: failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:47301: Socket closed"
    msg = _scrubbed(lpb.LiveServerMessage(error=lpb.LiveError(code=14, message=leak, turn_id="t")))
    assert "127.0.0.1" not in msg.error.message and "<address>" in msg.error.message
    msg = _scrubbed(lpb.LiveServerMessage(error=lpb.LiveError(code=13, message=leak, turn_id="t")))
    assert msg.error.message == "tts: internal error (see the server's logs)" and msg.error.turn_id == "t"


async def test_a_client_that_hangs_up_frees_every_stage(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        live = client.live()
        await live.__aenter__()
        rec = Recorder(live).start()
        tid = await live.say(TEXT)
        await live.say("And one queued behind it.")
        await rec.wait_event("speaking_started", tid)
        await live.__aexit__(None, None, None)  # cancels the call
        with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
            await rec.finish()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while loop.time() < deadline and any(mesh.active_streams().values()):
            await asyncio.sleep(0.02)
        assert mesh.active_streams() == dict.fromkeys(mesh.telemetry, 0.0)
        # the turns it left are counted too (most browser sessions end so: the tab goes)
        registry = mesh.telemetry["gateway"].metrics.registry
        labels = {"service": "gateway", "reason": "session_ended"}
        assert registry.get_sample_value("talkmesh_live_turns_total", labels) == 2


async def test_an_encoder_lost_mid_turn_ends_every_open_turn_and_the_session_as_failed(tmp_path: Path) -> None:
    """The encoder goes away while a turn speaks and another waits: the session cannot go on, but
    every turn id still ends with one speaking_stopped (FAILED), after a last session_ending
    (END_REASON_FAILED, 0 s left), before the call's status names the stage: a client waiting for
    each turn's end is not left hanging."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        live = client.live()
        await live.__aenter__()
        try:
            rec = Recorder(live).start()
            speaking = await live.say(TEXT)
            queued = await live.say("And one queued behind it.")
            await rec.wait_event("speaking_started", speaking)
            await mesh.hosts["encoder"].stop(0)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await rec.finish()
        finally:
            await live.__aexit__(None, None, None)
        registry = mesh.telemetry["gateway"].metrics.registry
        failed = registry.get_sample_value("talkmesh_live_turns_total", {"service": "gateway", "reason": "failed"})
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details().startswith("encoder: ")
    ends = [r for r in rec.messages if r.event in ("session_ending", "speaking_stopped")]
    last = ends[-3:]
    assert last[0].event == "session_ending"
    assert last[0].msg.event.session_ending.reason == lpb.END_REASON_FAILED
    assert last[0].msg.event.session_ending.seconds_left == 0
    stops = {r.msg.event.speaking_stopped.turn_id: r.msg.event.speaking_stopped for r in last[1:]}
    assert set(stops) == {speaking, queued}
    assert [r.msg.event.speaking_stopped.turn_id for r in rec.events("speaking_stopped")].count(speaking) == 1
    assert all(s.reason == lpb.STOP_REASON_FAILED for s in stops.values())
    assert stops[speaking].frames_played > 0 and stops[queued].frames_played == 0
    heard = MediaClock.of(25, stops[speaking].sample_rate).start(stops[speaking].frames_played)
    assert 0 < stops[speaking].samples_played <= heard
    assert stops[queued].samples_played == 0
    assert failed == 2


async def test_a_clients_own_mistake_that_ends_the_session_is_not_told_as_a_stage_failure(tmp_path: Path) -> None:
    """A second config ends the call with INVALID_ARGUMENT naming it; no END_REASON_FAILED (that
    says a stage failed), and the turn it cut is counted as left with the session."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            tid = await live.say(TEXT)
            await rec.wait_event("speaking_started", tid)
            await live._send(lpb.LiveClientMessage(config=lpb.LiveConfig()))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await rec.finish()
        registry = mesh.telemetry["gateway"].metrics.registry
        failed = registry.get_sample_value("talkmesh_live_turns_total", {"service": "gateway", "reason": "failed"})
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not rec.events("session_ending") and not rec.events("speaking_stopped")
    assert not failed


async def test_turns_dropped_while_the_turn_ahead_waits_for_its_text_never_hold_an_interrupt_back(
    tmp_path: Path,
) -> None:
    """An LLM's turn waits for its first token (a long tool call) while the client queues and
    interrupts other turns, more of them than max_pending_turns: each is stopped at once. (They
    used to stay in a queue of that size until the turn ahead ran, and the next one blocked the
    session's reader: interrupts went unread until the turn input timeout.)"""
    env = {"TALKMESH_GATEWAY__LIVE__MAX_PENDING_TURNS": "3"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await live.say("", turn_id="head", final=False)  # the model has not written a word yet
            for i in range(6):
                await live.say("Hmm, let me think.", turn_id=f"filler-{i}")
                await live.interrupt(f"filler-{i}")
                stopped = await rec.wait_event("speaking_stopped", f"filler-{i}", timeout=10)
                assert stopped.msg.event.speaking_stopped.reason == lpb.STOP_REASON_INTERRUPTED
            await live.interrupt("head")
            head = await rec.wait_event("speaking_stopped", "head", timeout=10)
            await live.close()
            await rec.finish()
    assert head.msg.event.speaking_stopped.reason == lpb.STOP_REASON_INTERRUPTED
    assert not [r.msg.error for r in rec.messages if r.kind == "error"]


async def test_a_turns_start_is_timed_from_its_first_words_not_the_models_first_token_delay(tmp_path: Path) -> None:
    """say_stream opens the turn before the model's first token: the turn start histogram counts
    from the first text, so an LLM's thinking time is not the avatar's reply latency."""

    async def slow_model() -> AsyncIterator[str]:
        await asyncio.sleep(1.5)
        yield "Hello there."

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            opened = time.monotonic()
            tid = await live.say_stream(slow_model())
            started = (await rec.wait_event("speaking_started", tid)).at
            await live.close()
            await rec.finish()
        registry = mesh.telemetry["gateway"].metrics.registry
        name = "talkmesh_live_turn_start_seconds"
        assert registry.get_sample_value(f"{name}_count", {"service": "gateway"}) == 1
        measured = registry.get_sample_value(f"{name}_sum", {"service": "gateway"})
        assert started - opened > 1.5 and 0 < measured < started - opened - 1.4, (measured, started - opened)


async def test_session_limit_is_resource_exhausted_and_health_stays_serving(tmp_path: Path) -> None:
    env = {"TALKMESH_GATEWAY__LIVE__MAX_SESSIONS": "1"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as first:
            rec = Recorder(first).start()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async with client.live():
                    pass
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert ErrorDetails.of(err.value).retry_delay is not None
            health = health_pb2_grpc.HealthStub(client.channel)
            assert (
                await health.Check(health_pb2.HealthCheckRequest())
            ).status == health_pb2.HealthCheckResponse.SERVING
            await first.close()
            await rec.finish()


async def test_watch_through_another_gateway_replica(tmp_path: Path) -> None:
    env = {"TALKMESH_GATEWAY__LIVE__SESSION_SECRET": "shared-by-the-replicas"}
    async with inprocess_mesh(tmp_path, env=env) as mesh:
        gw_env = dict(env)
        for name in ("tts", "audio_features", "renderer", "encoder"):
            gw_env[f"TALKMESH_GATEWAY__{name.upper()}__TARGET"] = mesh.hosts[name].address
        second = ServiceHost(
            create_gateway(load_gateway_config(None, env=gw_env), Telemetry("gateway")),
            ServerConfig(port=0, metrics_port=-1, grace_seconds=1.0),
        )
        await second.start()
        try:
            async with TalkmeshClient(mesh.gateway) as a, TalkmeshClient(second.address) as b:
                async with a.live() as live:
                    rec = Recorder(live).start()
                    session_id = live.session_id
                    watched = []
                    owner = mesh.hosts["gateway"].service.live.sessions[session_id]
                    async with b.watch(session_id) as watch:  # (as the README's client.live)
                        async for msg in watch:
                            watched.append(msg)
                            if len([m for m in watched if m.WhichOneof("kind") == "media"]) >= 3:
                                break
                        assert len(owner.watchers) == 1
                    # the viewer left: the forwarding replica stops its Watch at once
                    for _ in range(100):
                        if not owner.watchers:
                            break
                        await asyncio.sleep(0.02)
                    assert not owner.watchers, "the owning replica still feeds a viewer that left"
                    await live.close()
                    await rec.finish()
        finally:
            await second.stop(1.0)
    kinds = [m.WhichOneof("kind") for m in watched]
    assert kinds[0] == "started" and watched[0].started.session_id == session_id
    assert watched[1].media.init_segment
    assert watched[2].media.keyframe, "a viewer joins at a keyframe"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with TalkmeshClient(mesh.gateway) as b:
            async for _ in b.watch("forged." + session_id.split(".", 1)[1]):
                pass
    assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE)


async def test_draining_ends_sessions_with_a_final_event(tmp_path: Path) -> None:
    env = {"TALKMESH_GATEWAY__LIVE__DRAIN_SECONDS": "0.5"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            tid = await live.say(" ".join([TEXT] * 2))
            await rec.wait_event("speaking_started", tid)
            stop = asyncio.create_task(mesh.hosts["gateway"].stop(5.0))
            await rec.wait_event("session_ending")
            await live.say("Too late.", turn_id="late")
            await rec.finish(timeout=10)
            await stop
    endings = [r.msg.event.session_ending for r in rec.events("session_ending")]
    assert [(e.reason, e.seconds_left) for e in endings] == [
        (lpb.END_REASON_DRAINING, 0.5),
        (lpb.END_REASON_DRAINING, 0),
    ]
    errors = [r.msg.error for r in rec.messages if r.kind == "error"]
    assert [(e.code, e.field, e.turn_id) for e in errors] == [
        (grpc.StatusCode.FAILED_PRECONDITION.value[0], "", "late")
    ]
    # every turn id ends with one speaking_stopped: the refused one too (it had none)
    stopped = [r.msg.event.speaking_stopped for r in rec.events("speaking_stopped")]
    stops = {e.turn_id: e.reason for e in stopped}
    assert stops == {tid: lpb.STOP_REASON_SESSION_ENDED, "late": lpb.STOP_REASON_FAILED}
    assert len(rec.events("speaking_stopped")) == 2
    assert not rec.events("interrupt_acknowledged")


async def test_draining_ends_an_idle_session_at_once_without_promising_seconds(tmp_path: Path) -> None:
    """An idle session was told "10 s left" and closed in the same millisecond."""
    env = {"TALKMESH_GATEWAY__LIVE__DRAIN_SECONDS": "5"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await rec.wait_for(lambda r: r.kind == "started", timeout=30)
            await mesh.hosts["gateway"].stop(10.0)
            await rec.finish(timeout=10)
    endings = [r.msg.event.session_ending for r in rec.events("session_ending")]
    assert [(e.reason, e.seconds_left) for e in endings] == [(lpb.END_REASON_DRAINING, 0)]


async def test_the_live_command_speaks_typed_lines_and_writes_the_stream(tmp_path: Path) -> None:
    import sys

    out = tmp_path / "live.mp4"
    async with inprocess_mesh(tmp_path) as mesh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "talkmesh.cli", "live", "--target", mesh.gateway, "-o", str(out),
            stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stderr is not None
        lines: list[str] = []

        async def read_until(word: str) -> None:
            while word not in (line := (await proc.stderr.readline()).decode()):  # type: ignore[union-attr]
                assert line, f"talkmesh live ended before {word!r}: {lines}"
                lines.append(line)
            lines.append(line)

        try:
            await asyncio.wait_for(read_until("type a line"), 30)
            proc.stdin.write(b"Hello from the command line.\n")
            await proc.stdin.drain()
            await asyncio.wait_for(read_until("stopped"), 30)
            proc.stdin.close()  # Ctrl-D: the session ends
            await asyncio.wait_for(read_until("wrote"), 30)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = "".join(lines)
    assert "speaking  turn-1" in text and "stopped   turn-1 (completed" in text
    decoded = decode(out)
    assert len(decoded.frames) > 25 and decoded.audio_seconds > 1.0


async def test_the_live_command_plays_a_script_longer_than_the_turns_a_session_may_queue(tmp_path: Path) -> None:
    """Five lines piped in, a session that takes two turns at a time: every line plays, in order,
    none refused (lines past the limit wait for a turn to end: SessionStarted.max_pending_turns);
    with an interrupt after the third, the two lines after it play, none refused."""
    import sys

    env = {"TALKMESH_GATEWAY__LIVE__MAX_PENDING_TURNS": "2"}
    lines = [f"Line {word}.\n" for word in ("one", "two", "three", "four", "five")]
    # the same with an interrupt (an empty line) after the third: the lines after it wait for the
    # interrupted turns' ends too (the gateway counts them until then)
    for n, script in enumerate(("".join(lines), "".join(lines[:3]) + "\n" + "".join(lines[3:]))):
        async with inprocess_mesh(tmp_path, env=env) as mesh:
            out = str(tmp_path / f"{n}.mp4")
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "talkmesh.cli", "live", "--target", mesh.gateway, "-o", out,
                stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                _, err = await asyncio.wait_for(proc.communicate(script.encode()), 60)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
        text = err.decode()
        assert proc.returncode == 0, text
        assert " error " not in text and "RESOURCE_EXHAUSTED" not in text, text
        stopped = [line.split()[2] for line in text.splitlines() if " stopped " in line]
        if n == 0:
            assert stopped == [f"turn-{i}" for i in range(1, 6)], text
            assert text.count("(completed") == 5, text
        else:  # (lines read before the interrupt and not sent yet are dropped with it)
            assert stopped == [f"turn-{i}" for i in range(1, len(stopped) + 1)], text
            assert text.count("(completed") == 2 and "Line four." in text and "Line five." in text, text
            dropped = [line for line in text.splitlines() if " dropped " in line]
            assert len(dropped) <= 1 and all(line.endswith("line(s) not sent yet") for line in dropped), text


def test_the_turn_input_timeout_is_validated() -> None:
    from services.gateway.config import LiveSettings
    from talkmesh.common.config import ConfigError

    LiveSettings(turn_input_timeout_seconds=0.5).validate()
    for bad in (0.0, -1.0, float("nan"), 86401.0):
        with pytest.raises(ConfigError, match=r"^turn_input_timeout_seconds: must be within 0\.\.86400 "):
            LiveSettings(turn_input_timeout_seconds=bad).validate()


def test_a_session_config_s_times_take_at_most_a_day_as_the_gateway_s_own() -> None:
    """config.idle_timeout_seconds and max_session_seconds: 0..MAX_SETTING_SECONDS, like the
    gateway's own time settings, and the refusal says the bound it enforces."""
    from services.gateway.config import MAX_SETTING_SECONDS, GatewayConfig
    from services.gateway.live import _validate_config
    from talkmesh.common.config import ConfigError
    from talkmesh.common.errors import InvalidArgument

    config = GatewayConfig()
    for name in ("idle_timeout_seconds", "max_session_seconds"):
        _validate_config(lpb.LiveConfig(**{name: MAX_SETTING_SECONDS}), config)
        with pytest.raises(InvalidArgument) as err:
            _validate_config(lpb.LiveConfig(**{name: MAX_SETTING_SECONDS + 1}), config)
        assert (err.value.field, err.value.reason) == (
            f"config.{name}",
            f"{MAX_SETTING_SECONDS + 1} is outside 0..{MAX_SETTING_SECONDS} (0 = server default)",
        )
    with pytest.raises(ConfigError, match=rf"^max_audio_seconds: must be within 0\.\.{MAX_SETTING_SECONDS} "):
        GatewayConfig(max_audio_seconds=MAX_SETTING_SECONDS + 1).validate()


async def test_a_turn_refused_for_want_of_room_may_be_sent_again(tmp_path: Path) -> None:
    """The 33rd waiting turn is RESOURCE_EXHAUSTED; once there is room, the same id plays."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            for i in range(32):
                await live.say("A long sentence that keeps the avatar busy for a while.", turn_id=f"t{i}")
            await live.say("One too many.", turn_id="extra")
            refused = await rec.wait_for(lambda r: r.kind == "error" and r.msg.error.turn_id == "extra")
            await live.interrupt()  # room again
            await rec.wait_event("interrupt_acknowledged")
            await live.say("One too many.", turn_id="extra")
            played = await rec.wait_event("speaking_stopped", "extra", timeout=30)
            await live.close()
            await rec.finish()
    assert refused.msg.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert played.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED


async def test_a_say_stream_refused_for_want_of_room_does_not_end_the_turn_it_never_started(tmp_path: Path) -> None:
    """say_stream's turn finds no room: its first (empty) piece is refused, the model's stream is
    closed and say_stream returns without ending the turn, which never started (its EndOfTurn
    used to be a second error, NOT_FOUND)."""
    env = {"TALKMESH_GATEWAY__LIVE__MAX_PENDING_TURNS": "1"}
    closed = asyncio.Event()

    async def model() -> AsyncIterator[str]:
        try:
            await asyncio.sleep(0.5)  # the first token's delay: the refusal comes first
            yield "Too late."
        finally:
            closed.set()

    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await live.say("", turn_id="head", final=False)  # the one turn there is room for
            async with asyncio.timeout(10):
                assert await live.say_stream(model(), turn_id="c") == "c"
            assert closed.is_set()
            await asyncio.sleep(0.3)  # a second error would follow at once
            await live.interrupt("head")
            await rec.wait_event("speaking_stopped", "head")
            await live.close()
            await rec.finish()
    errors = [r.msg.error for r in rec.messages if r.kind == "error"]
    assert [(e.code, e.field) for e in errors] == [(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "text.turn_id")]
    assert "c" not in [r.msg.event.speaking_stopped.turn_id for r in rec.events("speaking_stopped")]


async def test_the_rest_of_a_turn_refused_for_room_never_starts_it_even_once_there_is_room(tmp_path: Path) -> None:
    """A turn refused for want of room while its client goes on sending (an LLM stream not told
    yet): the rest of its input is discarded quietly even after room frees (it would start in
    mid-reply and wait for an end that never comes), until its EndOfTurn; then the id is free."""
    env = {"TALKMESH_GATEWAY__LIVE__MAX_PENDING_TURNS": "1"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await live.say("", turn_id="head", final=False)
            await live.say("", turn_id="c", final=False)  # refused: no room
            await rec.wait_for(lambda r: r.kind == "error" and r.msg.error.turn_id == "c")
            await live.interrupt("head")
            await rec.wait_event("speaking_stopped", "head")  # room now
            await live.say("and the rest of the reply", turn_id="c", final=False)  # discarded
            await live.end_turn("c")  # frees the id
            await live.say("Hello again.", turn_id="c")
            again = await rec.wait_event("speaking_stopped", "c", timeout=30)
            await live.close()
            await rec.finish()
    errors = [r.msg.error for r in rec.messages if r.kind == "error"]
    assert [(e.code, e.turn_id) for e in errors] == [(grpc.StatusCode.RESOURCE_EXHAUSTED.value[0], "c")]
    assert [r.msg.event.speaking_started.turn_id for r in rec.events("speaking_started")] == ["c"]
    assert again.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED
    assert len(rec.events("caption")) == 1 and rec.events("caption")[0].msg.event.caption.text == "Hello again."


async def test_stage_errors_name_the_live_configs_fields(tmp_path: Path) -> None:
    """A stage's `config.backend` (the renderer's) is the LiveConfig's `config.renderer_backend`."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with client.live(backend="wav2lip") as live:  # known, but this renderer has not loaded it
                await live.say("Hello.")
                await asyncio.sleep(5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
        assert ErrorDetails.of(err.value).field == "config.renderer_backend"
        assert err.value.details().startswith("renderer: config.renderer_backend: "), err.value.details()


async def test_a_still_session_idles_without_motion_and_an_unknown_idle_motion_is_refused(tmp_path: Path) -> None:
    """LiveConfig.idle_motion OFF reaches the renderer through the gateway and the encoder (whose
    idle loop is the still avatar's own): ~1.5 s of idling decodes to one picture, while by default
    the head and shoulders sway. Near-lossless H.264 (crf 10) here, so that what the codec leaves of
    a picture that does not change is a few levels, not the moving edges of motion."""
    env = {"TALKMESH_ENCODER__VIDEO__X264__CRF": "10"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        decoded = {}
        for idle_motion in (api.IDLE_MOTION_OFF, api.IDLE_MOTION_UNSPECIFIED):
            async with client.live(idle_motion=idle_motion) as live:
                rec = Recorder(live).start()
                await rec.wait_for(lambda r: r.kind == "media" and r.msg.media.first_frame >= 36)
                await live.close()
                await rec.finish()
            decoded[idle_motion] = decode(rec.write(tmp_path / f"idle-{idle_motion}.mp4")).frames

        with pytest.raises(grpc.aio.AioRpcError) as err:
            async with client.live(idle_motion=9) as live:
                await live.say("Hello.")
                await asyncio.sleep(5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    assert ErrorDetails.of(err.value).field == "config.idle_motion"

    def moved(frames: list[np.ndarray]) -> list[int]:
        """Each frame's largest difference from the first, in levels."""
        return [int(np.abs(f.astype(np.int16) - frames[0]).max()) for f in frames]

    still, default = decoded[api.IDLE_MOTION_OFF], decoded[api.IDLE_MOTION_UNSPECIFIED]
    assert len(still) >= 36 and len(default) >= 36
    assert max(moved(still)) <= 12, moved(still)
    assert max(moved(default)) > 60, moved(default)


async def test_pending_turns_are_the_configs_and_the_next_one_is_refused_naming_it(tmp_path: Path) -> None:
    """live.max_pending_turns (here 2, through the environment, as every key): the third turn
    waiting is RESOURCE_EXHAUSTED naming its field and the key; the two before it play."""
    env = {"TALKMESH_GATEWAY__LIVE__MAX_PENDING_TURNS": "2"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            for tid in ("t0", "t1", "t2"):
                await live.say("A long sentence that keeps the avatar busy for a while.", turn_id=tid)
            refused = await rec.wait_for(lambda r: r.kind == "error" and r.msg.error.turn_id == "t2")
            played = await rec.wait_event("speaking_stopped", "t1", timeout=60)
            await live.close()
            await rec.finish()
    err = refused.msg.error
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert err.field == "text.turn_id" and err.message.startswith("text.turn_id: ")
    assert "live.max_pending_turns" in err.message
    assert played.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED
    assert [r.msg.error.turn_id for r in rec.messages if r.kind == "error"] == ["t2"]


@pytest.mark.parametrize(
    ("key", "bad"),
    [
        ("MAX_PENDING_TURNS", "0"),
        ("MAX_PENDING_TURNS", "100000"),
        ("TURN_TEXT_PIECES", "0"),
        ("TURN_AUDIO_CHUNKS", "-1"),
    ],
)
def test_live_queue_sizes_are_checked_at_start_naming_the_key(key: str, bad: str) -> None:
    from talkmesh.common.config import ConfigError

    with pytest.raises(ConfigError, match=rf"^live\.{key.lower()}: must be within 1\.\."):
        load_gateway_config(None, env={f"TALKMESH_GATEWAY__LIVE__{key}": bad})
    assert load_gateway_config(None, env={f"TALKMESH_GATEWAY__LIVE__{key}": "3"}).live.__dict__[key.lower()] == 3


def _speaker(rate: int, seconds: float, seed: int) -> bytes:
    """A voiced speaker from the first sample on (a syllable's peak at t=0) over a -50 dBFS room."""
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * np.cumsum(120.0 + 20.0 * np.sin(2 * np.pi * 0.7 * t)) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.55 + 0.45 * np.cos(2 * np.pi * 4.0 * t))
    x = 0.2 * voice / np.abs(voice).max() + np.random.default_rng(seed).standard_normal(len(t)) * 10 ** (-50 / 20)
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


async def test_a_sessions_second_turn_is_voiced_from_its_first_speech_frame(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feature stage's noise floor and speech peak carry from one turn to the next of a session
    (FeatureConfig.activity_state): the second turn's first frames are voiced; the first turn's,
    which start from nothing, are not (their own level is the floor)."""
    from services.gateway.downstream import GrpcDownstreams

    streams: list[tuple[fpb.FeatureConfig, list[bool]]] = []
    extract = GrpcDownstreams.extract

    class Recording(Stream):
        def __init__(self, inner: Stream, voiced: list[bool]) -> None:
            self.inner = inner
            self.voiced = voiced

        async def __aiter__(self) -> AsyncIterator[fpb.FeatureChunk]:  # type: ignore[override]
            async for fc in self.inner:
                self.voiced.extend(f.activity.voiced for f in fc.frames)
                yield fc

        async def admitted(self) -> None:
            await self.inner.admitted()

        async def cancel(self) -> None:
            await self.inner.cancel()

    def recording(self: GrpcDownstreams, requests: Any, timeout: float | None) -> Stream:
        voiced: list[bool] = []

        async def tee() -> AsyncIterator[fpb.FeatureRequest]:
            async for req in requests:
                if req.WhichOneof("kind") == "config":
                    streams.append((req.config, voiced))
                yield req

        return Recording(extract(self, tee(), timeout), voiced)

    monkeypatch.setattr(GrpcDownstreams, "extract", recording)
    rate = 24000
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            first = await live.say_audio(_speaker(rate, 1.5, 1), rate)
            await rec.wait_event("speaking_stopped", first, timeout=30)
            second = await live.say_audio(_speaker(rate, 1.0, 2), rate)
            await rec.wait_event("speaking_stopped", second, timeout=30)
            await live.close()
            await rec.finish()
    assert len(streams) == 2
    (config1, voiced1), (config2, voiced2) = streams
    assert not config1.HasField("activity_state") and config2.HasField("activity_state")
    window = 50  # audio_features.activity.floor_window_seconds (2 s) at 25 fps: the state's bound
    assert 0 < len(config2.activity_state.levels) <= window
    assert voiced2[:5] == [True] * 5, voiced2[:10]
    assert not voiced1[0], voiced1[:10]


async def test_a_text_turn_stopped_before_tts_answered_counts_in_the_default_voices_rate(tmp_path: Path) -> None:
    """No `voice`: the session still knows its voice's rate from the start (ListVoices marks the
    default), so a text turn stopped before TTS ever answered reports samples in 22050 Hz (eSpeak
    NG), not in the session's 24000 Hz."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            tid = await live.say("   ", final=False)  # no words yet: TTS is not even asked
            await live.interrupt(tid)
            stopped = await rec.wait_event("speaking_stopped", tid, timeout=20)
            await live.close()
            await rec.finish()
    body = stopped.msg.event.speaking_stopped
    assert body.reason == lpb.STOP_REASON_INTERRUPTED and body.samples_played == 0
    assert body.sample_rate == 22050 and body.voice == "espeak:en-us", body


async def test_a_turn_speaks_in_its_own_voice_and_an_unknown_one_refuses_only_that_turn(tmp_path: Path) -> None:
    """A tutor switches language turn by turn (SpeakText.voice): the turn is spoken exactly as a
    session in that voice speaks it, the next turn is back in the session's voice, and an unknown
    voice refuses its turn only (NOT_FOUND naming text.voice), with the session going on."""
    french = "Bonjour, nous allons apprendre les couleurs aujourd'hui."

    async def stopped(live: Any, rec: Recorder, text: str, voice: str = "") -> Any:
        tid = await live.say(text, voice=voice)
        return (await rec.wait_event("speaking_stopped", tid, timeout=30)).msg.event.speaking_stopped

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live(voice="espeak:fr-fr") as live:  # the yardstick: a French session
            rec = Recorder(live).start()
            in_french_session = await stopped(live, rec, french)
        async with client.live() as live:  # the default (English) voice
            rec = Recorder(live).start()
            turn_in_french = await stopped(live, rec, french, voice="espeak:fr-fr")
            turn_in_english = await stopped(live, rec, french)
            bad = await live.say("Hola.", voice="espeak:nope", final=False)
            await live.say(" y adios.", turn_id=bad)  # later input of a refused turn: dropped quietly
            first = await live.say("Hello", final=False, voice="espeak:en-gb")
            await live.say(" there.", turn_id=first, voice="espeak:fr-fr")  # a turn's voice is its first piece's
            after = await stopped(live, rec, "Still here.")
            await live.close()
            await rec.finish()
    errors = [r.msg.error for r in rec.messages if r.kind == "error"]
    assert sorted((e.turn_id, e.code, e.field) for e in errors) == sorted(
        [
            (bad, grpc.StatusCode.NOT_FOUND.value[0], "text.voice"),  # when the turn started
            (first, grpc.StatusCode.INVALID_ARGUMENT.value[0], "text.voice"),  # at once, from the reader
        ]
    ), errors
    assert in_french_session.reason == turn_in_french.reason == lpb.STOP_REASON_COMPLETED
    # the same speech (to the sample, but for where the turn fell on the session's timeline)
    frame = in_french_session.sample_rate // 25
    assert turn_in_french.sample_rate == in_french_session.sample_rate == 22050
    assert abs(turn_in_french.samples_played - in_french_session.samples_played) < frame
    # the next turn is back in the session's voice: English reads the French text differently
    assert abs(turn_in_english.samples_played - turn_in_french.samples_played) > 5 * frame, turn_in_english
    assert after.reason == lpb.STOP_REASON_COMPLETED and after.samples_played > 0
    assert bad not in [r.msg.event.speaking_started.turn_id for r in rec.messages if r.kind == "event"]


async def test_a_turns_voice_is_checked_in_the_turn_not_in_the_reader(tmp_path: Path, monkeypatch) -> None:
    """Checking a turn's own voice asks TTS; a slow answer must not hold the client's other
    messages: an interrupt sent right after such a turn is acknowledged at once. And TTS's error
    about that turn's text names the turn's voice (text.voice), not the session's."""
    from services.gateway.live import LiveHub

    real = LiveHub.listed_voice

    async def slow(self: LiveHub, voice: str, field_name: str) -> tuple[str, int] | None:
        if field_name == "text.voice":
            await asyncio.sleep(3.0)
        return await real(self, voice, field_name)

    monkeypatch.setattr(LiveHub, "listed_voice", slow)
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            tid = await live.say(" ".join([TEXT] * 4))
            await rec.wait_event("speaking_started", tid)
            await live.say("Bonjour.", voice="espeak:fr-fr")  # queued behind it; its check is slow
            sent = asyncio.get_running_loop().time()
            await live.interrupt(tid)
            await rec.wait_event("interrupt_acknowledged")
            acknowledged_after = asyncio.get_running_loop().time() - sent
            han = await live.say("\u4eca\u5929\u5929\u6c14\u5f88\u597d", voice="espeak:en-us")
            await rec.wait_event("speaking_stopped", han, timeout=30)
            await live.close()
            await rec.finish()
    assert acknowledged_after < 1.0, f"the interrupt waited {acknowledged_after:.2f} s behind a voice check"
    (error,) = [r.msg.error for r in rec.messages if r.kind == "error" and r.msg.error.turn_id == han]
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0] and error.field == "text.voice", error
    assert error.message.startswith("tts: text.voice: "), error.message


async def test_a_turn_spoken_with_ttss_warning_says_so_in_its_speaking_stopped(tmp_path: Path) -> None:
    """A turn with a few letters the voice reads by name is spoken, and its SpeakingStopped carries
    TTS's warning; the next, plain turn has none."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            mixed = await live.say("I flew from 北京 to 上海 last week.")
            warned = (await rec.wait_event("speaking_stopped", mixed, timeout=30)).msg.event.speaking_stopped
            plain = await live.say("Then home again.")
            clean = (await rec.wait_event("speaking_stopped", plain, timeout=30)).msg.event.speaking_stopped
            await live.close()
            await rec.finish()
    assert warned.reason == clean.reason == lpb.STOP_REASON_COMPLETED
    (warning,) = warned.warnings
    assert "Han script" in warning and "espeak:cmn" in warning, warning
    assert list(clean.warnings) == []
    assert warned.voice == clean.voice == "espeak:en-us"  # the voice spoken with, as listed
    assert not [r for r in rec.messages if r.kind == "error"]


async def test_a_turn_that_fails_unexpectedly_is_an_internal_error_and_the_next_turn_plays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A defect inside one turn (here: any exception the code did not expect) fails that turn
    alone: one INTERNAL LiveError naming the turn, its speaking_stopped says FAILED, and the turn
    queued behind it plays; the session is not left waiting for a turn that will never end."""
    from services.gateway.live import LiveSession

    real = LiveSession._run_turn
    broken: list[str] = []

    async def first_one_breaks(self: LiveSession, turn: Any) -> None:
        if not broken:
            broken.append(turn.turn_id)
            raise RuntimeError("a bug in the turn's code")
        await real(self, turn)

    monkeypatch.setattr(LiveSession, "_run_turn", first_one_breaks)
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            first = await live.say("First turn.")
            second = await live.say("Second turn.")
            stopped = (await rec.wait_event("speaking_stopped", second, timeout=30)).msg.event.speaking_stopped
            await live.close()
            await rec.finish()
    assert broken == [first]
    (error,) = [r.msg.error for r in rec.messages if r.kind == "error"]
    assert error.turn_id == first and error.code == grpc.StatusCode.INTERNAL.value[0], error
    assert "RuntimeError" not in error.message, "scrubbed at the edge: no exception text"
    stops = {r.msg.event.speaking_stopped.turn_id: r.msg.event.speaking_stopped for r in rec.events("speaking_stopped")}
    assert stops[first].reason == lpb.STOP_REASON_FAILED and stops[first].voice == ""
    assert stopped.reason == lpb.STOP_REASON_COMPLETED and stopped.samples_played > 0


async def test_a_queued_turn_in_its_own_voice_dropped_by_an_interrupt_names_its_voice_and_rate(
    tmp_path: Path,
) -> None:
    """The voice of a turn that never started is checked as it is queued: when an interrupt drops
    it, its speaking_stopped names the voice as listed and counts (zero) samples in its rate."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            tid = await live.say(" ".join([TEXT] * 4))
            await rec.wait_event("speaking_started", tid)
            queued = await live.say("Bonjour tout le monde.", voice="espeak:fr-FR")
            mexican = await live.say("Hola a todos.", voice="espeak:es-MX")
            await live.interrupt()
            await rec.wait_event("interrupt_acknowledged")
            await live.close()
            await rec.finish()
    stops = {r.msg.event.speaking_stopped.turn_id: r.msg.event.speaking_stopped for r in rec.events("speaking_stopped")}
    assert stops[queued].reason == stops[mexican].reason == lpb.STOP_REASON_INTERRUPTED
    assert (stops[queued].voice, stops[queued].sample_rate) == ("espeak:fr-fr", 22050), stops[queued]
    assert (stops[mexican].voice, stops[mexican].sample_rate) == ("espeak:es-419", 22050), stops[mexican]
    assert stops[queued].frames_played == stops[queued].samples_played == 0


async def test_a_client_that_stops_reading_then_leaves_leaves_no_queue_depth(tmp_path: Path) -> None:
    """A client that stops reading fills the session's queue to it (talkmesh_queue_depth
    {stage="live_to_client"} shows it); when it hangs up, its depth goes with it."""
    env = {"TALKMESH_GATEWAY__QUEUE_SIZE": "2"}  # a 4-message queue to the client fills fast
    async with inprocess_mesh(tmp_path, env=env) as mesh:
        gauge = mesh.telemetry["gateway"].queue_gauge("live_to_client")
        # a small receive window that never grows: gRPC's flow control stops the gateway after
        # 16 KiB unread (its default window, grown by BDP probing, took ~20 s of idle frames to fill)
        channel = grpc.aio.insecure_channel(
            mesh.gateway, options=[("grpc.http2.lookahead_bytes", 16 * 1024), ("grpc.http2.bdp_probe", 0)]
        )
        try:
            call = live_pb2_grpc.LiveStub(channel).Session()
            await call.write(lpb.LiveClientMessage(config=lpb.LiveConfig(size="720p")))
            for _ in range(300):  # nothing read: gRPC's window fills, then the queue
                if gauge._value.get() > 0:
                    break
                await asyncio.sleep(0.1)
            assert gauge._value.get() > 0, "the queue to a client that does not read never filled"
            call.cancel()
            for _ in range(100):
                if gauge._value.get() == 0:
                    break
                await asyncio.sleep(0.05)
            assert gauge._value.get() == 0
        finally:
            await channel.close()


async def test_text_for_a_turn_that_ended_is_refused_and_an_interrupted_streams_rest_discarded(tmp_path: Path) -> None:
    """A turn id used again after its turn ended (its input complete) is a client's mistake: an
    error naming it, not speech that vanishes. The rest of a stream whose turn was interrupted
    while it was still sending is discarded quietly (an LLM does not stop at once)."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await live.say("A long answer about the weather, the sea and the mountains.", turn_id="R")
            await rec.wait_event("speaking_started", "R", timeout=30)
            await live.interrupt("R")
            await rec.wait_event("speaking_stopped", "R", timeout=10)
            await live.say("Reused id.", turn_id="R")  # refused: R ended with its input complete
            await live.say("Again.", turn_id="R")  # told once: discarded
            await live.end_turn("R")
            await live.say("An LLM stream, ", turn_id="S", final=False)
            await rec.wait_event("speaking_started", "S", timeout=30)
            await live.interrupt("S")
            await rec.wait_event("speaking_stopped", "S", timeout=10)
            await live.say("still sending ", turn_id="S", final=False)  # discarded
            await live.say("its end.", turn_id="S")  # discarded
            done = await live.say("Next.")
            await rec.wait_event("speaking_stopped", done, timeout=30)
            await live.close()
            await rec.finish()
    assert _errors(rec) == [("text.turn_id", INVALID, "R")]
    assert [r.msg.error.message for r in rec.messages if r.kind == "error"] == [
        "text.turn_id: turn 'R' has ended: a new turn needs a new id"
    ]
    stops = [(s.turn_id, s.reason) for s in (r.msg.event.speaking_stopped for r in rec.events("speaking_stopped"))]
    interrupted, completed = lpb.STOP_REASON_INTERRUPTED, lpb.STOP_REASON_COMPLETED
    assert stops == [("R", interrupted), ("S", interrupted), (done, completed)]


async def test_a_tts_that_does_not_answer_a_voice_check_holds_the_start_two_seconds_not_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung TTS (its ListVoices never answers) held a live session's start for the whole call
    deadline (tts.timeout_seconds, 10 s): the voice check waits VOICE_CHECK_SECONDS, then the
    session starts as with a TTS that is down, and a text turn still speaks (TTS's synthesis is
    not the part that hangs here)."""
    from services.gateway.live import VOICE_CHECK_SECONDS
    from services.tts.server import TTSServicer

    async def hang(self: Any, request: Any, context: Any) -> Any:
        await asyncio.sleep(60)

    monkeypatch.setattr(TTSServicer, "ListVoices", hang)
    env = {"TALKMESH_GATEWAY__TTS__TIMEOUT_SECONDS": "20"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        for voice in ("", "espeak:en-us"):
            began = time.monotonic()
            async with client.live(voice=voice) as live:
                waited = time.monotonic() - began
                rec = Recorder(live).start()
                tid = await live.say("Hello.")
                stopped = await rec.wait_event("speaking_stopped", tid, timeout=30)
                await live.close()
                await rec.finish()
            assert VOICE_CHECK_SECONDS - 0.1 <= waited < VOICE_CHECK_SECONDS + 3.0, (voice, waited)
            assert stopped.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED


async def test_a_turn_the_encoder_fails_mid_render_does_not_hold_the_turns_behind_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renderer's stream of a long turn breaks after 10 frames: the encoder fails that turn
    (FAILED speaking_stopped, one error). The gateway's task for it was still sending its audio,
    paced by playback that would never come: it is stopped, and the next turn plays."""
    import services.encoder.live.session as encoder_session
    from talkmesh.common.errors import Unavailable

    real = encoder_session.unbatched
    renders = 0

    async def breaking(stream: Any) -> Any:
        nonlocal renders
        renders += 1
        first, frames = renders == 1, 0
        async for frame in real(stream):
            frames += 1
            if first and frames > 10:
                raise Unavailable("renderer: the stream broke (a test)")
            yield frame

    monkeypatch.setattr(encoder_session, "unbatched", breaking)
    long = " ".join(["Hello there! This is a live avatar, speaking while it is still being rendered."] * 6)
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            broken = await live.say(long)
            first = await rec.wait_event("speaking_stopped", broken, timeout=60)
            after = await live.say("Next.")
            second = await rec.wait_event("speaking_stopped", after, timeout=30)
            await live.close()
            await rec.finish()
    assert first.msg.event.speaking_stopped.reason == lpb.STOP_REASON_FAILED
    assert second.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED
    assert second.msg.event.speaking_stopped.frames_played > 5
    assert [r.msg.error.turn_id for r in rec.messages if r.kind == "error"] == [broken]



async def test_a_piece_after_an_empty_turns_end_does_not_fail_it(tmp_path: Path) -> None:
    """A piece sent after an empty turn's end (its error names the piece) leaves the turn as it was:
    it completes, with one speaking_stopped."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await live.say("Hello there.", turn_id="first")
            await live.audio("empty", b"", 16000)
            await live.end_turn("empty")
            await live.audio("empty", b"\x00\x00" * 160, 16000)  # too late: refused
            await live.say("Bye.", turn_id="next")
            await rec.wait_event("speaking_stopped", "next", timeout=30)
            await live.close()
            await rec.finish()
    errors = [(r.msg.error.turn_id, r.msg.error.message) for r in rec.messages if r.kind == "error"]
    stops = [(s.turn_id, s.reason) for s in (r.msg.event.speaking_stopped for r in rec.events("speaking_stopped"))]
    assert [(tid, m.startswith("audio.turn_id:")) for tid, m in errors] == [("empty", True)], errors
    assert sorted(stops) == [("empty", lpb.STOP_REASON_COMPLETED), ("first", lpb.STOP_REASON_COMPLETED),
                             ("next", lpb.STOP_REASON_COMPLETED)]  # fmt: skip


async def test_a_text_turn_opened_empty_whose_first_text_is_refused_ends_failed(tmp_path: Path) -> None:
    """say_stream opens its turn with an empty piece; an LLM's first piece refused (control
    characters) fails the turn (error first, then FAILED, nothing played), its end_of_turn is
    discarded quietly, and the next turn plays."""
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            await live.say("", turn_id="llm", final=False)
            await live.say("bad\x00text", turn_id="llm", final=False)
            await live.say("more.", turn_id="llm", final=False)  # discarded
            await live.end_turn("llm")  # discarded
            await live.say("Hello.", turn_id="next")
            await rec.wait_event("speaking_stopped", "next", timeout=30)
            await live.close()
            await rec.finish()
    errors = [r.msg.error for r in rec.messages if r.kind == "error"]
    assert [(e.turn_id, e.field) for e in errors] == [("llm", "text.text")], errors
    stops = {s.turn_id: s for s in (r.msg.event.speaking_stopped for r in rec.events("speaking_stopped"))}
    assert stops["llm"].reason == lpb.STOP_REASON_FAILED and stops["llm"].samples_played == 0
    assert stops["next"].reason == lpb.STOP_REASON_COMPLETED
    error_at = _index(rec, lambda r: r.kind == "error" and r.msg.error.turn_id == "llm")
    assert error_at < _index(rec, lambda r: r.kind == "event" and r.msg.event.speaking_stopped.turn_id == "llm")
    assert len([r for r in rec.events("speaking_stopped") if r.msg.event.speaking_stopped.turn_id == "llm"]) == 1
