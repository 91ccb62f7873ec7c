"""A live session's sound against its picture, decoded (PyAV) from the fMP4 the encoder sends.

The encoder's Live call runs here against a fake renderer (every frame ready at once, one of them
late on purpose), at wall-clock pace. What is checked: each speaking fragment carries its frame's
whole sound (the speech is encoded ahead of the picture, past the AAC encoder's delay), a repeated
frame (an underrun) is silent and every frame keeps its own sound, idle stays on the cached silent
packets, an interrupt's cut holds (the speech up to the cut was sent before the acknowledgement,
nothing after it is sent after), and the audio track ends within a frame of the video.
"""

from __future__ import annotations

import asyncio
import io
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import av
import numpy as np
import pytest

from services.encoder.live.media import AAC_FRAME
from services.encoder.main import create_service, load_config
from services.encoder.render import LocalFrameSource
from talkmesh.common.channel import create_channel
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import audio_features_pb2, common_pb2, encoder_pb2, encoder_pb2_grpc, live_pb2, renderer_pb2

pytestmark = pytest.mark.timeout(60)

W, H, FPS, SR = 64, 48, 25, 24000
SPF = SR // FPS  # session samples per frame
APF = 48000 // FPS  # audio track samples per frame
IDLE_LUMA = 128
LATE_FRAME = 12  # the "underrun" turn's frame the renderer is late with


def turn_luma(j: int) -> int:
    return 20 + 8 * (j % 25)  # 20..212, never the idle loop's


def amplitude(j: int) -> float:
    """The tone's amplitude in turn frame ``j`` (full scale 1.0): each frame sounds its own."""
    return 0.08 + 0.03 * (j % 6)


def speech(frames: int) -> bytes:
    """A 440 Hz tone whose amplitude steps with every frame (s16le at SR)."""
    t = np.arange(frames * SPF)
    amp = np.repeat([amplitude(j) for j in range(frames)], SPF)
    return (np.sin(2 * math.pi * 440 * t / SR) * amp * 32767).astype("<i2").tobytes()


def fake_renderer(late: float) -> Callable[..., AsyncIterator[common_pb2.VideoFrame]]:
    """One frame per features message: flat grey for the idle loop, ``turn_luma(j)`` for a turn's
    frame ``j``; a turn's frame ``LATE_FRAME`` comes ``late`` seconds late."""

    async def render(requests: AsyncIterator[renderer_pb2.RenderRequest], _context: Any):
        config = (await anext(requests)).config
        turn = bool(config.session_id)  # the idle loop has no session id
        async for req in requests:
            if req.end_of_stream:
                break
            if req.WhichOneof("kind") != "features":
                continue
            j = req.features.frame_index
            if turn and j == LATE_FRAME and late:
                await asyncio.sleep(late)
            y = np.full(W * H, turn_luma(j) if turn else IDLE_LUMA, np.uint8).tobytes()
            data = y + np.full(W * H // 2, 128, np.uint8).tobytes()
            yield common_pb2.VideoFrame(
                frame_index=j, width=W, height=H, pixel_format=common_pb2.PIXEL_FORMAT_I420, data=data
            )
        yield common_pb2.VideoFrame(end_of_stream=True)

    return render


class Session:
    """A Live call: ``send`` requests, ``messages`` received so far (with when)."""

    def __init__(self, stub: encoder_pb2_grpc.EncoderStub) -> None:
        self.queue: asyncio.Queue[encoder_pb2.LiveEncodeRequest | None] = asyncio.Queue()
        self.messages: list[tuple[float, live_pb2.LiveServerMessage]] = []
        self.changed = asyncio.Event()
        self.stub = stub

    async def _requests(self) -> AsyncIterator[encoder_pb2.LiveEncodeRequest]:
        while (req := await self.queue.get()) is not None:
            yield req

    async def run(self) -> None:
        async for msg in self.stub.Live(self._requests()):
            self.messages.append((time.monotonic(), msg))
            self.changed.set()

    def send(self, **kind: Any) -> None:
        self.queue.put_nowait(encoder_pb2.LiveEncodeRequest(**kind))

    def say(self, turn_id: str, frames: int) -> None:
        """A turn of ``frames`` frames: all its audio and features at once (a TTS ahead of time)."""
        self.send(turn_id=turn_id, turn_start=encoder_pb2.TurnStart(source_sample_rate=SR))
        pcm = speech(frames)
        self.send(turn_id=turn_id, audio=common_pb2.AudioChunk(sample_rate=SR, sample_offset=0, pcm=pcm))
        voiced = common_pb2.FrameActivity(rms_dbfs=-20.0, voiced=True)
        for j in range(frames):
            self.send(turn_id=turn_id, features=audio_features_pb2.FeatureChunk(frame_index=j, activity=voiced))
        self.send(turn_id=turn_id, end_of_turn=True)

    async def idle_for(self, frames: int) -> None:
        """Until ``frames`` more frames have been sent."""
        last = max(m.media.first_frame + m.media.frame_count for _at, m in self.messages)
        await self.until(lambda m: m.media.first_frame >= last + frames)

    async def until(self, predicate: Callable[[live_pb2.LiveServerMessage], bool]) -> live_pb2.LiveServerMessage:
        seen = 0
        while True:
            for _at, msg in self.messages[seen:]:
                if predicate(msg):
                    return msg
            seen = len(self.messages)
            self.changed.clear()
            await self.changed.wait()


async def live_session(script: Callable[[Session], Any], late: float = 0.0) -> list[Any]:
    env = {"TALKMESH_ENCODER__LIVE__LOOP_SECONDS": "1"}
    service = create_service(
        load_config(env=env), Telemetry("encoder"), nvenc_probe=lambda _: False,
        frame_source=LocalFrameSource(fake_renderer(late)),
    )  # fmt: skip
    async with serve(service) as host, create_channel(host.address) as channel:
        session = Session(encoder_pb2_grpc.EncoderStub(channel))
        config = encoder_pb2.LiveEncodeConfig(
            session_id="s", fps=FPS, sample_rate=SR, render=renderer_pb2.RenderConfig(request_id="s")
        )
        session.send(config=config)
        runner = asyncio.ensure_future(session.run())
        try:
            await session.until(lambda m: m.media.first_frame >= 20)  # idle, on the cached silence
            await script(session)
            session.queue.put_nowait(None)
            await runner
        finally:
            runner.cancel()
    return [m for _at, m in session.messages]


def media_bytes(messages: list[live_pb2.LiveServerMessage]) -> bytes:
    return b"".join(m.media.data for m in messages if m.WhichOneof("kind") == "media")


def decode_audio(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        frames = [f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]
    return np.concatenate(frames) if frames else np.zeros(0, np.float32)


def decode_lumas(data: bytes) -> list[float]:
    with av.open(io.BytesIO(data)) as c:
        return [float(f.to_ndarray(format="yuv420p")[:H].mean()) for f in c.decode(video=0)]  # Y


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def frame_rms(audio: np.ndarray, frame: int) -> float:
    """The sound's RMS in the middle 24 ms of session frame ``frame`` (clear of the MDCT smear)."""
    return rms(audio[frame * APF + 384 : (frame + 1) * APF - 384])


def fragments(messages: list[live_pb2.LiveServerMessage]) -> list[int]:
    """Indexes of the media messages holding frames."""
    return [i for i, m in enumerate(messages) if m.WhichOneof("kind") == "media" and m.media.frame_count]


async def test_each_speaking_fragment_carries_its_frames_whole_sound_and_idle_stays_silent_and_free():
    frames = 30

    async def script(s: Session) -> None:
        s.say("t1", frames)
        await s.until(lambda m: m.event.HasField("speaking_stopped"))
        last = max(m.media.first_frame for _a, m in s.messages if m.media.turn_id == "t1")
        await s.until(lambda m: m.media.first_frame >= last + 25)

    messages = await live_session(script)
    speaking = [i for i in fragments(messages) if messages[i].media.turn_id == "t1"]
    assert len(speaking) == frames
    start = messages[speaking[0]].media.first_frame
    for k, i in enumerate(speaking):
        media = messages[i].media
        end = (media.first_frame + media.frame_count) * APF
        audio = decode_audio(media_bytes(messages[: i + 1]))  # what the page has with this frame
        assert len(audio) >= end, f"turn frame {k}: the sound ends {(end - len(audio)) / 48:.1f} ms before its frame"
        # ... and it is the frame's own sound up to its very end, not padding
        assert rms(audio[end - 240 : end]) == pytest.approx(amplitude(k) / math.sqrt(2), rel=0.25), k

    audio = decode_audio(media_bytes(messages))
    lumas = decode_lumas(media_bytes(messages))
    for k in range(frames):  # lip sync: frame k shows turn frame k with its sound
        assert lumas[start + k] == pytest.approx(turn_luma(k), abs=3)
        assert frame_rms(audio, start + k) == pytest.approx(amplitude(k) / math.sqrt(2), rel=0.1), k
    assert rms(audio[: start * APF - AAC_FRAME]) < 1e-3, "silent before the turn"
    assert rms(audio[(start + frames) * APF + 2 * AAC_FRAME :]) < 1e-3, "silent after it"
    assert abs(len(audio) / 48000 - len(lumas) / FPS) <= 1 / FPS, "the audio track ends with the video"
    # idle is free: a second after the turn, idle fragments hold only the one cached silent packet
    packets = audio_packets_from(media_bytes(messages), (start + frames + 25) * APF)
    assert len(packets) == 1 and len(next(iter(packets))) <= 64


def audio_packets_from(data: bytes, sample: int) -> set[bytes]:
    """The audio packets (bytes) of a stream from 48 kHz sample ``sample`` on."""
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.audio[0]
        return {bytes(p) for p in c.demux(stream) if p.size and p.pts is not None and p.pts >= sample}


async def test_an_underrun_repeats_the_frame_in_silence_and_every_frame_keeps_its_own_sound():
    frames = 24

    async def script(s: Session) -> None:
        s.say("u", frames)
        await s.until(lambda m: m.event.HasField("speaking_stopped"))
        await s.idle_for(8)

    messages = await live_session(script, late=0.8)  # frame 11 plays at ~0.45 s
    assert any(m.event.HasField("underrun") for m in messages)
    audio = decode_audio(media_bytes(messages))
    lumas = decode_lumas(media_bytes(messages))
    shown = [(m.media.first_frame, m.media.turn_id) for m in messages if m.media.frame_count == 1 and m.media.turn_id]
    previous = -1
    repeats = 0
    underruns = {m.media.first_frame for m in messages if m.media.underrun}
    for frame, _turn in shown:
        j = round((lumas[frame] - 20) / 8)
        if j == previous:  # the late frame's stand-in: the previous picture, in silence
            repeats += 1
            assert frame_rms(audio, frame) < 0.02, frame
            assert frame in underruns, "a repeat is labelled as one (none of the turn's media)"
        else:
            assert frame not in underruns, frame
            assert j == previous + 1, "no frame of the turn is skipped"
            assert frame_rms(audio, frame) == pytest.approx(amplitude(j) / math.sqrt(2), rel=0.1), (frame, j)
        previous = j
    assert previous == frames - 1 and repeats >= 3


async def test_an_interrupt_cut_holds_the_speech_up_to_the_cut_and_nothing_after_it():
    async def script(s: Session) -> None:
        s.say("long", 100)
        first = await s.until(lambda m: m.media.turn_id == "long")
        await s.until(lambda m: m.media.turn_id == "long" and m.media.first_frame >= first.media.first_frame + 15)
        s.send(interrupt=True)
        await s.until(lambda m: m.event.HasField("interrupt_acknowledged"))
        s.say("next", 10)  # ready at once: starts where the stopped turn's sound is gone
        await s.until(lambda m: m.event.HasField("speaking_stopped") and m.event.speaking_stopped.turn_id == "next")
        await s.idle_for(8)

    messages = await live_session(script)
    ack = next(i for i, m in enumerate(messages) if m.event.HasField("interrupt_acknowledged"))
    cut = messages[ack].event.frame
    played = [m.media.first_frame for m in messages if m.media.turn_id == "long"]
    assert played[-1] == cut - 1
    start = played[0]
    sent = decode_audio(media_bytes(messages[:ack]))  # all the page has when the cut is announced
    assert len(sent) >= cut * APF, "the speech up to the cut was sent before the acknowledgement"
    k = cut - 1 - start  # the last frame before the cut
    assert rms(sent[cut * APF - 240 : cut * APF]) == pytest.approx(amplitude(k) / math.sqrt(2), rel=0.25)
    lead = len(sent) - cut * APF
    assert lead <= AAC_FRAME + 128, f"{lead} samples sent past the cut"  # 128: media.LEAD_MARGIN

    audio = decode_audio(media_bytes(messages))
    nxt = next(m.media.first_frame for m in messages if m.media.turn_id == "next")
    # after what was sent before the acknowledgement (and its last packet's MDCT tail), silence
    # until the next turn, which starts where the stopped one's sound was gone
    assert nxt * APF >= len(sent) + AAC_FRAME
    assert rms(audio[len(sent) + AAC_FRAME : nxt * APF - 2 * AAC_FRAME]) < 1e-3
    for j in range(10):
        assert frame_rms(audio, nxt + j) == pytest.approx(amplitude(j) / math.sqrt(2), rel=0.1), j
    assert abs(len(audio) / 48000 - len(decode_lumas(media_bytes(messages))) / FPS) <= 1 / FPS


async def test_an_interrupt_of_every_turn_stops_only_the_turns_started_before_it(monkeypatch):
    """An interrupt's targets are the turns known when it is read: a turn started right after it,
    read while the tick loop was still encoding a frame, plays (it was stopped too)."""
    from services.encoder.live.session import LiveSession

    encode = LiveSession._encode
    hold, holding = threading.Event(), threading.Event()

    def held(self: LiveSession, raw: bytes, pts: int, force: bool, pcm: bytes) -> tuple[bytes, bool]:
        if hold.is_set():  # this frame's encode lasts until the interrupt and the next turn are read
            hold.clear()
            holding.set()
            deadline = time.monotonic() + 10  # (a hang guard)
            while "next" not in self.turns and time.monotonic() < deadline:
                time.sleep(0.002)
        return encode(self, raw, pts, force, pcm)

    monkeypatch.setattr(LiveSession, "_encode", held)

    async def script(s: Session) -> None:
        s.say("long", 100)
        first = await s.until(lambda m: m.media.turn_id == "long")
        await s.until(lambda m: m.media.turn_id == "long" and m.media.first_frame >= first.media.first_frame + 5)
        hold.set()
        assert await asyncio.to_thread(holding.wait, 10)  # a frame is being encoded
        s.send(interrupt=True)  # every turn: "long" only
        s.say("next", 10)
        await s.until(lambda m: m.event.speaking_stopped.turn_id == "next")
        await s.idle_for(4)

    messages = await live_session(script)
    events = [m.event for m in messages if m.WhichOneof("kind") == "event"]
    acks = [list(e.interrupt_acknowledged.stopped_turn_ids) for e in events if e.HasField("interrupt_acknowledged")]
    stops = {e.speaking_stopped.turn_id: e.speaking_stopped for e in events if e.HasField("speaking_stopped")}
    assert acks == [["long"]]
    assert stops["long"].reason == live_pb2.STOP_REASON_INTERRUPTED
    assert (stops["next"].reason, stops["next"].frames_played) == (live_pb2.STOP_REASON_COMPLETED, 10)


async def test_a_mistake_in_one_turns_input_fails_that_turn_and_the_session_goes_on():
    """Input of a started turn the encoder cannot take (here audio out of step) fails that turn:
    an INVALID_ARGUMENT LiveError naming the field and a FAILED speaking_stopped; the session
    and the turns after it play on (it used to end the whole session)."""

    async def script(s: Session) -> None:
        s.send(turn_id="bad", turn_start=encoder_pb2.TurnStart(source_sample_rate=SR))
        s.send(turn_id="bad", audio=common_pb2.AudioChunk(sample_rate=SR, sample_offset=5, pcm=speech(2)))
        s.send(turn_id="bad", end_of_turn=True)  # (dropped: the turn failed)
        s.say("next", 10)
        await s.until(lambda m: m.event.speaking_stopped.turn_id == "next")

    messages = await live_session(script)
    errors = [m.error for m in messages if m.WhichOneof("kind") == "error"]
    stops = [m.event.speaking_stopped for m in messages if m.event.HasField("speaking_stopped")]
    assert [(e.code, e.turn_id) for e in errors] == [(3, "bad")]  # INVALID_ARGUMENT
    assert errors[0].message.startswith("audio.sample_offset: expected 0")
    assert errors[0].field == "audio.sample_offset"
    assert [(s.turn_id, s.reason) for s in stops] == [
        ("bad", live_pb2.STOP_REASON_FAILED),
        ("next", live_pb2.STOP_REASON_COMPLETED),
    ]


async def test_an_interrupt_that_meets_a_turns_failure_is_still_acknowledged_for_the_turns_it_stopped():
    """The client's interrupt of every turn is read, then (before the next tick) turn A fails: A
    stops as FAILED with its error, B as INTERRUPTED, and the interrupt is acknowledged, naming B
    (a client waiting for the acknowledgement used to wait for ever)."""
    import collections

    from services.encoder.live.session import LiveSession, Turn, _Output
    from talkmesh.common.aio import TaskSet
    from talkmesh.common.clock import MediaClock
    from talkmesh.common.lru import Lru
    from talkmesh.common.telemetry import Telemetry

    s = LiveSession.__new__(LiveSession)  # only what applying interrupts uses
    s.clock = MediaClock.of(25, 16000)
    s.turns = collections.OrderedDict((tid, Turn(tid, 16000, s.clock, 4)) for tid in ("A", "B"))
    s.current, s.stopped_ids, s.tasks, s.out = None, Lru(100), TaskSet("t"), _Output()
    s.telemetry, s._pending_audio, s.interrupts, s.wakeup = Telemetry("encoder"), [], [], asyncio.Event()
    try:
        s._interrupt("", list(s.turns))
        s.turns["A"].failed, s.turns["A"].failed_code = "render: boom", 13
        s._interrupt("A", ["A"], why=live_pb2.STOP_REASON_FAILED)
        out = s._apply_interrupts(10)
    finally:
        await s.tasks.aclose()
    events = [m.event for m in out if m.WhichOneof("kind") == "event"]
    stops = {e.speaking_stopped.turn_id: e.speaking_stopped.reason for e in events if e.HasField("speaking_stopped")}
    acks = [list(e.interrupt_acknowledged.stopped_turn_ids) for e in events if e.HasField("interrupt_acknowledged")]
    assert stops == {"A": live_pb2.STOP_REASON_FAILED, "B": live_pb2.STOP_REASON_INTERRUPTED}
    assert acks == [["B"]]
    assert [m.error.turn_id for m in out if m.WhichOneof("kind") == "error"] == ["A"]
