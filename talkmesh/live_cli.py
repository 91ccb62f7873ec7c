"""`talkmesh live`: a live session from the terminal.

Type a line and press Enter to speak it; ``--audio FILE`` (repeatable) speaks your own recordings
first, one turn each; an empty line (or Ctrl-C while the avatar speaks or has turns queued)
interrupts; Ctrl-D (end of input) lets the queued turns finish and ends the session; Ctrl-C while
idle, or after Ctrl-D, quits. The stream is written to a file as it arrives (fragmented MP4: play
it with any player afterwards, or watch it grow with ``ffplay``), and the session's events are
printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from talkmesh.client import LiveSession, TalkmeshClient, refused_for_room
from talkmesh.common.aio import TaskSet, cancel_and_wait
from talkmesh.common.enums import short_name
from talkmesh.common.registry import SIZE_PRESETS, spec
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import types_pb2

#: ``--still`` of `talkmesh live` and `talkmesh say` (LiveConfig / OutputOptions.idle_motion OFF).
STILL_HELP = "a still avatar: no blinks or head motion, only the mouth moves (idle_motion IDLE_MOTION_OFF)"


def idle_motion(args: argparse.Namespace) -> int:
    """The request's idle_motion for ``--still``."""
    return types_pb2.IDLE_MOTION_OFF if args.still else types_pb2.IDLE_MOTION_UNSPECIFIED


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="live.mp4", help="write the stream here ('-' for none)")
    p.add_argument("--avatar", default="", help="avatar id or name (default avatar if empty)")
    p.add_argument("--voice", default="", help="voice id, e.g. espeak:en-gb")
    p.add_argument("--size", default="", help=f"output size preset: {', '.join(SIZE_PRESETS)}")
    p.add_argument("--backend", default="", help=f"renderer backend: {', '.join(spec('renderer').backends)}")
    p.add_argument("--idle-timeout", type=float, default=0.0, help="seconds without input before the session ends")
    p.add_argument("--quiet", action="store_true", help="do not print media progress, only events")
    p.add_argument("--markdown", action="store_true", help="typed lines are Markdown: their markup is not read")
    p.add_argument("--still", action="store_true", help=STILL_HELP)
    p.add_argument(
        "--audio",
        metavar="FILE",
        action="append",
        default=[],
        help="your own speech (WAV, MP3, M4A, Ogg...), spoken first as turns take-1, take-2... (repeatable)",
    )


def describe(msg: lpb.LiveServerMessage, t0: float) -> str | None:
    """One line for a message worth printing (events, errors, the start)."""
    at = f"{time.monotonic() - t0:7.2f}s"
    kind = msg.WhichOneof("kind")
    if kind == "started":
        s = msg.started
        fps = s.fps_numerator / max(1, s.fps_denominator)
        # the whole id: others join with it (TalkmeshClient.watch, the web page's watch link)
        return f"{at}  session {s.session_id}: {s.width}x{s.height} at {fps:g} fps, {s.video_encoder}"
    if kind == "error":
        e = msg.error
        return f"{at}  error ({e.turn_id or 'session'}): {e.message}"
    if kind != "event":
        return None
    ev = msg.event
    which = ev.WhichOneof("kind")
    if which == "speaking_started":
        return f"{at}  speaking  {ev.speaking_started.turn_id}"
    if which == "speaking_stopped":
        st = ev.speaking_stopped
        reason = short_name(lpb.StopReason, st.reason)
        seconds = st.samples_played / st.sample_rate if st.sample_rate else 0.0
        voice = f", voice {st.voice}" if st.voice else ""
        warnings = "".join(f"\n{at}  warning   {st.turn_id}: {w}" for w in st.warnings)
        return f"{at}  stopped   {st.turn_id} ({reason}, {seconds:.2f} s played{voice}){warnings}"
    if which == "caption":
        return f"{at}  caption   {ev.caption.turn_id}: {ev.caption.text}"
    if which == "interrupt_acknowledged":
        return f"{at}  interrupt acknowledged ({', '.join(ev.interrupt_acknowledged.stopped_turn_ids) or 'nothing'})"
    if which == "underrun":
        return f"{at}  underrun  {ev.underrun.turn_id} frame {ev.underrun.turn_frame}"
    if which == "session_ending":
        se = ev.session_ending
        reason = short_name(lpb.EndReason, se.reason)
        return f"{at}  ending    ({reason}, {se.seconds_left:.1f} s left)"
    return None


class OpenTurns:
    """The turns sent and not over yet (speaking, or queued in the session); ``room`` waits until
    fewer than the session's limit are (SessionStarted.max_pending_turns): a turn sent beyond it
    would be refused. An interrupted turn is counted until its end comes (the gateway counts it
    till then), but no longer makes the session busy (Ctrl-C then quits)."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self._cut: set[str] = set()  # those an interrupt has stopped, their end not in yet
        self._changed = asyncio.Event()

    def __bool__(self) -> bool:
        """Turns an interrupt would stop."""
        return bool(self.ids - self._cut)

    def add(self, turn_id: str) -> None:
        self.ids.add(turn_id)

    def over(self, *turn_ids: str) -> None:
        self.ids.difference_update(turn_ids)
        self._cut.difference_update(turn_ids)
        self._changed.set()

    def interrupted(self) -> None:
        self._cut.update(self.ids)

    async def room(self, limit: int) -> None:
        """Returns once fewer than ``limit`` turns are open (at once with no limit: 0)."""
        while limit and len(self.ids) >= limit:
            self._changed.clear()
            await self._changed.wait()


async def _pump(
    session: LiveSession, output: Path | None, out: TextIO, state: dict[str, int], turns: OpenTurns
) -> None:
    t0 = time.monotonic()
    sink = output.open("wb") if output is not None else None
    try:
        async for msg in session:
            kind = msg.WhichOneof("kind")
            if kind == "media" and sink is not None:
                sink.write(msg.media.data)
                sink.flush()
            elif kind == "error":
                state["errors"] += 1
                # a turn refused for want of room never starts (and gets no speaking_stopped); any
                # other error leaves the turn to its speaking_stopped (it may still play what it had)
                if refused_for_room(msg.error):
                    turns.over(msg.error.turn_id)
            elif kind == "event":
                which = msg.event.WhichOneof("kind")
                if which == "speaking_stopped":  # (also of turns that never spoke)
                    turns.over(msg.event.speaking_stopped.turn_id)
                elif which == "interrupt_acknowledged":
                    turns.over(*msg.event.interrupt_acknowledged.stopped_turn_ids)
            line = describe(msg, t0)
            if line:
                print(line, file=out, flush=True)
    finally:
        if sink is not None:
            sink.close()


class StdinLines:
    """Lines of ``stdin`` read by a daemon thread: a blocked read never keeps the process alive
    (a thread of the loop's default executor would: ``asyncio.run`` waits for it at exit, so
    Ctrl-C while idle quit only after the next Enter)."""

    def __init__(self, stdin: TextIO) -> None:
        import threading

        loop = asyncio.get_running_loop()
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        # bounded: a long file piped in is read as its lines are taken, not all at once
        self._room = threading.Semaphore(TYPED_LINES_WAITING)

        def read() -> None:
            while True:
                self._room.acquire()  # (a daemon thread: waiting here never holds the exit)
                try:
                    line = stdin.readline()
                except (OSError, ValueError):
                    line = ""
                try:
                    loop.call_soon_threadsafe(self._lines.put_nowait, line)
                except RuntimeError:  # the loop is closed: nobody reads any more
                    return
                if line == "":
                    return

        threading.Thread(target=read, name="live-cli-stdin", daemon=True).start()

    async def get(self) -> str:
        """The next line, with its newline; "" at end of input."""
        line = await self._lines.get()
        self._room.release()
        return line


#: Typed lines waiting to be sent (behind the recordings): the reader stops reading beyond this
TYPED_LINES_WAITING = 64


@dataclass(frozen=True)
class Recording:
    """An ``--audio`` file: its name, mono s16le PCM and sample rate."""

    name: str
    pcm: bytes
    rate: int


class TurnSender:
    """Sends the session's turns in order: the recordings, each a turn of its own, then the typed
    lines (the turns queue: one plays after the other; beyond the session's pending turns, a line
    waits for one to end). ``interrupt`` drops what it has not sent
    yet, then interrupts what the session has: an interrupt stops everything queued. (A recording
    being sent ends with its turn: the interrupt stops it.)"""

    def __init__(
        self,
        session: LiveSession,
        recordings: list[Recording],
        out: TextIO | None = None,
    ) -> None:
        self.session = session
        #: the turns sent and not over yet (speaking, or queued in the session): the pump takes
        #: out those that stop; an interrupt marks them all cut (their ends are on the way)
        self.turns = OpenTurns()
        self.out = out  # where "take-1: take1.wav, 2.55 s" is said as a recording is sent
        self.t0 = time.monotonic()
        #: (the cut it was given in, the line; None: the end of input)
        self.typed: asyncio.Queue[tuple[int, str | None]] = asyncio.Queue(TYPED_LINES_WAITING)
        self.recordings = list(recordings)
        self.cuts = 0  # interrupts so far: a line given before the last one is not sent
        self.lines_waiting = 0  # lines given since the last interrupt, not sent yet
        self.recording = False  # a recording is being sent
        self.task = asyncio.create_task(self._run(), name="live-cli-send")

    async def _run(self) -> None:
        takes = lines = 0
        while self.recordings:
            take = self.recordings.pop(0)
            takes += 1
            tid = f"take-{takes}"  # (its events name the file's turn)
            if self.out is not None:
                at = f"{time.monotonic() - self.t0:7.2f}s"
                seconds = len(take.pcm) / 2 / take.rate
                print(f"{at}  sending   {tid}: {take.name}, {seconds:.2f} s", file=self.out, flush=True)
            await self.turns.room(self._limit())
            self.recording = True
            self.turns.add(tid)
            try:
                await self.session.say_audio(take.pcm, take.rate, turn_id=tid)
            finally:
                self.recording = False
        while True:
            cut, text = await self.typed.get()
            if text is None:
                return
            if cut != self.cuts:
                continue
            # a line past the session's pending turns waits here (it would be refused)
            await self.turns.room(self._limit())
            if cut == self.cuts:  # (no interrupt while it waited)
                self.lines_waiting -= 1
                lines += 1
                tid = f"turn-{lines}"
                self.turns.add(tid)  # (before it is sent: Ctrl-C meanwhile interrupts it)
                await self.session.say(text, turn_id=tid)

    def _limit(self) -> int:
        """The session's pending turns (0: not known, no wait)."""
        return self.session.started.max_pending_turns if self.session.started else 0

    @property
    def pending(self) -> bool:
        """Turns it has not sent in full yet."""
        return not self.task.done() and (self.recording or bool(self.recordings) or self.lines_waiting > 0)

    async def offer(self, text: str | None) -> bool:
        """``text`` queued to be sent (``None``: nothing more); False if the sender has stopped (it
        failed). Waits while TYPED_LINES_WAITING are."""
        if text is not None:
            self.lines_waiting += 1
        put = asyncio.ensure_future(self.typed.put((self.cuts, text)))
        await asyncio.wait([put, self.task], return_when=asyncio.FIRST_COMPLETED)
        await cancel_and_wait(put)
        return put.done() and not put.cancelled()

    async def interrupt(self) -> None:
        self.cuts += 1  # lines queued (or waiting for room) before now are dropped as they come
        if self.lines_waiting and self.out is not None:  # (said: a script's lines vanished silently)
            at = f"{time.monotonic() - self.t0:7.2f}s"
            print(f"{at}  dropped   {self.lines_waiting} line(s) not sent yet", file=self.out, flush=True)
        self.lines_waiting = 0
        self.recordings.clear()
        self.turns.interrupted()  # (counted for room until their ends come, as the gateway does)
        await self.session.interrupt()

    async def aclose(self) -> None:
        await cancel_and_wait(self.task)


def _read_recordings(paths: list[str]) -> list[Recording]:
    """The ``--audio`` files, read before the session starts (a bad one is one error line)."""
    from talkmesh.cli import CliError
    from talkmesh.speech_file import SpeechFileError, read_speech

    try:
        return [Recording(Path(path).name, *read_speech(path)) for path in paths]
    except SpeechFileError as exc:
        raise CliError(f"--audio {exc}") from None


async def run(args: argparse.Namespace, target: str, stdin: TextIO = sys.stdin, out: TextIO = sys.stderr) -> int:
    """Runs the session; 0 when every turn played, 1 when one failed (its error is printed as an
    event); a failed stream raises its error (`talkmesh` prints it as one line)."""
    recordings = _read_recordings(args.audio)
    output = None if args.output == "-" else Path(args.output)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    quit_now = asyncio.Event()
    state = {"errors": 0}
    from talkmesh.cli import tls_from_args

    async with TalkmeshClient(target, tls=tls_from_args(args), api_key=getattr(args, "api_key", None)) as client:
        async with client.live(
            avatar=args.avatar,
            voice=args.voice,
            size=args.size,
            backend=args.backend,
            idle_timeout=args.idle_timeout,
            markdown=args.markdown,
            idle_motion=idle_motion(args),
        ) as session:
            sender = TurnSender(session, recordings, out)
            pump = asyncio.create_task(_pump(session, output, out, state, sender.turns), name="live-cli-pump")
            signals = TaskSet("live-cli")

            closed = asyncio.Event()  # half-closed (Ctrl-D): the session takes no interrupt any more

            def on_sigint() -> None:
                if (sender.turns or sender.pending) and not closed.is_set():
                    signals.spawn(sender.interrupt(), name="interrupt")
                else:  # idle, or after Ctrl-D: quits (what is still queued does not play)
                    quit_now.set()

            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGINT, on_sigint)
            print(
                "type a line to speak it; an empty line (or Ctrl-C) interrupts; Ctrl-D ends; Ctrl-C while idle quits",
                file=out,
                flush=True,
            )
            lines = StdinLines(stdin)
            quitting = asyncio.ensure_future(quit_now.wait())
            read: asyncio.Future[str] | None = None
            try:
                while not pump.done() and not quit_now.is_set() and not sender.task.done():
                    if read is None:
                        read = asyncio.ensure_future(lines.get())
                    waiting: set[asyncio.Future[object]] = {read, pump, quitting, sender.task}  # type: ignore[arg-type]
                    done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if read not in done:
                        break  # the stream ended, Ctrl-C while idle, or the sender failed
                    line = read.result()
                    read = None
                    if line == "":  # end of input: what was given is sent, then the session ends
                        if await sender.offer(None):
                            await asyncio.wait([sender.task, pump], return_when=asyncio.FIRST_COMPLETED)
                        if sender.task.done() and sender.task.exception() is None:
                            closed.set()
                            await session.close()
                            await asyncio.wait([pump, quitting], return_when=asyncio.FIRST_COMPLETED)
                        break
                    text = line.strip()
                    if pump.done():
                        break
                    if text:
                        if not await sender.offer(text):
                            break
                    else:
                        await sender.interrupt()
            finally:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(signal.SIGINT)
                await signals.aclose()  # (an interrupt is one write: it has gone by the time the loop ends)
                await cancel_and_wait(pump, quitting, read)
                await sender.aclose()
            if not pump.cancelled() and pump.exception() is not None:
                raise pump.exception()  # type: ignore[misc]  # the stream failed: one line, exit 1
            if not sender.task.cancelled() and sender.task.exception() is not None:
                raise sender.task.exception()  # type: ignore[misc]  # a turn could not be sent: one line, exit 1
    if output is not None:
        print(f"wrote {output}", file=out)
    if state["errors"]:
        print(f"error: {state['errors']} message(s) or turn(s) were refused or failed (above)", file=out)
    return 1 if state["errors"] else 0
