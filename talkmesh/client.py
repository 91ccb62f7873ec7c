"""Python client API for the talkmesh gateway.

async with TalkmeshClient() as client:      # $TALKMESH_TARGET, else the local mesh (127.0.0.1:50051)
    async for chunk in client.speak("Hello there."):
        ...                                  # SpeakChunk: media fragments, then a summary
    summary = await client.speak_to_file("Hello there.", "out.mp4")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from talkmesh.common.channel import (
    CERT_AND_KEY,
    DEFAULT_MAX_MESSAGE_BYTES,
    PUBLIC_CLIENT_KEEPALIVE_MS,
    ClientTLS,
    create_channel,
)
from talkmesh.common.clock import MAX_AUDIO_MESSAGE_SECONDS, audio_file_kind
from talkmesh.common.propagation import outgoing_metadata
from talkmesh.common.registry import port_base_from_env
from talkmesh.v1 import gateway_pb2 as gpb
from talkmesh.v1 import gateway_pb2_grpc, live_pb2_grpc
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import types_pb2 as api

#: The data of one AvatarUpload message (a file's block; the web edge sends a form's file so too).
UPLOAD_CHUNK_BYTES = 1 << 20
#: Environment variable naming the gateway (``host:port``) when no target is given.
TARGET_ENV = "TALKMESH_TARGET"
#: Environment variable with the API key sent when none is given.
API_KEY_ENV = "TALKMESH_API_KEY"
#: Prefix of the TLS environment variables (see ``default_tls``).
TLS_ENV = "TALKMESH_TLS"


class _InputChecked:
    """A request stream that remembers the error it raised (the caller's own input failing)."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self.requests = requests
        self.failed: Exception | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._run()

    async def _run(self) -> AsyncIterator[Any]:
        try:
            async for msg in self.requests:
                yield msg
        except Exception as exc:
            self.failed = exc
            raise


def _llm_text(method: str, piece: object) -> str | None:
    """A streamed text piece as sent: None is skipped (an OpenAI delta without content); anything
    but a str (an SDK's chunk object rather than its text) is a TypeError naming it."""
    if piece is None or isinstance(piece, str):
        return piece
    raise TypeError(f"{method}: a piece must be str (the text), not {type(piece).__name__}: {piece!r:.60}")


class _CheckedCall:
    """A streaming call whose iteration raises the caller's own input error (a generator that
    raised, PCM of an odd length) as it is, where gRPC only cancels the call (CancelledError).
    Everything else (``read``, ``cancel``, ``code``...) is the call's."""

    def __init__(self, call: Any, requests: _InputChecked) -> None:
        self._call = call
        self._requests = requests

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._answers()

    async def _answers(self) -> AsyncIterator[Any]:
        try:
            async for chunk in self._call:
                yield chunk
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            if self._requests.failed is not None:
                raise self._requests.failed from None
            raise


#: The longest PCM piece a message carries (the gateway refuses more), and the first piece's
#: length: the video's first frames need no more.
MAX_PIECE_SECONDS, FIRST_PIECE_SECONDS = MAX_AUDIO_MESSAGE_SECONDS, 0.2


def _not_a_file(pcm: bytes) -> None:
    """ValueError for the bytes of a whole audio file passed as PCM: its header would be played as
    samples (a click), and its rate and channels ignored."""
    kind = audio_file_kind(pcm)
    if kind:
        raise ValueError(
            f"pcm: these bytes are {kind}, not raw PCM: pass its samples (mono s16le), e.g. from "
            "wave.open(path).readframes(n) for a mono 16-bit WAV, or use `talkmesh say --audio FILE`"
        )


def _as_pcm(chunks: Any) -> Any:
    """``chunks`` as the PCM it holds: a NumPy array (duck-typed: the client needs no NumPy) of
    mono int16 samples as its little-endian bytes; TypeError for any other array."""
    dtype = getattr(chunks, "dtype", None)
    if dtype is None:
        return chunks
    if getattr(chunks, "ndim", 0) == 1 and str(dtype) == "int16":
        return chunks.astype("<i2").tobytes()
    raise TypeError(
        f"pcm: a {getattr(chunks, 'ndim', '?')}-dimensional array of {dtype}: pass mono int16 samples "
        "(one channel, e.g. arr[:, 0] or arr.mean(axis=1); floats scaled: (arr * 32767).astype('int16'))"
    )


async def pcm_pieces(
    chunks: AsyncIterable[bytes] | Iterable[bytes] | bytes, sample_rate: int
) -> AsyncIterator[bytes]:
    """Mono s16le PCM (a whole recording, or chunks of any size as they are recorded) in pieces
    the gateway takes: each chunk goes on at once, split when longer than ``MAX_PIECE_SECONDS``
    (the first piece: ``FIRST_PIECE_SECONDS``), in whole samples (a byte split off by the recorder
    waits for the next chunk). ValueError if the whole holds an odd number of bytes (a whole
    recording's before any piece) or starts like an audio file's bytes; a NumPy array of mono
    int16 samples is PCM, another array a TypeError saying what to pass."""
    chunks = _as_pcm(chunks)
    if isinstance(chunks, bytes | bytearray | memoryview):
        chunks = bytes(chunks)
        _not_a_file(chunks)
        if len(chunks) % 2:
            raise ValueError("PCM of an odd number of bytes: not 16-bit samples")
        chunks = [chunks]
    pending = bytearray()
    first = True
    head_checked = False

    def ready() -> Iterator[bytes]:
        nonlocal first
        while len(pending) >= 2:
            limit = 2 * max(1, int(sample_rate * (FIRST_PIECE_SECONDS if first else MAX_PIECE_SECONDS)))
            take = min(limit, len(pending) - len(pending) % 2)
            piece = bytes(pending[:take])
            del pending[:take]
            first = False
            yield piece

    def head() -> None:
        """A file's bytes in chunks are refused at the first: its first 8 bytes, once they are
        here (a first chunk shorter than that has gone on as samples: not a file's start)."""
        nonlocal head_checked
        if not head_checked and (len(pending) >= 8 or not first):
            head_checked = True
            if first:
                _not_a_file(bytes(pending[:8]))

    if isinstance(chunks, AsyncIterable):
        async for chunk in chunks:
            pending += chunk
            head()
            for piece in ready():
                yield piece
    else:
        for chunk in chunks:
            pending += chunk
            head()
            for piece in ready():
                yield piece
    if pending:
        raise ValueError("PCM of an odd number of bytes: not 16-bit samples")


def default_target() -> str:
    """``$TALKMESH_TARGET``, else the gateway of the local mesh: on ``$TALKMESH_PORT_BASE``'s block
    when set (as ``talkmesh up`` starts it), else on the default ports."""
    from talkmesh.common.registry import default_target as registry_target

    return os.environ.get(TARGET_ENV, "").strip() or registry_target("gateway", base=port_base_from_env())


class AvatarNameError(ValueError, grpc.aio.AioRpcError):
    """Several avatars carry the name given (the gateway's FAILED_PRECONDITION; the message lists
    their ids). Both a ``ValueError``, as before names were resolved by the server, and the
    ``grpc.aio.AioRpcError`` the server answered: ``except AvatarNameError``, ``except ValueError``
    and ``except grpc.aio.AioRpcError`` (``.code()``, ``.details()``) all catch it."""

    def __init__(self, rpc: grpc.aio.AioRpcError) -> None:
        grpc.aio.AioRpcError.__init__(
            self,
            rpc.code(),
            rpc.initial_metadata(),
            rpc.trailing_metadata(),
            rpc.details(),
            rpc.debug_error_string(),
        )
        self.args = (rpc.details() or "",)

    def __str__(self) -> str:
        return str(self.details() or "")


@dataclass
class SpeakResult:
    """What a finished Speak returned, with client-side timings (monotonic seconds)."""

    summary: gpb.SpeakSummary
    bytes_written: int
    mime_type: str
    time_to_first_fragment: float
    total_seconds: float
    fragment_times: list[float] = field(default_factory=list)


class SessionEnded(RuntimeError):
    """A turn, interrupt or keep-alive sent after the live session ended (its stream finished: the
    idle timeout, the maximum length, a drain, an error), after ``close()``, or after leaving
    ``async with`` (which cancels the session); the message says which."""


async def _aclose(source: object) -> None:
    """Closes the caller's async generator (an LLM's stream: its request is cancelled)."""
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()


class _TurnInput:
    """Whether a turn that ``say_stream``/``say_audio`` is sending still takes input. Once it does
    not (``stop``: interrupted, refused, stopped), a wait for the caller's next piece is ended at
    once; the wait runs in the caller's own task (``LiveSession._next``), so the source's timeouts,
    cancel scopes and context variables span its yields as in a plain ``async for``."""

    def __init__(self) -> None:
        self.over = False
        #: the scope of a wait for the source's next piece, while one runs, and the task waiting
        self.waiting: asyncio.Timeout | None = None
        self.waiter: asyncio.Task[Any] | None = None

    def stop(self) -> None:
        """Idempotent; ends a wait for the source now (TimeoutError at its exit, in its task),
        unless the wait is ending already, or the source itself is what stops its turn (its own
        interrupt: the source goes on to its next yield, and nothing more is read)."""
        self.over = True
        wait = self.waiting
        if wait is not None and not wait.expired() and asyncio.current_task() is not self.waiter:
            wait.reschedule(asyncio.get_running_loop().time())


def refused_for_room(error: lpb.LiveError) -> bool:
    """A live turn refused because ``live.max_pending_turns`` turns are waiting (send it again
    later): RESOURCE_EXHAUSTED naming ``text.turn_id`` or ``audio.turn_id``. The one refusal of a
    turn after which no ``speaking_stopped`` comes; a full stage fails a turn with the same code
    but names no turn id field, and its speaking_stopped follows."""
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and error.field.endswith(".turn_id")


class LiveWatch:
    """A live session watched (``TalkmeshClient.watch``): its messages as the session's own client
    gets them, from the next keyframe on, but no input. ``async for`` reads them (a refused or
    ended watch raises ``grpc.aio.AioRpcError``, e.g. NOT_FOUND for an unknown session id); leaving
    ``async with``, or ``cancel()``, stops watching."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __aiter__(self) -> AsyncIterator[lpb.LiveServerMessage]:
        return self._call.__aiter__()  # type: ignore[no-any-return]

    def cancel(self) -> None:
        self._call.cancel()

    async def __aenter__(self) -> LiveWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()


class LiveSession:
    """A live session (``TalkmeshClient.live``): send turns and interrupts, iterate the stream.

    async with client.live(voice="espeak:en-us") as live:
        await live.say("Hello there!")            # a text turn (returns its turn id)
        async for msg in live:                    # LiveServerMessage: media, events, errors
            ...

    Leaving ``async with`` cancels the session if its stream has not ended: after ``close()``,
    read the stream to its end first, or the turns still queued are lost. Sending after the end
    (or after leaving ``async with``) raises ``SessionEnded``. Refused input and failed turns are
    ``LiveError`` messages in the stream, not exceptions of ``say``/``say_stream``.
    """

    def __init__(
        self,
        stub: live_pb2_grpc.LiveStub,
        config: lpb.LiveConfig,
        timeout: float | None,
        metadata: Callable[[], grpc.aio.Metadata] = outgoing_metadata,
        resolve_avatar: Callable[[str], Awaitable[str]] | None = None,
    ) -> None:
        if resolve_avatar is not None:
            warnings.warn(
                "LiveSession(resolve_avatar=...) is deprecated: the gateway resolves an avatar name itself",
                DeprecationWarning,
                stacklevel=2,
            )
        self._stub = stub
        self._resolve_avatar = resolve_avatar
        self._metadata = metadata
        self._config = config
        self._timeout = timeout
        self._call: Any = None
        self._write_lock = asyncio.Lock()
        self._closed = False
        #: the call was cancelled by leaving ``async with``
        self._left = False
        #: turns say_stream/say_audio are sending -> set once the turn takes no more input (it was
        #: interrupted, a LiveError named it, it stopped)
        self._sending: dict[str, _TurnInput] = {}
        self._turns = 0
        self.started: lpb.SessionStarted | None = None
        self._first: list[lpb.LiveServerMessage] = []

    async def _send(self, msg: lpb.LiveClientMessage, over: _TurnInput | None = None) -> None:
        """Writes ``msg``; a piece of a turn whose input is ``over`` meanwhile (interrupted while the
        piece waited for its turn to write) is not sent: the gateway would drop it anyway, and an
        interrupt does not wait behind it."""
        async with self._write_lock:  # one write at a time on a gRPC call
            if self._left:
                raise SessionEnded(
                    "the live session was cancelled when its `async with` block was left: no more messages "
                    "can be sent (to let queued turns finish, call close() and read the stream to its end first)"
                )
            if self._closed:
                raise SessionEnded("the live session was closed (close()): no more messages can be sent")
            if over is not None and over.over:
                return
            # A cancelled grpc.aio write cancels the whole call: a caller cancelling the task that
            # sends (a barge-in cancelling say_stream) would end the session. The write finishes
            # first, shielded, still holding the lock; then the cancellation goes on.
            write = asyncio.ensure_future(self._call.write(msg))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(write)  # (shielded again: a second cancel must not reach it)
                raise
            except asyncio.InvalidStateError:  # grpc.aio's word for a call that has finished
                raise SessionEnded(
                    "the live session has ended: read the stream for its final status (the idle timeout, "
                    "the maximum length, a drain or an error)"
                ) from None

    async def __aenter__(self) -> LiveSession:
        if self._config.avatar_id and self._resolve_avatar is not None:  # deprecated, still honoured
            self._config.avatar_id = await self._resolve_avatar(self._config.avatar_id)
        self._call = self._stub.Session(timeout=self._timeout, metadata=self._metadata())
        await self._send(lpb.LiveClientMessage(config=self._config))
        first = await self._call.read()
        if first is grpc.aio.EOF:
            raise RuntimeError("the live session ended before it started")
        if first.WhichOneof("kind") == "started":
            self.started = first.started
        self._first.append(first)
        return self

    @property
    def session_id(self) -> str:
        """The session's id (SessionStarted.session_id; other viewers join with ``client.watch``),
        once the session has started ("" before ``async with`` entered it)."""
        return self.started.session_id if self.started is not None else ""

    async def __aexit__(self, *exc: object) -> None:
        if self._call is not None and not self._call.done():
            self._left = True
            self._call.cancel()

    def __aiter__(self) -> AsyncIterator[lpb.LiveServerMessage]:
        return self._read()

    async def _read(self) -> AsyncIterator[lpb.LiveServerMessage]:
        while self._first:
            yield self._seen(self._first.pop(0))
        while (msg := await self._call.read()) is not grpc.aio.EOF:
            yield self._seen(msg)

    def _seen(self, msg: lpb.LiveServerMessage) -> lpb.LiveServerMessage:
        """Notes the turns that take no more input (say_stream and say_audio stop sending them)."""
        kind = msg.WhichOneof("kind")
        ended: list[str] = []
        if kind == "error" and msg.error.turn_id:  # refused input ends the turn's input, or it failed
            ended.append(msg.error.turn_id)
        elif kind == "event":
            which = msg.event.WhichOneof("kind")
            if which == "speaking_stopped":
                ended.append(msg.event.speaking_stopped.turn_id)
            elif which == "interrupt_acknowledged":
                ended.extend(msg.event.interrupt_acknowledged.stopped_turn_ids)
        for tid in ended:
            if (over := self._sending.get(tid)) is not None:
                over.stop()
        return msg

    @staticmethod
    async def _next(source: AsyncIterator[Any], over: _TurnInput) -> tuple[bool, Any]:
        """(True, the next item of ``source``), or (False, None) at its end or once the turn is
        ``over`` (a wait for the item is then cut short: an LLM's first-token delay does not hold
        it). The source runs in this, the caller's, task."""
        if over.over:
            return False, None
        wait = over.waiting = asyncio.timeout(None)
        over.waiter = asyncio.current_task()
        try:
            async with wait:
                return True, await anext(source)
        except StopAsyncIteration:
            return False, None
        except TimeoutError:
            if over.over and wait.expired():
                return False, None  # over: the source was stopped mid-wait
            raise  # the source's own timeout
        finally:
            over.waiting = over.waiter = None

    def _turn_id(self, turn_id: str | None) -> str:
        if turn_id:
            return turn_id
        self._turns += 1
        return f"turn-{self._turns}"

    async def say(
        self, text: str, *, turn_id: str | None = None, final: bool = True, voice: str = ""
    ) -> str:
        """Speaks ``text`` as a turn (or a piece of one, with ``final=False``); returns the turn id.
        ``voice``: this turn's voice (e.g. another language's) instead of the session's."""
        tid = self._turn_id(turn_id)
        piece = lpb.SpeakText(turn_id=tid, text=text, final=final, voice=voice)
        await self._send(lpb.LiveClientMessage(text=piece))
        return tid

    async def say_stream(
        self, pieces: AsyncIterable[str], *, turn_id: str | None = None, voice: str = ""
    ) -> str:
        """Speaks text as it is written (LLM tokens): one turn, ended when ``pieces`` ends, or
        raises (what was sent still plays, and the error is raised here). Returns the turn id;
        pass ``turn_id`` to know it while the text is still coming (to interrupt this turn).
        Sending nothing at all still makes (and ends) the turn. ``voice``: as in ``say``.

        Once the turn takes no more text it stops reading ``pieces``, closes it (``aclose``: the
        model's request is cancelled) and returns the turn id, as ``say`` does, without raising:
        after ``interrupt()`` names it (or all turns), and, as the stream is read, once a
        ``LiveError`` names it (a refused piece, such as text past the turn's
        ``started.max_text_chars``, ends its input; or the turn failed) or its ``speaking_stopped``
        came. What happened is in the stream. A piece that is None is skipped; one that is not a
        str raises TypeError (after the turn is ended)."""
        tid = self._turn_id(turn_id)
        # The turn exists at once (an empty piece), before the model's first token: an interrupt
        # naming it then stops it even during the model's first-token delay, and it keeps its
        # place in the queue. It is ended whatever happens (a turn left open holds every later
        # turn back).
        await self._send(lpb.LiveClientMessage(text=lpb.SpeakText(turn_id=tid, text="", voice=voice)))
        end = lpb.LiveClientMessage(end_of_turn=lpb.EndOfTurn(turn_id=tid))
        source = aiter(pieces)
        over = self._sending[tid] = _TurnInput()
        try:
            while (got := await self._next(source, over))[0]:
                if (text := _llm_text("say_stream", got[1])) is not None:
                    await self._send(lpb.LiveClientMessage(text=lpb.SpeakText(turn_id=tid, text=text)), over)
            if over.over:
                await _aclose(source)
        except BaseException:
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, SessionEnded):
                await self._send(end)  # (the session may be what failed: the caller's error is raised)
            raise
        finally:
            self._sending.pop(tid, None)
        await self._send(end)  # (also of a turn refused for want of room: it frees the id at the gateway)
        return tid

    async def say_audio(
        self, chunks: AsyncIterable[bytes] | Iterable[bytes] | bytes, sample_rate: int, *, turn_id: str | None = None
    ) -> str:
        """Plays your own speech (mono PCM s16le at ``sample_rate``: the whole recording, or chunks
        of any size as they are recorded; or a NumPy array of mono int16 samples) as a turn;
        returns the turn id. Stereo or float samples must be converted first (as for
        ``speak_audio``). The audio is sent in the pieces of at most one second the gateway takes.
        Like ``say_stream``, it stops reading ``chunks`` (and closes an async generator) once the
        turn takes no more input (interrupted, refused), and returns the turn id."""
        tid = self._turn_id(turn_id)
        source = pcm_pieces(chunks, sample_rate)
        over = _TurnInput()
        first = True
        try:
            while (got := await self._next(source, over))[0]:
                piece = lpb.SpeakAudio(turn_id=tid, sample_rate=sample_rate, pcm=got[1])
                await self._send(lpb.LiveClientMessage(audio=piece), over)
                if first:  # the turn exists now: an interrupt naming it stops the sending
                    first = False
                    self._sending[tid] = over
            if over.over:
                await _aclose(source)
                await _aclose(chunks)
        except BaseException:
            if not first:  # the turn exists: ended whatever happens (an open one holds later turns back)
                with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, SessionEnded):
                    await self.audio(tid, b"", sample_rate, final=True)
            raise
        finally:
            if self._sending.get(tid) is over:
                del self._sending[tid]
        await self.audio(tid, b"", sample_rate, final=True)  # (a turn with no audio at all ends too)
        return tid

    async def audio(self, turn_id: str, pcm: bytes, sample_rate: int, *, final: bool = False) -> None:
        """One chunk of an audio turn."""
        msg = lpb.SpeakAudio(turn_id=turn_id, sample_rate=sample_rate, pcm=pcm, final=final)
        await self._send(lpb.LiveClientMessage(audio=msg))

    async def end_turn(self, turn_id: str) -> None:
        await self._send(lpb.LiveClientMessage(end_of_turn=lpb.EndOfTurn(turn_id=turn_id)))

    async def interrupt(self, turn_id: str = "") -> None:
        """Stops ``turn_id`` (empty: the current turn and every queued one) at the next frame.
        ``say_stream`` and ``say_audio`` sending a stopped turn stop at once (their pieces not
        written yet are dropped, so the interrupt does not wait behind them)."""
        for tid, over in list(self._sending.items()):
            if not turn_id or tid == turn_id:
                over.stop()
        await self._send(lpb.LiveClientMessage(interrupt=lpb.Interrupt(turn_id=turn_id)))

    async def keep_alive(self) -> None:
        await self._send(lpb.LiveClientMessage(keep_alive=lpb.KeepAlive()))

    async def close(self) -> None:
        """Half-closes: turns already sent play to their end, then the session ends. Keep reading
        the stream until it ends (leaving ``async with`` before cancels the session)."""
        async with self._write_lock:
            if not self._closed and not self._call.done():
                await self._call.done_writing()
            self._closed = True


def default_tls() -> ClientTLS | None:
    """TLS settings from ``$TALKMESH_TLS`` (1 = TLS with the system's roots) and
    ``$TALKMESH_TLS_CA_FILE``, ``$TALKMESH_TLS_CERT_FILE``, ``$TALKMESH_TLS_KEY_FILE``,
    ``$TALKMESH_TLS_SERVER_NAME``; None when none is set (plaintext). ValueError for a
    certificate without its key (or a key without its certificate)."""
    env = os.environ
    tls = ClientTLS(
        enabled=env.get(TLS_ENV, "").strip().lower() in ("1", "true", "yes", "on"),
        ca_file=env.get(f"{TLS_ENV}_CA_FILE", "").strip(),
        cert_file=env.get(f"{TLS_ENV}_CERT_FILE", "").strip(),
        key_file=env.get(f"{TLS_ENV}_KEY_FILE", "").strip(),
        server_name=env.get(f"{TLS_ENV}_SERVER_NAME", "").strip(),
    )
    if missing := tls.missing_half():
        pair = f"{TLS_ENV}_CERT_FILE and {TLS_ENV}_KEY_FILE go together"
        raise ValueError(f"{TLS_ENV}_{missing.upper()}: not set; {pair}")
    return tls if tls.active else None


class TalkmeshClient:
    """A connection to the gateway.

    ``tls``: TLS to the gateway (CA to verify it, optionally a client certificate); default
    from ``$TALKMESH_TLS*`` (``default_tls``), else plaintext; ValueError for a certificate
    without its key. ``api_key``: sent as ``authorization: Bearer <key>`` on every call; default
    ``$TALKMESH_API_KEY``.
    """

    def __init__(
        self,
        target: str = "",
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        tls: ClientTLS | None = None,
        api_key: str | None = None,
    ) -> None:
        if tls is not None and (missing := tls.missing_half()):
            raise ValueError(f"tls.{missing}: {CERT_AND_KEY}")
        target = target or default_target()
        self.target = target
        key = os.environ.get(API_KEY_ENV, "").strip() if api_key is None else api_key
        self._auth: list[tuple[str, str]] = [("authorization", f"Bearer {key}")] if key else []
        # No client interceptors: every call passes ``outgoing_metadata()`` (trace context, request id)
        # itself. Interceptors would proxy writes through a queue whose consumer task outlives a
        # call the server ended (a live session's idle timeout) until ``done_writing``.
        self.channel = create_channel(
            target,
            max_message_bytes,
            keepalive_ms=PUBLIC_CLIENT_KEEPALIVE_MS,
            interceptors=False,
            tls=tls if tls is not None else default_tls(),
        )
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)

    async def __aenter__(self) -> TalkmeshClient:
        return self

    def _md(self) -> grpc.aio.Metadata:
        """Trace context, request id and the API key."""
        return outgoing_metadata(self._auth)

    def metadata(self) -> grpc.aio.Metadata:
        """The metadata of a call made on ``stub`` or ``channel`` directly: trace context, request
        id and the API key (as every call of this client sends)."""
        return self._md()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    @staticmethod
    def request(
        text: str = "",
        *,
        avatar: str = "",
        voice: str = "",
        size: str = "",
        backend: str = "",
        container: int = api.CONTAINER_FMP4,
        audio_codec: int = 0,
        request_id: str = "",
        rate: float = 0.0,
        pitch: float = 0.0,
        volume: float = 0.0,
        session_id: str = "",
        markdown: bool = False,
        idle_motion: int = 0,
    ) -> gpb.SpeakRequest:
        """``markdown``: the text is an LLM's Markdown (its markup and emoji are not read).
        ``idle_motion``: ``IDLE_MOTION_OFF`` (talkmesh.v1.types_pb2) for a still avatar: no blinks, no head motion."""
        return gpb.SpeakRequest(
            request_id=request_id,
            text=text,
            avatar_id=avatar,
            voice=voice,
            voice_settings=api.VoiceSettings(rate=rate, pitch=pitch, volume=volume),
            output=gpb.OutputOptions(
                size=size,
                container=container,  # type: ignore[arg-type]
                audio_codec=audio_codec,  # type: ignore[arg-type]
                renderer_backend=backend,
                idle_motion=idle_motion,  # type: ignore[arg-type]
            ),
            session_id=session_id,
            text_format=api.TEXT_FORMAT_MARKDOWN if markdown else api.TEXT_FORMAT_UNSPECIFIED,
        )

    def speak(
        self, text: str | gpb.SpeakRequest, *, timeout: float | None = None, **options: object
    ) -> AsyncIterator[gpb.SpeakChunk]:
        """Streams the video of ``text``: media chunks (init segment first), then a summary."""
        req = text if isinstance(text, gpb.SpeakRequest) else self.request(text, **options)  # type: ignore[arg-type]
        return self.stub.Speak(req, timeout=timeout, metadata=self._md())  # type: ignore[no-any-return]

    def speak_stream(
        self, pieces: AsyncIterable[str], *, timeout: float | None = None, **options: object
    ) -> AsyncIterator[gpb.SpeakChunk]:
        """Like speak, for text that is still being written (e.g. LLM tokens). A piece that is None
        is skipped; one that is not a str raises TypeError."""
        start = self.request("", **options)  # type: ignore[arg-type]

        async def requests() -> AsyncIterator[gpb.SpeakStreamRequest]:
            yield gpb.SpeakStreamRequest(start=start)
            async for piece in pieces:
                if (text := _llm_text("speak_stream", piece)) is not None:
                    yield gpb.SpeakStreamRequest(text=text)

        return self._speak_stream(requests(), timeout)

    def speak_audio(
        self,
        pcm: AsyncIterable[bytes] | Iterable[bytes] | bytes,
        sample_rate: int,
        *,
        timeout: float | None = None,
        **options: object,
    ) -> AsyncIterator[gpb.SpeakChunk]:
        """Like speak, for your own speech instead of text: mono PCM s16le at ``sample_rate``
        (8000..48000), the whole recording or chunks of any size as they are recorded (or a NumPy
        array of mono int16 samples). Rendered as fast as the mesh goes (a live session's
        ``say_audio`` plays at the clock's pace). Raw bytes carry no format: stereo or float samples
        passed as mono s16le cannot be told apart and play as noise or at twice the length; convert
        them first (``talkmesh say --audio FILE`` converts any audio file)."""
        start = self.request("", **options)  # type: ignore[arg-type]

        # a whole recording says its length, so one over the gateway's limit is refused at once
        total = memoryview(pcm).nbytes // 2 if isinstance(pcm, bytes | bytearray | memoryview) else 0

        async def requests() -> AsyncIterator[gpb.SpeakStreamRequest]:
            yield gpb.SpeakStreamRequest(start=start)
            sent = False
            async for piece in pcm_pieces(pcm, sample_rate):
                audio = gpb.AudioPiece(sample_rate=sample_rate, pcm=piece, total_samples=0 if sent else total)
                yield gpb.SpeakStreamRequest(audio=audio)
                sent = True
            if not sent:  # no audio at all: said as such (audio.pcm), not taken for a request without text
                yield gpb.SpeakStreamRequest(audio=gpb.AudioPiece(sample_rate=sample_rate))

        return self._speak_stream(requests(), timeout)

    def _speak_stream(
        self, requests: AsyncIterator[gpb.SpeakStreamRequest], timeout: float | None
    ) -> AsyncIterator[gpb.SpeakChunk]:
        """SpeakStream's call, iterated with the caller's own input errors raised as they are."""
        checked = _InputChecked(requests)
        return _CheckedCall(self.stub.SpeakStream(checked, timeout=timeout, metadata=self._md()), checked)

    async def save(self, chunks: AsyncIterator[gpb.SpeakChunk], path: str | os.PathLike[str]) -> SpeakResult:
        """Writes streamed media to ``path`` (atomically) and returns the summary and timings."""
        start = time.monotonic()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.part")
        first = 0.0
        written = 0
        mime = ""
        times: list[float] = []
        summary = gpb.SpeakSummary()
        try:
            with tmp.open("wb") as fh:
                async for chunk in chunks:
                    kind = chunk.WhichOneof("kind")
                    if kind == "media":
                        m = chunk.media
                        mime = m.mime_type or mime
                        if m.data:
                            fh.write(m.data)
                            written += len(m.data)
                        if not m.init_segment and m.data:
                            now = time.monotonic() - start
                            times.append(now)
                            first = first or now
                    elif kind == "summary":
                        summary = chunk.summary
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
        return SpeakResult(summary, written, mime, first, time.monotonic() - start, times)

    async def speak_to_file(
        self, text: str | gpb.SpeakRequest, path: str | os.PathLike[str], **options: object
    ) -> SpeakResult:
        """Speaks ``text`` into the file ``path``: a whole, seekable MP4 (``+faststart``) unless
        ``container`` (or the request given) asks for fragments (``CONTAINER_FMP4``) or MPEG-TS."""
        if not isinstance(text, gpb.SpeakRequest):
            options.setdefault("container", api.CONTAINER_MP4)
        return await self.save(self.speak(text, **options), path)  # type: ignore[arg-type]

    async def list_voices(self, voice: str = "", *, timeout: float | None = None) -> list[api.Voice]:
        """Every voice; with ``voice``, that one under its listed id (NOT_FOUND if there is none)."""
        request = api.ListVoicesRequest(voice=voice)
        return list((await self.stub.ListVoices(request, timeout=timeout, metadata=self._md())).voices)

    async def list_avatars(self) -> list[api.AvatarInfo]:
        return list((await self.stub.ListAvatars(api.ListAvatarsRequest(), metadata=self._md())).avatars)

    async def register_avatar(
        self,
        path: str | os.PathLike[str],
        name: str = "",
        backends: tuple[str, ...] = (),
        progress: Callable[[int, int], None] | None = None,
        preparing: Callable[[api.AvatarProgress], None] | None = None,
        face_index: int = 0,
        face_point: tuple[float, float] | None = None,
        framing: int = api.FRAMING_UNSPECIFIED,
    ) -> api.AvatarInfo:
        """Uploads an image or video and waits until the renderer has prepared it.

        ``name`` names it (default: the file's name without its extension); a file registered
        before takes the new name when one is given, and keeps its own otherwise.

        ``progress(sent_bytes, total_bytes)`` is called per uploaded block, ``preparing(p)`` with
        the renderer's own progress (``p.stage``, ``p.done`` of ``p.total``, e.g. frames).
        ``face_index`` picks the face to animate when there are several (0 = the largest);
        ``face_point`` (x, y in pixels of the picture) the face whose box contains that point.
        ``framing`` (``talkmesh.v1.types_pb2.Framing``): the default, ``FRAMING_AUTO``, has the server
        crop a picture whose face is small to the head and shoulders (``info.face.framed_box`` then
        says which part of the picture the avatar shows); ``FRAMING_AS_IS`` keeps the whole picture,
        ``FRAMING_HEAD_AND_SHOULDERS`` always crops.
        """
        p = Path(path)
        total = p.stat().st_size

        async def upload() -> AsyncIterator[api.AvatarUpload]:
            meta = api.AvatarMeta(
                name=name, filename=p.name, backends=list(backends), face_index=face_index,
                framing=framing,  # type: ignore[arg-type]
            )  # fmt: skip
            if face_point is not None:
                meta.face_point.CopyFrom(api.ImagePoint(x=face_point[0], y=face_point[1]))
            yield api.AvatarUpload(meta=meta)
            sent = 0
            with p.open("rb") as fh:
                while block := fh.read(UPLOAD_CHUNK_BYTES):
                    yield api.AvatarUpload(data=block)
                    sent += len(block)
                    if progress is not None:
                        progress(sent, total)

        info: api.AvatarInfo | None = None
        async for msg in self.stub.RegisterAvatarWithProgress(upload(), metadata=self._md()):
            if msg.WhichOneof("kind") == "progress":
                if preparing is not None:
                    preparing(msg.progress)
            else:
                info = msg.avatar
        if info is None:
            raise RuntimeError("the gateway ended RegisterAvatarWithProgress without the avatar")
        return info

    async def get_avatar(self, name_or_id: str) -> api.AvatarInfo:
        """The avatar ``name_or_id`` names (an id or one of its names), resolved by the server as
        every ``avatar`` option is (GetAvatarRequest): ``name`` is the name that matched. Errors:
        NOT_FOUND, or FAILED_PRECONDITION for a name of several avatars (the message lists their ids)."""
        request = api.GetAvatarRequest(avatar_id=name_or_id)
        return await self.stub.GetAvatar(request, metadata=self._md())  # type: ignore[no-any-return]

    async def find_avatar(self, name_or_id: str) -> tuple[str, str]:
        """(id, name) of the avatar ``name_or_id`` names (``get_avatar``): name "" when given its
        id. Unknown: (as given, ""). A name of several avatars raises AvatarNameError (the server's
        FAILED_PRECONDITION, an AioRpcError).
        (Only to show which avatar a name is: every call taking an avatar takes its name too.)"""
        if not name_or_id:
            return "", ""
        try:
            info = await self.get_avatar(name_or_id)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return name_or_id, ""
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and not isinstance(exc, AvatarNameError):
                raise AvatarNameError(exc) from exc
            raise
        return info.id, "" if info.id == name_or_id else info.name

    async def resolve_avatar(self, name_or_id: str) -> str:
        """Deprecated (every call taking an avatar takes its name too; ``get_avatar`` shows which
        avatar a name is): the id of the avatar ``name_or_id`` names; unknown values as given;
        ``AvatarNameError`` for a name of several avatars."""
        warnings.warn(
            "TalkmeshClient.resolve_avatar is deprecated: pass the name itself, or use get_avatar(...).id",
            DeprecationWarning,
            stacklevel=2,
        )
        return (await self.find_avatar(name_or_id))[0]

    def live(
        self,
        *,
        avatar: str = "",
        voice: str = "",
        size: str = "",
        backend: str = "",
        idle_timeout: float = 0.0,
        max_seconds: float = 0.0,
        rate: float = 0.0,
        pitch: float = 0.0,
        volume: float = 0.0,
        request_id: str = "",
        timeout: float | None = None,
        markdown: bool = False,
        idle_motion: int = 0,
    ) -> LiveSession:
        """A live session: ``async with client.live(...) as session`` (see ``LiveSession``).

        ``avatar``: an id or a name (the gateway resolves it before the session starts).
        ``markdown``: text turns are an LLM's Markdown (their markup and emoji are not read).
        ``idle_motion``: ``IDLE_MOTION_OFF`` (talkmesh.v1.types_pb2) for a still avatar: no blinks, no head motion."""
        config = lpb.LiveConfig(
            request_id=request_id,
            avatar_id=avatar,
            voice=voice,
            voice_settings=api.VoiceSettings(rate=rate, pitch=pitch, volume=volume),
            size=size,
            renderer_backend=backend,
            idle_timeout_seconds=idle_timeout,
            max_session_seconds=max_seconds,
            text_format=api.TEXT_FORMAT_MARKDOWN if markdown else api.TEXT_FORMAT_UNSPECIFIED,
            idle_motion=idle_motion,  # type: ignore[arg-type]
        )
        return LiveSession(live_pb2_grpc.LiveStub(self.channel), config, timeout, self._md)

    def watch(self, session_id: str) -> LiveWatch:
        """Another viewer of a running live session (joins at the next keyframe): ``async for`` its
        messages, in ``async with`` (leaving it stops watching) or alone (``cancel()`` stops it)."""
        call = live_pb2_grpc.LiveStub(self.channel).Watch(lpb.WatchRequest(session_id=session_id), metadata=self._md())
        return LiveWatch(call)

    async def delete_avatar(self, avatar_id: str, name: str = "") -> bool:
        """Deletes the avatar; with ``name``, only that name of it (the avatar goes with its last name)."""
        request = api.DeleteAvatarRequest(avatar_id=avatar_id, name=name)
        return bool((await self.stub.DeleteAvatar(request, metadata=self._md())).deleted)
