"""The Python client's live-session helpers end their turns whatever happens to the input."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from talkmesh.client import TalkmeshClient
from talkmesh.v1 import live_pb2 as lpb
from tests.live_helpers import Recorder
from tests.mesh import inprocess_mesh


async def test_a_failing_llm_stream_still_ends_its_turn_and_the_next_one_plays(tmp_path: Path) -> None:
    async def llm():
        yield "Hello there, "
        yield "I was about to "
        await asyncio.sleep(0.05)
        raise ConnectionError("the LLM's stream dropped")

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            with pytest.raises(ConnectionError):
                await live.say_stream(llm(), turn_id="cut")
            sorry = await live.say("Sorry, something went wrong.")
            first = await rec.wait_event("speaking_stopped", "cut", timeout=30)
            second = await rec.wait_event("speaking_stopped", sorry, timeout=30)
            await live.close()
            await rec.finish()
    assert first.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED  # what was sent played
    assert second.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED
    assert not [r for r in rec.messages if r.kind == "error"]


async def test_an_llm_piece_that_is_not_text_is_a_clear_error_and_none_is_skipped(tmp_path: Path) -> None:
    """An agent that passes its SDK's chunk objects instead of their text gets a TypeError naming
    what it gave (not protobuf's "bad argument type for built-in operation"); a None piece (an
    OpenAI delta without content) is skipped; the turn plays what came before either way."""

    class Chunk:  # an LLM SDK's streamed chunk, not its text
        def __repr__(self) -> str:
            return "Chunk(delta='world')"

    async def llm(bad: object):
        yield "Hello "
        yield None
        yield bad
        yield "never sent."

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            with pytest.raises(TypeError, match=r"say_stream: a piece must be str \(the text\), not Chunk: Chunk\("):
                await live.say_stream(llm(Chunk()), turn_id="chunk")
            with pytest.raises(TypeError, match="not int: 42"):
                await live.say_stream(llm(42), turn_id="int")
            stopped = [await rec.wait_event("speaking_stopped", tid, timeout=30) for tid in ("chunk", "int")]
            await live.close()
            await rec.finish()
        with pytest.raises(TypeError, match=r"speak_stream: a piece must be str \(the text\), not Chunk"):
            async for _ in client.speak_stream(llm(Chunk())):
                pass
    assert [s.msg.event.speaking_stopped.reason for s in stopped] == [lpb.STOP_REASON_COMPLETED] * 2
    captions = [r.msg.event.caption.text for r in rec.messages if r.kind == "event" and r.event == "caption"]
    assert captions == ["Hello", "Hello"]


async def test_pieces_of_audio_of_any_size_play_whole(tmp_path: Path) -> None:
    rate = 16000
    pcm = bytes(2 * rate * 3)  # 3 s of silence in one piece: sent as pieces of at most a second
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            tid = await live.say_audio(pcm, rate)
            empty = await live.say_audio([], rate)  # nothing recorded: a turn that ends at once
            stopped = await rec.wait_event("speaking_stopped", tid, timeout=30)
            nothing = await rec.wait_event("speaking_stopped", empty, timeout=30)
            await live.close()
            await rec.finish()
    assert not [r for r in rec.messages if r.kind == "error"], [r.msg.error for r in rec.messages if r.kind == "error"]
    assert stopped.msg.event.speaking_stopped.samples_played == rate * 3
    assert nothing.msg.event.speaking_stopped.samples_played == 0


async def test_the_agent_example_runs_as_written(tmp_path: Path) -> None:
    """docs/examples/agent_live.py: a reply played to its end, a barge-in, the next reply."""
    import os
    import sys

    example = Path(__file__).resolve().parents[1] / "docs" / "examples" / "agent_live.py"
    async with inprocess_mesh(tmp_path) as mesh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(example), cwd=tmp_path, env={**os.environ, "TALKMESH_TARGET": mesh.gateway},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith("STOP_REASON_COMPLETED") and lines[1].startswith("STOP_REASON_INTERRUPTED"), lines
    assert float(lines[1].split()[1]) < float(lines[0].split()[1])  # the barge-in cut the long reply
    assert "error" not in out.decode()
    assert (tmp_path / "agent.mp4").stat().st_size > 10_000


async def test_an_llm_reply_with_no_text_at_all_is_a_turn_that_ends(tmp_path: Path) -> None:
    async def nothing():
        return
        yield ""

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            tid = await live.say_stream(nothing())
            after = await live.say("Next.")
            stopped = await rec.wait_event("speaking_stopped", tid, timeout=30)
            await rec.wait_event("speaking_stopped", after, timeout=30)
            await live.close()
            await rec.finish()
    assert stopped.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED
    assert stopped.msg.event.speaking_stopped.samples_played == 0
    assert not [r for r in rec.messages if r.kind == "error"]


async def test_a_reply_interrupted_before_the_models_first_token_never_plays(tmp_path: Path) -> None:
    """A barge-in during the model's first-token delay names a turn that already exists."""
    first_token = asyncio.Event()

    async def slow_llm():
        await first_token.wait()
        yield "This reply was interrupted before its first word and must not be heard."

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            reply = asyncio.create_task(live.say_stream(slow_llm(), turn_id="reply"))
            await asyncio.sleep(0.3)
            await live.interrupt("reply")  # the user barges in; the model has written nothing yet
            stopped = await rec.wait_event("speaking_stopped", "reply", timeout=20)
            first_token.set()
            await reply
            after = await live.say("Yes?")
            await rec.wait_event("speaking_stopped", after, timeout=30)
            await live.close()
            await rec.finish()
    assert stopped.msg.event.speaking_stopped.reason == lpb.STOP_REASON_INTERRUPTED
    assert stopped.msg.event.speaking_stopped.samples_played == 0
    assert not [r for r in rec.messages if r.kind == "error"], [r.msg.error for r in rec.messages if r.kind == "error"]
    assert not rec.events("speaking_started") or all(
        r.msg.event.speaking_started.turn_id != "reply" for r in rec.events("speaking_started")
    )


async def test_sending_after_close_or_after_the_end_raises_session_ended(tmp_path: Path) -> None:
    """Not grpc.aio's InvalidStateError ("RPC is half closed", "RPC already finished"): one
    exception of the client's that says what happened."""
    from talkmesh.client import SessionEnded

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()
            tid = await live.say("Hi.")
            await live.close()
            with pytest.raises(SessionEnded, match="closed"):
                await live.say("Too late.")
            with pytest.raises(SessionEnded):
                await live.interrupt()
            await live.close()  # twice is fine
            await rec.finish()  # the turn sent before close() played
        assert rec.events("speaking_stopped")[-1].msg.event.speaking_stopped.turn_id == tid
        assert rec.events("speaking_stopped")[-1].msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED

        async with client.live(idle_timeout=1.0) as live:
            rec = Recorder(live).start()
            await rec.finish()  # the session ends on its idle timeout
            with pytest.raises(SessionEnded, match="has ended"):
                await live.say("Anyone there?")


async def test_an_llm_error_after_the_session_ended_is_the_error_say_stream_raises(tmp_path: Path) -> None:
    """say_stream ends its turn whatever happens; when the session is what ended, that end is
    not sent, and the caller gets the LLM's own error, not SessionEnded."""

    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        async with client.live() as live:
            rec = Recorder(live).start()

            async def llm():  # type: ignore[no-untyped-def]
                yield "Hello there, "
                await live.close()  # the session stops taking input while the LLM still runs
                raise ValueError("the LLM failed")

            with pytest.raises(ValueError, match="the LLM failed"):
                await live.say_stream(llm())
            await rec.finish()
