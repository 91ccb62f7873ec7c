"""A live session's turn bookkeeping at the gateway, against fake stages (no mesh)."""

from __future__ import annotations

import asyncio

from services.gateway.config import GatewayConfig
from services.gateway.live import GatewayTurn, LiveHub, LiveSession
from talkmesh.common.aio import Chan
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
