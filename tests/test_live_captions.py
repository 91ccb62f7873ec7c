"""Caption cues of live text turns, through the five services (in this process): one `caption`
event per clause, in order, sent right after the media of the frame the clause's first sound is
in (the clock where frames meet the encoder), none for an audio turn, none after an interrupt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from talkmesh.client import TalkmeshClient
from talkmesh.common.channel import create_channel
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import tts_pb2, tts_pb2_grpc
from tests.live_helpers import Recorded, Recorder
from tests.mesh import inprocess_mesh

pytestmark = pytest.mark.timeout(180)

CLAUSES = ["Hello there!", "This is a live avatar,", "speaking while it is still being rendered."]
LONG = [f"This is sentence number {n}, which the avatar says." for n in range(1, 13)]


def _captions(rec: Recorder, turn_id: str) -> list[Recorded]:
    return [r for r in rec.events("caption") if r.msg.event.caption.turn_id == turn_id]


def _at(rec: Recorder, wanted: Recorded) -> int:
    return next(i for i, r in enumerate(rec.messages) if r is wanted)


def _media_index(rec: Recorder, frame: int) -> int:
    """Where the fragment holding session frame ``frame`` is in the recording."""
    return next(
        i
        for i, r in enumerate(rec.messages)
        if r.kind == "media" and r.msg.media.frame_count and r.msg.media.first_frame <= frame
        and frame < r.msg.media.first_frame + r.msg.media.frame_count
    )  # fmt: skip


async def _clause_starts(tts_address: str, text: str) -> tuple[list[int], int]:
    """Each clause's first sample in TTS's own answer to ``text`` (streamed, as a live turn asks),
    and the voice's rate: what the captions' frames are checked against."""
    channel = create_channel(tts_address)
    try:
        stub = tts_pb2_grpc.TTSStub(channel)

        async def pieces():  # type: ignore[no-untyped-def]
            yield tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig())
            yield tts_pb2.TextPiece(text=text, end_of_stream=True)

        chunks = [c async for c in stub.SynthesizeStream(pieces())]
    finally:
        await channel.close()
    return [c.sample_offset for c in chunks if c.segment_text], chunks[0].sample_rate


async def test_a_text_turn_gets_one_caption_per_clause_each_with_the_frame_it_starts_in(tmp_path: Path) -> None:
    text = " ".join(CLAUSES)
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        starts, voice_rate = await _clause_starts(mesh.hosts["tts"].address, text)
        async with client.live() as live:
            rec = Recorder(live).start()
            await rec.wait_for(lambda r: r.kind == "media" and r.msg.media.first_frame >= 5)
            tid = await live.say(text)
            await rec.wait_event("speaking_stopped", tid, timeout=40)
            # an audio turn has no text: no caption
            rate = 16000
            t = np.arange(rate) / rate
            burst = (np.sin(2 * np.pi * 180 * t) * 9000 * ((t % 0.25) < 0.15)).astype("<i2").tobytes()
            audio = await live.say_audio(burst, rate)
            await rec.wait_event("speaking_stopped", audio, timeout=30)
            await live.close()
            await rec.finish()

    fps = rec.started.fps_numerator / rec.started.fps_denominator
    cues = _captions(rec, tid)
    assert [(r.msg.event.caption.segment_index, r.msg.event.caption.text) for r in cues] == list(enumerate(CLAUSES))
    assert len(starts) == len(CLAUSES)
    started = rec.events("speaking_started")[0]
    stopped = next(r for r in rec.events("speaking_stopped") if r.msg.event.speaking_stopped.turn_id == tid)
    assert started.msg.event.speaking_started.turn_id == tid
    first = started.msg.event.frame
    underruns = [r.msg.event.frame for r in rec.events("underrun")]
    for cue, start in zip(cues, starts, strict=True):
        frame = cue.msg.event.frame
        # between the turn's start and its end, right after the media of its own frame, before the next frame's
        assert _at(rec, started) < _at(rec, cue) < _at(rec, stopped)
        assert _media_index(rec, frame) < _at(rec, cue) < _media_index(rec, frame + 1)
        media = rec.messages[_media_index(rec, frame)].msg.media
        assert media.turn_id == tid and cue.msg.event.unix_seconds > 0
        # the frame whose sound starts the clause (TTS's own offsets; an underrun moves the rest a frame later)
        late = sum(1 for u in underruns if u <= frame)
        expected = first + int(start * fps // voice_rate) + late
        assert abs(frame - expected) <= 1, (cue.msg.event.caption.text, frame, expected)
    # clause 2's cue came after clause 1's frames: a second and more of speech apart
    frames = [c.msg.event.frame for c in cues]
    assert frames[0] == first and frames[1] - frames[0] >= fps // 2 and frames[2] > frames[1]
    assert not _captions(rec, audio), "an audio turn has no captions"


async def test_an_interrupted_turn_gets_no_caption_after_the_acknowledgement(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            tid = await live.say(" ".join(LONG))
            await rec.wait_for(lambda r: r.event == "caption" and r.msg.event.caption.segment_index >= 2)
            queued = await live.say("This one was still waiting, and says nothing.")
            await live.interrupt()
            ack = await rec.wait_event("interrupt_acknowledged")
            cut = ack.msg.event.frame
            await rec.wait_for(lambda r: r.kind == "media" and r.msg.media.first_frame >= cut + 50)
            await live.close()
            await rec.finish()

    cues = _captions(rec, tid)
    assert all(_at(rec, c) < _at(rec, ack) for c in cues), "no cue of a stopped turn after the acknowledgement"
    assert all(c.msg.event.frame < cut for c in cues)
    said = [c.msg.event.caption.text for c in cues]
    assert 3 <= len(said) < 2 * len(LONG)  # (two clauses a sentence)
    assert said == [p for s in LONG for p in s.replace(", ", ",\n").split("\n")][: len(said)]
    assert not _captions(rec, queued)
    stopped = {r.msg.event.speaking_stopped.turn_id: r for r in rec.events("speaking_stopped")}
    assert stopped[tid].msg.event.speaking_stopped.reason == lpb.STOP_REASON_INTERRUPTED
