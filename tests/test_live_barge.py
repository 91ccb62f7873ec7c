"""Barge-in while a turn's input is still coming: the interrupt is not held behind that input, and
the client stops reading the caller's source once its turn takes no more input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from talkmesh.client import SessionEnded, TalkmeshClient
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


async def _stalling_model(tokens: list[str], closed: asyncio.Event, pulled: list[str]) -> AsyncIterator[str]:
    """An LLM's stream: ``tokens``, then it goes on "thinking" for ever; ``closed`` is set when the
    stream is closed or cancelled (its request would be cancelled), ``pulled`` has what was read."""
    try:
        for token in tokens:
            pulled.append(token)
            yield token
        await asyncio.Event().wait()
        yield "never read"
    except (GeneratorExit, asyncio.CancelledError):
        closed.set()
        raise


async def test_say_stream_stops_reading_the_model_once_its_turn_is_interrupted(tmp_path: Path) -> None:
    """The model's stream is closed (its request cancelled) and say_stream returns: it used to
    read the model's tokens to their end (here: a model that stalls, so it never returned)."""
    closed, pulled = asyncio.Event(), list[str]()

    def llm() -> AsyncIterator[str]:
        return _stalling_model(["and so the story goes on, "] * 20, closed, pulled)

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            reply = asyncio.create_task(live.say_stream(llm(), turn_id="reply"))
            await rec.wait_event("speaking_started", "reply", timeout=30)
            await live.interrupt("reply")
            async with asyncio.timeout(30):  # hang guard: the old say_stream waited for the model
                assert await reply == "reply"
            stopped = await rec.wait_event("speaking_stopped", "reply", timeout=30)
            after = await live.say("Yes?")
            await rec.wait_event("speaking_stopped", after, timeout=30)
            await live.close()
            await rec.finish()
    assert closed.is_set() and len(pulled) == 20
    assert stopped.msg.event.speaking_stopped.reason == lpb.STOP_REASON_INTERRUPTED
    assert not [r for r in rec.messages if r.kind == "error"], [r.msg.error for r in rec.messages if r.kind == "error"]


async def test_say_stream_of_a_reply_over_the_turns_limit_returns_at_the_refusal(tmp_path: Path) -> None:
    """Text past the turn's 5000 characters is one in-band LiveError and ends the turn's input
    (what it had plays); say_stream then stops reading the model and returns, as say does."""
    closed = asyncio.Event()

    def llm() -> AsyncIterator[str]:  # 6000 characters; the model would go on: it is closed at the refusal
        return _stalling_model(["x" * 99 + " "] * 60, closed, [])

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            async with asyncio.timeout(30):  # hang guard: the old say_stream waited for the model
                assert await live.say_stream(llm(), turn_id="long") == "long"
            error = await rec.wait_for(lambda r: r.kind == "error", timeout=30)
            await live.interrupt()
            await rec.wait_event("speaking_stopped", "long", timeout=30)
    assert closed.is_set()
    assert error.msg.error.turn_id == "long" and error.msg.error.field == "text.text"
    assert "over the limit of 5000" in error.msg.error.message


async def test_sending_after_leaving_async_with_says_the_client_closed_the_session(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            tid = await live.say("Hello there, this is a sentence long enough to be cut.")
            await rec.wait_event("speaking_started", tid, timeout=30)
        with pytest.raises(SessionEnded, match="`async with` block was left"):
            await live.say("x")
        await asyncio.gather(rec.task, return_exceptions=True)  # type: ignore[arg-type]
