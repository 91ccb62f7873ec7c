"""The live WebSocket (``/v1/live``): ``talkmesh.v1.Live/Session`` for browsers, one to one.

Browser -> edge: text frames are ``LiveClientMessage`` in protobuf's JSON mapping
(``{"config": {...}}``, ``{"text": {"turn_id": "t1", "text": "Hello.", "final": true}}``,
``{"end_of_turn": ...}``, ``{"interrupt": {}}``, ``{"keep_alive": {}}``); binary frames are PCM
chunks (mono s16le) of the audio turn named by the last JSON ``audio`` message (which carries the
``turn_id`` and ``sample_rate``; it may carry ``pcm`` itself, base64, as in the JSON mapping).
``{"half_close": {}}`` is the one addition: the gRPC half-close (no more input; started turns play).

Edge -> browser: every ``LiveServerMessage`` as JSON, except that a ``media`` message's ``data``
follows it as one binary frame (the fMP4 bytes to append). When the gRPC stream ends, a final
``{"status": {"code": "OK" | <gRPC status name>, "message": ..., "field": ...}}`` and the close.
docs/WEB.md is the reference with an example exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
from aiohttp import WSCloseCode, WSMsgType, web
from google.protobuf import json_format

from services.web.config import WebSettings
from services.web.errors import RESULT_KEY, bad_value_field, boolean_misfit, edge_message, proto_names
from talkmesh.client import TalkmeshClient
from talkmesh.common.aio import TaskSet
from talkmesh.common.clock import MAX_AUDIO_MESSAGE_SECONDS
from talkmesh.common.errors import ErrorDetails, InvalidArgument, TalkmeshError, status_of
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import live_pb2_grpc

log = logging.getLogger(__name__)

#: WebSocket close codes by gRPC status of the ended session.
CLOSE_NORMAL, CLOSE_BAD_INPUT, CLOSE_INTERNAL, CLOSE_TRY_LATER = 1000, 1008, 1011, 1013
_CLOSE_FOR = {
    grpc.StatusCode.OK: CLOSE_NORMAL,
    grpc.StatusCode.INVALID_ARGUMENT: CLOSE_BAD_INPUT,
    grpc.StatusCode.NOT_FOUND: CLOSE_BAD_INPUT,
    grpc.StatusCode.FAILED_PRECONDITION: CLOSE_BAD_INPUT,
    grpc.StatusCode.OUT_OF_RANGE: CLOSE_BAD_INPUT,
    grpc.StatusCode.PERMISSION_DENIED: CLOSE_BAD_INPUT,
    grpc.StatusCode.UNAUTHENTICATED: CLOSE_BAD_INPUT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: CLOSE_TRY_LATER,
    grpc.StatusCode.UNAVAILABLE: CLOSE_TRY_LATER,
}


def final_status(exc: TalkmeshError | None = None) -> dict[str, Any]:
    """A session's final ``status`` (the last message before the close): OK, or ``exc``'s."""
    if exc is None:
        return {"code": "OK", "message": "", "field": ""}
    status: dict[str, Any] = {"code": exc.code.name, "message": exc.message, "field": getattr(exc, "field", "")}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:  # (as a relayed status's RetryInfo: back off at least this long)
        status["retry_after_seconds"] = retry_after
    return status


def too_large_status(limit: int) -> dict[str, Any]:
    """The final status of a session whose browser sent a message over ``limit`` bytes."""
    return final_status(
        InvalidArgument(
            "message",
            f"larger than this web edge's limit of {limit} bytes (web.max_ws_message_bytes); "
            f"send text in pieces and audio in chunks of at most {MAX_AUDIO_MESSAGE_SECONDS:g} s",
        )
    )


class EdgeWebSocket(web.WebSocketResponse):
    """A WebSocket whose writers take turns (``lock``: a media header and its bytes stay
    together), and that ends like every session when a browser's message is over
    ``max_msg_size``: aiohttp closes with 1009 on its own; the final status naming the limit goes
    out first."""

    def __init__(self, *, max_msg_size: int, **kwargs: Any) -> None:
        super().__init__(max_msg_size=max_msg_size, **kwargs)
        self.lock = asyncio.Lock()
        self.limit = max_msg_size

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"", drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not self.closed:
            status = too_large_status(self.limit)
            self[RESULT_KEY] = status["code"]
            with contextlib.suppress(ConnectionError, RuntimeError):
                async with self.lock:
                    await self.send_str(json.dumps({"status": status}, separators=(",", ":")))
            message = message or b"INVALID_ARGUMENT"
        return await super().close(code=code, message=message, drain=drain)


#: The edge's own message kind: gRPC's half-close (no more input; the started turns play).
HALF_CLOSE = "half_close"
#: The one list of what a browser may send as a text frame, ``{kind: {...}}``: LiveClientMessage's
#: kinds (the proto's oneof) and the edge's own ``half_close``. Errors list these.
CLIENT_KINDS: tuple[str, ...] = (
    *(f.name for f in lpb.LiveClientMessage.DESCRIPTOR.oneofs_by_name["kind"].fields),
    HALF_CLOSE,
)
_KINDS_OF = {lpb.LiveClientMessage.DESCRIPTOR.full_name: CLIENT_KINDS}


class BadMessage(InvalidArgument):
    """A browser message that cannot become a LiveClientMessage (answered with an ``error``)."""


def parse_client_message(text: str) -> lpb.LiveClientMessage | None:
    """A text frame as a LiveClientMessage; None for ``half_close``. BadMessage otherwise."""
    try:
        body = json.loads(text)
    except RecursionError:  # ([[[[... thousands deep: Python's parser gives up)
        raise BadMessage("message", "not JSON this edge reads: too deeply nested") from None
    except ValueError:
        raise BadMessage("message", "not JSON") from None
    if not isinstance(body, dict) or len(body) != 1:
        raise BadMessage("message", f"expected an object with exactly one key, one of {', '.join(CLIENT_KINDS)}")
    if HALF_CLOSE in body:
        return None
    msg = lpb.LiveClientMessage()
    try:
        misfit = boolean_misfit(body, lpb.LiveClientMessage.DESCRIPTOR)
        if misfit is None:
            json_format.ParseDict(body, msg)
    except RecursionError:
        (key,) = body
        raise BadMessage(str(key), "too deeply nested") from None
    except json_format.ParseError as exc:
        (key,) = body
        path = bad_value_field(str(exc))  # a bad value names its field: config.text_format
        inside = isinstance(body[key], dict)  # ({"text": 5}: the message itself is the bad value)
        raise BadMessage(f"{key}.{path}" if path and inside else str(key), proto_names(str(exc), _KINDS_OF)) from None
    if misfit is not None:
        raise BadMessage(*misfit)
    return msg


def _json(msg: Any, received: float | None = None) -> str:
    body = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    if "error" in body:  # a LiveError's code by its gRPC status name, as in `status` and HTTP errors
        body["error"]["code"] = status_of(msg.error.code).name
    if received is not None:
        body["edge_unix_seconds"] = received
    return json.dumps(body, separators=(",", ":"))


class Sender:
    """One writer at a time on the WebSocket (a media header and its bytes stay together).

    ``timing`` (the page's ``?timing=1``, a debug and bench aid): every JSON message also carries
    ``edge_unix_seconds``, when the edge got it from the gateway (wall clock, as ``unix_seconds``).
    """

    def __init__(self, ws: web.WebSocketResponse, timing: bool = False) -> None:
        self.ws = ws
        self.lock = ws.lock if isinstance(ws, EdgeWebSocket) else asyncio.Lock()
        self.timing = timing
        #: The edge half-closed the session for its drain (not the browser): the gateway's
        #: END_REASON_CLIENT_CLOSED is told to the browser as END_REASON_DRAINING.
        self.draining = False

    async def message(self, msg: lpb.LiveServerMessage) -> None:
        received = time.time() if self.timing else None
        if (
            self.draining
            and msg.WhichOneof("kind") == "event"
            and msg.event.WhichOneof("kind") == "session_ending"
            and msg.event.session_ending.reason == lpb.END_REASON_CLIENT_CLOSED
        ):
            told = lpb.LiveServerMessage()
            told.CopyFrom(msg)
            told.event.session_ending.reason = lpb.END_REASON_DRAINING
            msg = told
        async with self.lock:
            if self.ws.closed:
                return
            if msg.WhichOneof("kind") == "media":
                data = msg.media.data
                head = lpb.LiveServerMessage()
                head.CopyFrom(msg)
                head.media.ClearField("data")
                await self.ws.send_str(_json(head, received))
                await self.ws.send_bytes(data)
            else:
                await self.ws.send_str(_json(msg, received))

    async def json(self, body: dict[str, Any]) -> None:
        async with self.lock:
            if not self.ws.closed:
                await self.ws.send_str(json.dumps(body, separators=(",", ":")))

    async def error(self, code: grpc.StatusCode, message: str, field: str = "", turn_id: str = "") -> None:
        err = lpb.LiveError(code=code.value[0], message=message, field=field, turn_id=turn_id)
        await self.message(lpb.LiveServerMessage(error=err))

    async def end(self, exc: grpc.aio.AioRpcError | None) -> None:
        """The final status, then the close."""
        if exc is None:
            status = final_status()
            close = CLOSE_NORMAL
        else:
            details = ErrorDetails.of(exc)
            status = {"code": exc.code().name, "message": edge_message(exc), "field": details.field}
            if details.retry_delay is not None:
                status["retry_after_seconds"] = details.retry_delay
            close = _CLOSE_FOR.get(exc.code(), CLOSE_INTERNAL)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.final(status, close)

    async def final(self, status: dict[str, Any], close: int, outcome: str = "") -> None:
        """The session's final status (also its outcome in the edge's metrics, unless ``outcome``
        says otherwise: a watch the edge's drain ends is told UNAVAILABLE, counted CANCELLED), then
        the close."""
        self.ws[RESULT_KEY] = outcome or status["code"]
        await self.json({"status": status})
        await self.ws.close(code=close, message=status["code"].encode())


async def _pump_down(call: Any, out: Sender, started: Callable[[str], None] | None = None) -> None:
    """gRPC stream -> browser, until the stream ends; then the final status and the close.
    ``started`` learns the session's id before the browser does (who owns it: Watch)."""
    try:
        async for msg in call:
            if started is not None and msg.WhichOneof("kind") == "started":
                started(msg.started.session_id)
            await out.message(msg)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            await out.end(exc)
        else:  # the browser left (the edge cancelled the call), unless the edge ended it first
            out.ws.setdefault(RESULT_KEY, "CANCELLED")
        return
    await out.end(None)


class LiveBridge:
    """One browser session: a WebSocket on one side, ``Live/Session`` on the other."""

    def __init__(
        self,
        client: TalkmeshClient,
        ws: web.WebSocketResponse,
        cfg: WebSettings,
        idle: float,
        timing: bool = False,
        started: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.started = started
        self.ws = ws
        self.cfg = cfg
        self.idle = idle
        self.out = Sender(ws, timing)
        self.audio_turn: lpb.SpeakAudio | None = None
        self.call: Any = None
        self.browser_half_closed = False
        #: the session's id once it started ("" before)
        self.session_id = ""

    def _started(self, session_id: str) -> None:
        self.session_id = session_id
        if self.started is not None:
            self.started(session_id)

    async def half_close(self) -> None:
        """No more input for the gateway: started turns play, then the end."""
        if self.call is not None and not self.call.done():
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                await self.call.done_writing()

    async def _first(self) -> lpb.LiveClientMessage | None:
        """The config message (errors are answered, and the socket closed)."""
        try:
            async with asyncio.timeout(self.idle or None):
                raw = await self.ws.receive()
        except TimeoutError:
            await self._refuse(InvalidArgument("config", f"no config message within {self.idle:.0f} s"))
            return None
        if raw.type != WSMsgType.TEXT:
            if raw.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                self.ws.setdefault(RESULT_KEY, "CANCELLED")  # the browser left before its config
                return None
            await self._refuse(InvalidArgument("config", "the first message must be a JSON config message"))
            return None
        try:
            msg = parse_client_message(raw.data)
        except BadMessage as exc:
            await self._refuse(exc)
            return None
        if msg is None or msg.WhichOneof("kind") != "config":
            await self._refuse(InvalidArgument("config", "the first message must be config"))
            return None
        return msg

    async def _refuse(self, exc: InvalidArgument) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):  # (the browser may be gone already)
            await self.out.final(final_status(exc), CLOSE_BAD_INPUT)

    async def run(self) -> None:
        first = await self._first()
        if first is None:
            return
        stub = live_pb2_grpc.LiveStub(self.client.channel)
        self.call = stub.Session(metadata=self.client.metadata())
        try:
            await self.call.write(first)
            async with TaskSet("web-live") as tasks:
                down = tasks.spawn(_pump_down(self.call, self.out, self._started), name="down")
                up = tasks.spawn(self._pump_up(), name="up")
                await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
                if up.done() and not down.done():
                    if up.exception() is not None or self.ws.closed:
                        self.call.cancel()  # the browser left: the session ends at once
                    await down
                if tasks.failure is not None:
                    raise tasks.failure
        except grpc.aio.AioRpcError as exc:  # the write of config failed: the call is over
            await self.out.end(exc)
        finally:
            if not self.call.done():
                self.call.cancel()
            if not self.ws.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.close()

    async def _pump_up(self) -> None:
        """Browser -> gRPC. Returns when the browser closes (or half-closes and then closes)."""
        async for raw in self.ws:
            if raw.type == WSMsgType.TEXT:
                try:
                    msg = parse_client_message(raw.data)
                except BadMessage as exc:
                    await self.out.error(grpc.StatusCode.INVALID_ARGUMENT, str(exc), exc.field)
                    continue
                if msg is None:
                    self.browser_half_closed = True
                    await self.half_close()
                    continue
                kind = msg.WhichOneof("kind")
                if kind == "config":
                    await self.out.error(
                        grpc.StatusCode.INVALID_ARGUMENT, "config: only the first message may be config", "config"
                    )
                    continue
                if kind == "audio":
                    self.audio_turn = lpb.SpeakAudio(turn_id=msg.audio.turn_id, sample_rate=msg.audio.sample_rate)
                    if msg.audio.final:
                        self.audio_turn = None
            elif raw.type == WSMsgType.BINARY:
                if self.audio_turn is None:
                    await self.out.error(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        "audio: send a JSON audio message (turn_id, sample_rate) before PCM frames", "audio"
                    )
                    continue
                msg = lpb.LiveClientMessage(
                    audio=lpb.SpeakAudio(
                        turn_id=self.audio_turn.turn_id, sample_rate=self.audio_turn.sample_rate, pcm=raw.data
                    )
                )
            else:
                break
            if self.call.done():
                break
            try:
                await self.call.write(msg)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                break  # the session ended (or the edge half-closed it); _pump_down reports how


async def watch_bridge(client: TalkmeshClient, out: Sender, session_id: str) -> None:
    """``/v1/live/watch?session_id=...``: ``Live/Watch`` for a browser (server to browser only)."""
    ws = out.ws
    async with client.watch(session_id) as call, TaskSet("web-watch") as tasks:  # (leaving: cancelled)
        down = tasks.spawn(_pump_down(call, out), name="down")
        up = tasks.spawn(_drain(ws), name="up")
        await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)


async def _drain(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass
