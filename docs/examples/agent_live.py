"""An LLM agent with a face: each reply is spoken on a live avatar as the model writes it, and the
user can barge in (interrupt) at any time.

    .venv/bin/talkmesh up          # in another terminal
    .venv/bin/python docs/examples/agent_live.py

The session's video goes to agent.mp4 (a browser would append it to a MediaSource). Replace
``llm_reply`` with your model's token stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools

from talkmesh.client import LiveSession, TalkmeshClient, refused_for_room
from talkmesh.v1 import live_pb2 as lpb


async def llm_reply(question: str, sentences: int = 1):  # your model's streamed answer, token by token
    answer = f"You asked: *{question}*" + " Here is an **answer**, written a few words at a time." * sentences
    for word in answer.split(" "):
        yield word + " "
        await asyncio.sleep(0.03)


class Avatar:
    """Reads the session in the background (never stalls the player) and tells each turn's end."""

    def __init__(self, live: LiveSession, video_path: str) -> None:
        self.live = live
        self.video = open(video_path, "wb")
        self.stopped: dict[str, asyncio.Future[lpb.SpeakingStopped]] = {}
        self.ids = (f"reply-{n}" for n in itertools.count(1))
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            await self._read_session()
        finally:  # the session is over (its stream ended, or failed): no turn waits for ever
            for waiting in self.stopped.values():
                if not waiting.done():
                    waiting.set_exception(RuntimeError("the live session ended before the turn did"))

    async def _read_session(self) -> None:
        async for msg in self.live:
            kind = msg.WhichOneof("kind")
            if kind == "media":
                self.video.write(msg.media.data)
            elif kind == "error":  # a refused message or a failed turn: the session goes on
                print("error:", msg.error.message)
                if refused_for_room(msg.error):  # the turn never starts: no speaking_stopped comes
                    waiting = self.stopped.get(msg.error.turn_id)
                    if waiting is not None and not waiting.done():
                        waiting.set_exception(RuntimeError(msg.error.message))
            elif kind == "event" and msg.event.WhichOneof("kind") == "speaking_stopped":
                stopped = msg.event.speaking_stopped
                waiting = self.stopped.setdefault(stopped.turn_id, asyncio.get_running_loop().create_future())
                if not waiting.done():
                    waiting.set_result(stopped)

    def reply(self, pieces) -> tuple[str, asyncio.Task[str], asyncio.Future[lpb.SpeakingStopped]]:
        """Starts speaking a reply as the model writes it: its turn id (to interrupt it), the task
        that sends the model's text (cancel it to stop the model), and the future of its end."""
        turn_id = next(self.ids)
        done = self.stopped.setdefault(turn_id, asyncio.get_running_loop().create_future())
        # say_stream ends the turn however the text stops: at its end, on the model's error, or
        # when the task is cancelled (what was sent still plays, unless interrupted)
        sending = asyncio.create_task(self.live.say_stream(pieces, turn_id=turn_id))
        return turn_id, sending, done

    async def barge_in(self, turn_id: str, sending: asyncio.Task[str]) -> lpb.SpeakingStopped:
        """The user started talking: stop the model (no more text for the turn) and the avatar (the
        turn is cut at the next frame; nothing of it plays after interrupt_acknowledged)."""
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        await self.live.interrupt(turn_id)
        return await self.stopped[turn_id]

    async def close(self) -> None:
        await self.live.close()  # what is queued plays, then the stream ends
        await self.reader
        self.video.close()


async def spoken(
    sending: asyncio.Task[str], done: asyncio.Future[lpb.SpeakingStopped]
) -> tuple[lpb.SpeakingStopped, BaseException | None]:
    """A reply's end, and the model's error if its stream failed: the turn then played the text it
    got and ends COMPLETED, but the reply was cut short (keep only what was heard)."""
    try:
        await sending
        failure = None
    except Exception as exc:
        failure = exc
    return await done, failure


def heard(stopped: lpb.SpeakingStopped) -> float:
    """Seconds of the reply the user heard (the LLM's context should keep only that much)."""
    return stopped.samples_played / stopped.sample_rate if stopped.sample_rate else 0.0


async def main() -> None:
    # models answer in Markdown: its markup (the `*` of emphasis, link addresses, emoji) is not read
    async with TalkmeshClient() as client, client.live(voice="espeak:en-us", markdown=True) as live:
        avatar = Avatar(live, "agent.mp4")
        # 1. a reply played to its end
        _, sending, done = avatar.reply(llm_reply("What is talkmesh?"))
        stopped, failure = await spoken(sending, done)
        print(lpb.StopReason.Name(stopped.reason), f"{heard(stopped):.1f} s heard")
        if failure is not None:
            print("the model failed, the reply was cut short:", failure)
        # 2. the user barges in while the model is still writing and the avatar speaking: stop both,
        # keep only what was heard in the model's context, answer the new question
        turn_id, sending, _ = avatar.reply(llm_reply("Tell me a long story.", sentences=20))
        await asyncio.sleep(1.0)
        stopped = await avatar.barge_in(turn_id, sending)
        print(lpb.StopReason.Name(stopped.reason), f"{heard(stopped):.1f} s heard")
        _, sending, done = avatar.reply(llm_reply("Sorry, a short one instead?"))
        await spoken(sending, done)
        await avatar.close()


if __name__ == "__main__":
    asyncio.run(main())
