"""Reading a client's request stream, the same way in every service.

Every client-streaming RPC of talkmesh has the same shape: the **first message carries the
config** (a field of the message's oneof), then data messages follow, and the stream ends with a
message whose ``end_of_stream`` is true. **A stream that the client half-closes without
``end_of_stream`` ends the same way**: closing the request stream is the end of the stream, and
``end_of_stream=true`` is the explicit form, which lets the last data message carry it. (A client
that goes away without closing cancels the call instead; that never reads as a normal end.)

``RequestStream.open`` reads and checks the first message and returns an async iterator over the
rest; errors use one wording everywhere:

* ``<config>: must be the first message of the stream`` (INVALID_ARGUMENT) when the stream is
  empty or starts with something else;
* ``<config>: must be sent only once, as the first message`` when it comes again;
* ``<what>: no message for N s`` (DEADLINE_EXCEEDED) when the client goes quiet for longer than
  the stream's idle limit, so a forgotten stream cannot hold a slot until the call's deadline.

Messages whose bytes do not parse reach handlers as ``Undecodable`` (see
``lenient_deserializer``; the server interceptor installs it for every method) and are turned
into INVALID_ARGUMENT naming the field by ``RequestStream`` and by the interceptor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from talkmesh.common.errors import DeadlineExceeded, InvalidArgument

M = TypeVar("M")


# -- requests whose bytes do not parse ------------------------------------------------------------
@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes did not parse, so the handler can name the field."""

    field: str
    reason: str

    def error(self) -> InvalidArgument:
        return InvalidArgument(self.field, self.reason)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise IndexError("varint too long")


def bad_utf8_field(data: bytes, desc: Descriptor, prefix: str = "", depth: int = 0) -> str | None:
    """The dotted name of the first string field in ``data`` that is not valid UTF-8 (or None)."""
    if depth > 16:
        return None
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            num, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length, pos = _varint(data, pos)
                chunk, pos = data[pos : pos + length], pos + length
                f = desc.fields_by_number.get(num)
                if f is None:
                    continue
                name = prefix + f.name
                if f.type == FieldDescriptor.TYPE_STRING:
                    try:
                        chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        return name
                elif f.type == FieldDescriptor.TYPE_MESSAGE:
                    inner = bad_utf8_field(chunk, f.message_type, name + ".", depth + 1)
                    if inner:
                        return inner
            else:
                return None
    except IndexError:
        return None
    return None


def lenient_deserializer(cls: Any) -> Callable[[bytes], Any]:
    """``cls.FromString`` that returns ``Undecodable`` instead of raising on bad bytes."""

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except DecodeError:
            field = bad_utf8_field(data, cls.DESCRIPTOR)
            if field:
                return Undecodable(field, "is not valid UTF-8")
            return Undecodable("request", f"is not a valid {cls.DESCRIPTOR.full_name} message")
        except Exception as exc:  # e.g. RecursionError on absurd nesting
            return Undecodable("request", f"cannot be parsed ({type(exc).__name__})")

    return parse


def checked(message: M | Undecodable) -> M:
    """``message`` itself, or INVALID_ARGUMENT if it did not parse."""
    if isinstance(message, Undecodable):
        raise message.error()
    return message


class CheckedRequests(Generic[M]):
    """An async iterator over requests that raises INVALID_ARGUMENT at the first undecodable one."""

    def __init__(self, requests: AsyncIterable[M | Undecodable]) -> None:
        self._requests = requests
        self._it: AsyncIterator[M | Undecodable] | None = None

    def __aiter__(self) -> CheckedRequests[M]:
        return self

    async def __anext__(self) -> M:
        if self._it is None:  # at the first read: gRPC's receiver, made and never read, warns when collected
            self._it = aiter(self._requests)
        return checked(await anext(self._it))


# -- the config-first request stream ------------------------------------------------------------
async def _next(it: AsyncIterator[Any], idle: float | None, what: str) -> Any:
    """The next message, None at the end; DEADLINE_EXCEEDED after ``idle`` seconds of silence."""
    if idle is None:
        return await anext(it, None)
    limit = asyncio.timeout(idle)  # never asyncio.wait_for: see talkmesh.common.aio.wait_event
    try:
        async with limit:
            return await anext(it, None)
    except TimeoutError:
        if not limit.expired():
            raise  # the source's own timeout, not this stream's silence
        raise DeadlineExceeded(f"{what}: no message for {idle:g} s") from None


class RequestStream(Generic[M]):
    """A client's request stream after its first message (see the module docstring).

    Iterating yields the data messages that follow the config, including the one that carries
    ``end_of_stream`` (it may hold data too), and stops after it or at the client's half-close.
    """

    def __init__(
        self,
        requests: AsyncIterator[Any],
        head: M,
        *,
        config_field: str,
        oneof: str,
        idle_timeout: float | None,
        what: str,
    ) -> None:
        self.head = head
        self.config_field = config_field
        self._it = requests
        self._oneof = oneof
        self._idle = idle_timeout
        self._what = what
        self.ended = _end_of_stream(head)
        self.received = 0

    @classmethod
    async def open(
        cls,
        requests: AsyncIterable[Any],
        config_field: str = "config",
        *,
        oneof: str = "kind",
        first_timeout: float | None = None,
        idle_timeout: float | None = None,
        what: str = "request stream",
    ) -> RequestStream[M]:
        """Reads the first message, which must carry ``config_field`` of the oneof ``oneof``."""
        it = aiter(requests)
        head = checked(await _next(it, first_timeout, what))
        if head is None or head.WhichOneof(oneof) != config_field:
            raise InvalidArgument(config_field, "must be the first message of the stream")
        return cls(it, head, config_field=config_field, oneof=oneof, idle_timeout=idle_timeout, what=what)

    @property
    def config(self) -> Any:
        """The config carried by the first message."""
        return getattr(self.head, self.config_field)

    def __aiter__(self) -> RequestStream[M]:
        return self

    async def __anext__(self) -> M:
        if self.ended:
            raise StopAsyncIteration
        msg = checked(await _next(self._it, self._idle, self._what))
        if msg is None:  # half-closed: the end of the stream
            self.ended = True
            raise StopAsyncIteration
        if msg.WhichOneof(self._oneof) == self.config_field:
            raise InvalidArgument(self.config_field, "must be sent only once, as the first message")
        self.received += 1
        self.ended = _end_of_stream(msg)
        return msg  # type: ignore[no-any-return]


def _end_of_stream(msg: Any) -> bool:
    return bool(getattr(msg, "end_of_stream", False))
