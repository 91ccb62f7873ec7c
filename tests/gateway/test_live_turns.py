"""A live session's turn bookkeeping at the gateway, against fake stages (no mesh)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from opentelemetry import trace

from services.gateway.config import GatewayConfig
from services.gateway.live import GatewayTurn, LiveHub, LiveSession
from talkmesh.common.aio import Chan, cancel_and_wait
from talkmesh.common.calls import Stream
from talkmesh.common.errors import TalkmeshError
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import live_pb2 as lpb
from tests.gateway.fakes import FakeDownstreams


async def test_a_refused_later_piece_of_a_turn_that_ends_meanwhile_adds_no_second_stop() -> None:
    """Only a turn refused at its first message gets the gateway's own speaking_stopped; which it
    is, is decided when the message is refused, not after the error waited for room to the client
    (the turn may have ended by then, with its own speaking_stopped)."""
    hub = LiveHub(GatewayConfig(), Telemetry("gateway"), FakeDownstreams())
    session = LiveSession(hub, "sid", lpb.LiveConfig(), "rid", None)
    session.started.set()
    turn = GatewayTurn("T", "text", text=Chan(4), audio=Chan(4))
    turn.end_input()  # the client's last piece said final
    session.turns["T"] = turn
    while not session.out.full():  # a slow client: its queue is full
        session.out.send_nowait(lpb.LiveServerMessage())

    async def client():
        yield lpb.LiveClientMessage(text=lpb.SpeakText(turn_id="T", text="more"))  # after final: refused
        yield lpb.LiveClientMessage(text=lpb.SpeakText(turn_id="U", text="bell\x07"))  # a first piece: refused

    reader = asyncio.create_task(session._read_client(client()))
    await asyncio.sleep(0.05)  # the reader waits to send T's error
    session._turn_over("T")  # meanwhile T ends (the encoder's speaking_stopped goes through the pump)
    out = []
    while not reader.done() or session.out.qsize():
        out.append(await session.out.recv())
    await reader
    stops = [m.event.speaking_stopped for m in out if m.WhichOneof("kind") == "event"]
    errors = [m.error.turn_id for m in out if m.WhichOneof("kind") == "error"]
    assert errors == ["T", "U"]
    assert [(s.turn_id, s.reason) for s in stops] == [("U", lpb.STOP_REASON_FAILED)]


async def test_an_interrupt_while_a_turn_waits_for_its_voice_check_leaves_the_check_running() -> None:
    """The check's answer is what the dropped turn's speaking_stopped reports (its voice, its
    rate): cancelling the turn must not cancel the check."""
    hub = LiveHub(GatewayConfig(), Telemetry("gateway"), FakeDownstreams())
    session = LiveSession(hub, "sid", lpb.LiveConfig(), "rid", None)
    answered = asyncio.Event()

    async def slow_check() -> TalkmeshError | None:
        await answered.wait()
        return None

    turn = GatewayTurn("T", "text", text=Chan(4), audio=Chan(4), voice="espeak:fr-fr")
    turn.voice_check = asyncio.create_task(slow_check())
    running = asyncio.create_task(session._run_turn(turn))
    await asyncio.sleep(0.02)
    running.cancel()  # an interrupt
    await asyncio.gather(running, return_exceptions=True)
    assert running.cancelled() and not turn.voice_check.done()
    answered.set()
    assert await turn.voice_check is None


class _Messages(Stream):
    """An encoder stream that yields the given messages, then ends."""

    def __init__(self, *messages: lpb.LiveServerMessage) -> None:
        self.messages = messages

    async def _gen(self) -> AsyncIterator[lpb.LiveServerMessage]:
        for msg in self.messages:
            yield msg

    def __aiter__(self) -> AsyncIterator[lpb.LiveServerMessage]:
        return self._gen()

    async def cancel(self) -> None:
        pass


def _session() -> LiveSession:
    hub = LiveHub(GatewayConfig(), Telemetry("gateway"), FakeDownstreams())
    session = LiveSession(hub, "sid", lpb.LiveConfig(), "rid", None)
    session.started.set()
    session.span = trace.INVALID_SPAN
    return session


def _stopped(turn_id: str, reason: int) -> lpb.LiveServerMessage:
    body = lpb.SpeakingStopped(turn_id=turn_id, reason=reason)  # type: ignore[arg-type]
    return lpb.LiveServerMessage(event=lpb.LiveEvent(speaking_stopped=body))


@pytest.mark.parametrize("reason", [lpb.STOP_REASON_INTERRUPTED, lpb.STOP_REASON_COMPLETED])
async def test_a_turn_the_encoder_stopped_ends_its_sending_and_the_next_turn_runs(monkeypatch, reason) -> None:
    """A turn the encoder reports stopped, for any reason, is over: its task, waiting for read-ahead
    room that its playback (stopped) will never make, is cancelled, and the turns behind it run."""
    session = _session()
    ran: list[str] = []

    async def run_turn(turn: GatewayTurn) -> None:
        ran.append(turn.turn_id)
        if turn.turn_id == "T":
            turn.samples_sent = 10 * session.rate * int(session.cfg.max_audio_ahead_seconds + 1)
            await session._room(turn)  # over the budget: waits for playback

    monkeypatch.setattr(session, "_run_turn", run_turn)
    turns = {tid: GatewayTurn(tid, "audio", text=Chan(4), audio=Chan(4)) for tid in ("T", "U")}
    for turn in turns.values():
        session.turns[turn.turn_id] = turn
        session.waiting[turn.turn_id] = turn
    session.turn_waiting.set()
    runner = asyncio.create_task(session._run_turns())
    try:
        while turns["T"].task is None or ran != ["T"]:  # T waits for room
            await asyncio.sleep(0)
        await session._pump_encoder(_Messages(_stopped("T", reason)))
        async with asyncio.timeout(10):  # (a hang guard)
            while ran != ["T", "U"]:
                await asyncio.sleep(0.01)
    finally:
        await cancel_and_wait(runner)


async def test_underrun_repeats_are_not_played_frames_of_the_turn() -> None:
    """A repeated frame (an underrun) shows the turn but plays none of it: the turn's frames
    played, its read-ahead room and its input-quiet clock do not move with it."""
    session = _session()
    turn = GatewayTurn("T", "audio", text=Chan(4), audio=Chan(4))
    session.turns["T"] = turn
    turn.samples_sent = int(session.cfg.max_audio_ahead_seconds * session.rate) + session.clock.start(1)
    turn.quiet_since = quiet = 0.0
    room = asyncio.create_task(session._room(turn))  # one frame over the budget
    repeats = [
        lpb.LiveServerMessage(media=lpb.LiveMedia(first_frame=n, frame_count=1, turn_id="T", underrun=True))
        for n in range(3)
    ]
    await session._pump_encoder(_Messages(*repeats))
    await asyncio.sleep(0)  # (the room task would run now if woken)
    assert (turn.frames_played, turn.quiet_since, room.done()) == (0, quiet, False)
    played = lpb.LiveServerMessage(media=lpb.LiveMedia(first_frame=3, frame_count=1, turn_id="T"))
    session.out = Chan(session.sizes.stream)  # (the pump closed the last one at its end)
    await session._pump_encoder(_Messages(played))
    async with asyncio.timeout(10):  # (a hang guard)
        await room
    assert turn.frames_played == 1 and turn.quiet_since > quiet


async def test_a_watch_that_joins_as_its_session_ends_ends_too() -> None:
    """A viewer whose first messages were being sent as the session ended used to be added to the
    ended session's watchers afterwards, and waited for ever; it now ends with the session."""
    hub = LiveHub(GatewayConfig(), Telemetry("gateway"), FakeDownstreams())
    session = LiveSession(hub, "sid", lpb.LiveConfig(), "rid", None)
    session.started_msg = lpb.LiveServerMessage(started=lpb.SessionStarted(session_id="sid"))
    session.init_msg = lpb.LiveServerMessage(media=lpb.LiveMedia(init_segment=True))
    hub.sessions["sid"] = session
    watch = hub.watch("sid")
    try:
        assert (await anext(watch)).WhichOneof("kind") == "started"
        session.closed = True  # the session ends while the viewer reads its first message (run's finally)
        for feed in session.watchers:
            feed.close()
        hub.sessions.pop("sid")
        assert (await anext(watch)).media.init_segment
        async with asyncio.timeout(5):  # (a hang guard)
            with pytest.raises(StopAsyncIteration):
                await anext(watch)
        late = hub.watch("sid")  # (the session is gone: NOT_FOUND, as for any unknown id)
        hub.sessions["sid"] = session
        with pytest.raises(TalkmeshError) as err:
            await anext(late)
        assert err.value.code.name == "NOT_FOUND"
    finally:
        await watch.aclose()
        await session.tasks.aclose()
