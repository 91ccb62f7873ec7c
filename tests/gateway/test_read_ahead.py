"""The gateway's TTS read-ahead budget and the encoder's audio/video interleaving, directly."""

from __future__ import annotations

import asyncio

import pytest

from services.encoder.interleave import AudioInterleaver
from services.gateway.pipeline import ReadAhead
from talkmesh.common.clock import MediaClock
from talkmesh.common.errors import InvalidArgument
from talkmesh.v1 import common_pb2 as cpb

SR = 16000


async def test_read_ahead_waits_once_the_budget_is_used_and_resumes_with_progress():
    ra = ReadAhead(budget_seconds=2.0, fps=25)
    await ra.wait_for_room()  # before the first chunk nothing is known: no wait
    ra.start(SR)
    ra.read(2 * SR)  # exactly the budget ahead of frame 0
    await asyncio.wait_for(ra.wait_for_room(), 0.5)
    ra.read(1)  # one sample over
    waiter = asyncio.create_task(ra.wait_for_room())
    await asyncio.sleep(0.02)
    assert not waiter.done()
    ra.encoded(0)  # no progress: still waiting
    await asyncio.sleep(0.02)
    assert not waiter.done()
    ra.encoded(1)  # one frame (640 samples) encoded: back within the budget
    await asyncio.wait_for(waiter, 0.5)
    assert ra.ahead_samples() == 2 * SR + 1 - SR // 25


def test_read_ahead_counts_in_exact_frame_boundaries():
    ra = ReadAhead(budget_seconds=2.0, fps=30000 / 1001)
    ra.start(44100)
    ra.read(10 * 44100)
    ra.encoded(300)
    clock = MediaClock.of(30000 / 1001, 44100)
    assert ra.ahead_samples() == 10 * 44100 - clock.start(300)


def _chunk(offset: int, samples: int, value: int = 1) -> cpb.AudioChunk:
    return cpb.AudioChunk(sample_rate=SR, sample_offset=offset, pcm=value.to_bytes(2, "little", signed=True) * samples)


def test_interleaver_releases_audio_up_to_each_frame_plus_the_lead():
    clock = MediaClock.of(25, SR)
    lead = SR // 4
    il = AudioInterleaver(clock, lead)
    for i in range(10):  # TTS runs ahead: 10 chunks of 640 samples arrive before any frame
        il.add(_chunk(i * 640, 640, i))
    first = il.until_frame(0)
    assert len(first) // 2 == clock.start(1) + lead  # frame 0 and the AAC lead
    assert il.until_frame(0) == b""  # nothing twice
    second = il.until_frame(1)
    assert len(second) // 2 == clock.start(2) - clock.start(1)
    rest = il.rest()
    assert il.released == il.received == 6400 and il.held == 0
    # in order, nothing lost or repeated
    pcm = first + second + rest
    assert pcm == b"".join(i.to_bytes(2, "little", signed=True) * 640 for i in range(10))


def test_interleaver_never_releases_audio_it_does_not_have():
    il = AudioInterleaver(MediaClock.of(25, SR), SR // 4)
    il.add(_chunk(0, 100))
    assert len(il.until_frame(5)) == 200
    assert il.until_frame(6) == b""


@pytest.mark.parametrize(
    ("chunk", "field"),
    [
        (cpb.AudioChunk(sample_rate=SR, sample_offset=5, pcm=b"\0\0"), "audio.sample_offset"),
        (cpb.AudioChunk(sample_rate=22050, sample_offset=0, pcm=b"\0\0"), "audio.sample_rate"),
        (cpb.AudioChunk(sample_rate=SR, sample_offset=0, pcm=b"\0"), "audio.pcm"),
    ],
)
def test_interleaver_refuses_discontinuous_or_foreign_audio(chunk, field):
    il = AudioInterleaver(MediaClock.of(25, SR), 0)
    with pytest.raises(InvalidArgument) as err:
        il.add(chunk)
    assert err.value.field == field
