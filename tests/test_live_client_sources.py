"""`say_stream` and `say_audio` read the caller's source (an LLM's tokens, a microphone) in the
caller's own task: the source's timeouts, cancel scopes and context variables span its yields as
they would in a plain ``async for`` (a review found each step run in a task of its own: a
timeout around the model's stream never fired, an anyio scope raised, a context variable was
lost). A turn that takes no more input still stops the wait at once, and a source that fails
still ends its turn. No mesh: a stand-in for the gRPC call records what is written."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator

import pytest

from talkmesh.client import LiveSession
from talkmesh.v1 import live_pb2 as lpb

HANG_GUARD = 10.0  # a failing test ends here instead of hanging; not a timing assertion


class _Call:
    def __init__(self) -> None:
        self.written: list[lpb.LiveClientMessage] = []

    async def write(self, msg: lpb.LiveClientMessage) -> None:
        await asyncio.sleep(0)  # a real write gives the loop a turn
        self.written.append(msg)

    def done(self) -> bool:
        return False


def _live() -> tuple[LiveSession, _Call]:
    live = LiveSession(None, lpb.LiveConfig(), None)  # type: ignore[arg-type]
    call = _Call()
    live._call = call
    return live, call


def _texts(call: _Call) -> list[str]:
    return [m.text.text for m in call.written if m.HasField("text")]


async def test_a_timeout_around_the_models_stream_fires_across_its_yields() -> None:
    live, _ = _live()

    async def llm() -> AsyncIterator[str]:
        async with asyncio.timeout(0.2):  # "the whole reply within N s"
            yield "Hello "
            await asyncio.Event().wait()  # the model stalls
            yield "never"

    async with asyncio.timeout(HANG_GUARD):
        with pytest.raises(TimeoutError):
            await live.say_stream(llm(), turn_id="t")


VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


async def test_a_context_variable_the_source_sets_survives_its_yields() -> None:
    live, call = _live()
    seen: list[str] = []

    async def llm() -> AsyncIterator[str]:
        VAR.set("set by the model's client")
        yield "a "
        seen.append(VAR.get())
        yield "b"

    await live.say_stream(llm(), turn_id="t")
    assert seen == ["set by the model's client"]
    assert _texts(call) == ["", "a ", "b"]
    assert [m.end_of_turn.turn_id for m in call.written if m.HasField("end_of_turn")] == ["t"]


async def test_an_anyio_cancel_scope_across_the_sources_yields() -> None:
    anyio = pytest.importorskip("anyio")
    live, call = _live()

    async def llm() -> AsyncIterator[str]:
        with anyio.fail_after(5):
            yield "a "
            yield "b"

    await live.say_stream(llm(), turn_id="t")
    assert _texts(call) == ["", "a ", "b"]


async def test_an_interrupt_stops_the_wait_for_a_stalled_source_and_closes_it() -> None:
    live, call = _live()
    closed = asyncio.Event()

    async def llm() -> AsyncIterator[str]:
        try:
            yield "Hello "
            await asyncio.Event().wait()  # the model goes on "thinking"
            yield "never"
        finally:
            closed.set()

    sending = asyncio.create_task(live.say_stream(llm(), turn_id="t"))
    while _texts(call) != ["", "Hello "]:
        await asyncio.sleep(0.01)
    await live.interrupt("t")
    async with asyncio.timeout(HANG_GUARD):
        assert await sending == "t"
    assert closed.is_set(), "the model's stream was not closed"
    assert _texts(call) == ["", "Hello "]
    assert [m.end_of_turn.turn_id for m in call.written if m.HasField("end_of_turn")] == ["t"]
    assert [m.interrupt.turn_id for m in call.written if m.HasField("interrupt")] == ["t"]


async def test_a_failing_recording_still_ends_its_turn() -> None:
    live, call = _live()

    async def mic() -> AsyncIterator[bytes]:
        yield b"\x00\x00" * 320
        raise ConnectionError("the microphone went away")

    with pytest.raises(ConnectionError):
        await live.say_audio(mic(), 16000, turn_id="a")
    audio = [m.audio for m in call.written if m.HasField("audio")]
    assert [a.final for a in audio] == [False, True], "the turn stays open: every later turn waits 30 s"
    assert all(a.turn_id == "a" for a in audio)


async def test_a_second_stop_while_the_first_is_ending_the_wait_is_harmless() -> None:
    """interrupt() then the gateway's acknowledgement (or two interrupts) stop the turn twice;
    the second came while the first was still ending the wait (a model client closing its HTTP
    response on the way out): it raised RuntimeError from the caller's reading loop (a review)."""
    live, call = _live()

    async def llm() -> AsyncIterator[str]:
        try:
            yield "Hello "
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # closing the model's response takes a round trip

    sending = asyncio.create_task(live.say_stream(llm(), turn_id="t"))
    while _texts(call) != ["", "Hello "]:
        await asyncio.sleep(0.01)
    await live.interrupt("t")
    await asyncio.sleep(0.01)
    acknowledged = lpb.InterruptAcknowledged(stopped_turn_ids=["t"])
    ack = lpb.LiveServerMessage(event=lpb.LiveEvent(interrupt_acknowledged=acknowledged))
    live._seen(ack)  # the acknowledgement, as the caller's `async for msg in live` reads it
    await live.interrupt()
    async with asyncio.timeout(HANG_GUARD):
        assert await sending == "t"


async def test_an_interrupt_the_source_itself_sends_is_written() -> None:
    """A barge-in detector inside the model's stream interrupts its own turn: the interrupt is
    sent (it was cut off inside the source's own wait and taken for a stop), and the turn ends."""
    live, call = _live()

    async def llm() -> AsyncIterator[str]:
        yield "Hello "
        await live.interrupt("t")
        yield "never sent"

    async with asyncio.timeout(HANG_GUARD):
        assert await live.say_stream(llm(), turn_id="t") == "t"
    kinds = [m.WhichOneof("kind") for m in call.written]
    assert kinds == ["text", "text", "interrupt", "end_of_turn"], kinds
    assert _texts(call) == ["", "Hello "]


class _GrpcLikeCall(_Call):
    """Like grpc.aio: a write that is cancelled cancels the whole call (later writes fail)."""

    def __init__(self) -> None:
        super().__init__()
        self.call_cancelled = False
        self.in_write = asyncio.Event()
        self.release = asyncio.Event()

    async def write(self, msg: lpb.LiveClientMessage) -> None:
        if self.call_cancelled:
            raise asyncio.InvalidStateError("the call has finished")
        if msg.HasField("text") and msg.text.text == "slow ":
            self.in_write.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.call_cancelled = True
                raise
        self.written.append(msg)


async def test_cancelling_say_stream_in_the_middle_of_a_write_leaves_the_session_open() -> None:
    """docs/examples/agent_live.py's barge-in cancels the task sending the model's text: when the
    cancellation came while a piece was being written, gRPC cancelled the whole session (its
    interrupt then raised SessionEnded; seen once in CI). The write now finishes first."""
    live, _ = _live()
    call = _GrpcLikeCall()
    live._call = call

    async def llm() -> AsyncIterator[str]:
        yield "slow "
        yield "never"

    sending = asyncio.create_task(live.say_stream(llm(), turn_id="t"))
    async with asyncio.timeout(HANG_GUARD):
        await call.in_write.wait()
        sending.cancel()
        await asyncio.sleep(0.01)
        call.release.set()
        with pytest.raises(asyncio.CancelledError):
            await sending
    assert not call.call_cancelled, "the session was cancelled with the write"
    await live.interrupt("t")  # the session goes on
    kinds = [m.WhichOneof("kind") for m in call.written]
    assert kinds == ["text", "text", "end_of_turn", "interrupt"], kinds
