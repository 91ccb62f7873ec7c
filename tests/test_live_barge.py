"""Barge-in while a turn's input is still coming: the interrupt is not held behind that input, and
the client stops reading the caller's source once its turn takes no more input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from talkmesh.client import TalkmeshClient
from talkmesh.v1 import live_pb2 as lpb
from tests.live_helpers import Recorder
from tests.mesh import inprocess_mesh


def _speech_like(rate: int, seconds: float) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    on = (t % 0.25) < 0.15
    return (np.sin(2 * np.pi * 180 * t) * 9000 * on).astype("<i2").tobytes()


async def test_an_interrupt_behind_an_upload_far_faster_than_real_time_stops_the_turn_at_once(
    tmp_path: Path,
) -> None:
    """A client-side TTS streams 20 ms chunks as fast as it can: the turn's queue (32 chunks here)
    fills at once. The gateway used to stop reading there, so the interrupt sent 1 s into the
    speech was read only when playback reached it (here ~15 s of stale speech)."""
    rate = 16000
    pcm = _speech_like(rate, 20.0)
    env = {"TALKMESH_GATEWAY__LIVE__TURN_AUDIO_CHUNKS": "32"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()

            async def fast():  # type: ignore[no-untyped-def]
                for i in range(0, len(pcm), 640):
                    yield pcm[i : i + 640]

            sender = asyncio.create_task(live.say_audio(fast(), rate, turn_id="up"))
            await rec.wait_event("speaking_started", "up", timeout=60)
            await asyncio.sleep(1.0)
            await live.interrupt()
            stopped = await rec.wait_event("speaking_stopped", "up", timeout=60)
            async with asyncio.timeout(30):  # hang guard
                await sender
    body = stopped.msg.event.speaking_stopped
    assert body.reason == lpb.STOP_REASON_INTERRUPTED
    # about 1 s played (a generous bound: the old gateway played ~16 s of the 20)
    assert body.samples_played < 6 * body.sample_rate, body
