"""A live session's reader at the gateway: a turn's input that finds its queue full does not stop
the reader (an interrupt behind it is handled at once), and what it holds is bounded (fake
stages, no mesh; nothing consumes the turns' queues unless the test does)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable

from services.gateway.config import GatewayConfig
from services.gateway.live import LiveHub, LiveSession
from talkmesh.common.aio import cancel_and_wait
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import live_pb2 as lpb
from tests.gateway.fakes import FakeDownstreams

RATE = 16000
CHUNK = b"\x01\x00" * (RATE // 50)  # 20 ms
QUEUE = 4  # live.turn_audio_chunks
#: what an audio turn holds beyond its queue: as many seconds of audio as the queue takes chunks
HELD_CHUNKS = QUEUE * 2 * RATE // len(CHUNK)


def _session() -> LiveSession:
    config = GatewayConfig()
    config = dataclasses.replace(config, live=dataclasses.replace(config.live, turn_audio_chunks=QUEUE))
    hub = LiveHub(config, Telemetry("gateway"), FakeDownstreams())
    session = LiveSession(hub, "sid", lpb.LiveConfig(), "rid", None)
    session.started.set()
    session.span = hub.telemetry.tracer.start_span("test")
    return session


def _audio(turn_id: str) -> lpb.LiveClientMessage:
    return lpb.LiveClientMessage(audio=lpb.SpeakAudio(turn_id=turn_id, sample_rate=RATE, pcm=CHUNK))


async def _until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(30):  # a hang guard, not a timing
        while not predicate():
            await asyncio.sleep(0.005)


async def _flooded(session: LiveSession) -> tuple[asyncio.Task[None], Callable[[], int]]:
    """A reader of a client that floods turn "A" with audio, once it has taken the queue, what the
    turn may hold, and the piece waiting for room; and how many pieces the client gave so far."""
    pulled = 0

    async def client() -> AsyncIterator[lpb.LiveClientMessage]:
        nonlocal pulled
        for _ in range(10 * HELD_CHUNKS):
            pulled += 1
            yield _audio("A")

    reader = asyncio.create_task(session._read_client(client()))
    await _until(lambda: pulled >= QUEUE + HELD_CHUNKS + 1, "the reader to take the queue and what may be held")
    return reader, lambda: pulled


async def test_an_interrupt_behind_a_turns_full_input_queue_is_read_at_once_and_drops_what_it_held() -> None:
    """A client sending audio far faster than real time filled the turn's queue; the reader used
    to wait for room there (room comes only as playback goes on), and the interrupt sent behind
    the audio was read only then. Now it is read at once, and the held audio goes with the turn."""
    session = _session()

    async def client() -> AsyncIterator[lpb.LiveClientMessage]:
        for _ in range(50):  # more than the queue takes, within what the turn may hold
            yield _audio("A")
        yield lpb.LiveClientMessage(interrupt=lpb.Interrupt(turn_id="A"))

    reader = asyncio.create_task(session._read_client(client()))
    try:
        async with asyncio.timeout(30):  # hang guard: the old reader waits for room for ever
            await reader
        turn = session.turns["A"]
        assert "A" in session.stopped
        assert turn.input_done and not turn.held and turn.held_size == 0
        assert turn.audio.closed
        interrupts = [m for m in session.control.clear() if m.interrupt]
        assert [m.turn_id for m in interrupts] == ["A"]
    finally:
        await cancel_and_wait(reader)
        await session.tasks.aclose()


async def test_a_client_that_floods_a_turn_is_still_held_back_once_the_turn_holds_its_limit() -> None:
    """What a turn holds is bounded: past it the reader waits (gRPC flow control holds the client
    back), and it reads on as playback makes room."""
    session = _session()
    reader, pulled = await _flooded(session)
    try:
        limit = QUEUE + HELD_CHUNKS + 1
        for _ in range(100):
            await asyncio.sleep(0)
        assert pulled() == limit and not reader.done()
        turn = session.turns["A"]
        assert turn.audio.qsize() == QUEUE and len(turn.held) == HELD_CHUNKS
        await turn.audio.recv()  # playback takes a chunk: one held goes into the queue...
        await _until(lambda: pulled() == limit + 1, "the reader to go on")  # ...and the reader reads one more
        await session._interrupt("A")  # (the reader is waiting for room again: it is let go)
        await _until(lambda: pulled() > limit + 1, "the reader to read on after the interrupt")
        assert not turn.held and turn.held_size == 0
    finally:
        await cancel_and_wait(reader)
        await session.tasks.aclose()


async def test_a_turn_that_ends_on_the_encoder_lets_go_of_a_reader_waiting_to_hold_more() -> None:
    """A turn that ends without an interrupt (it failed there: its speaking_stopped) drops what it
    held, and a reader waiting for room in it reads on: nothing polls for that any more."""
    session = _session()
    reader, pulled = await _flooded(session)
    try:
        limit = QUEUE + HELD_CHUNKS + 1
        turn = session.turns["A"]
        feeder = turn.feeder
        assert feeder is not None and not reader.done()
        session._turn_over("A")
        await _until(lambda: pulled() > limit, "the reader to read on")
        await _until(feeder.done, "the feeder to end")
        assert not turn.held and turn.held_size == 0 and turn.audio.closed
        assert "A" in session.stopped
    finally:
        await cancel_and_wait(reader)
        await session.tasks.aclose()


async def test_a_full_session_that_is_ending_refuses_a_new_turn_for_its_end_not_for_room() -> None:
    """A client at live.max_pending_turns was told RESOURCE_EXHAUSTED "retry in 1 s" by a session
    that was ending (and got no FAILED speaking_stopped for the turn)."""
    import pytest

    from talkmesh.common.errors import FailedPrecondition

    session = _session()
    try:
        for i in range(session.sizes.pending_turns):
            session.turns[f"t{i}"] = None  # type: ignore[assignment]  # (only counted)
        session.refusing_turns = True
        with pytest.raises(FailedPrecondition, match="the session is ending"):
            await session._new_turn("late", "text", lpb.SpeakText(turn_id="late", text="Hi."))
        assert "late" in session.refused  # so it gets its FAILED speaking_stopped
    finally:
        session.turns.clear()
        await session.tasks.aclose()
