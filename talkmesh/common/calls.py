"""Streams from the next stage: a gRPC call, or the same handler called in-process.

A service that calls another stage (the gateway calling tts, audio_features and the encoder; the
encoder pulling frames from the renderer) reads the answer as a ``Stream``: an async iterator with
``cancel()``. Two implementations, one behaviour:

* ``CallStream`` wraps a grpc.aio call. For streaming requests a writer task owned by the stream
  feeds the call from an async iterable. Errors come out as ``StageError`` naming the stage, with
  the stage's own status code and details.
* ``LocalStream`` wraps an async generator (a servicer's handler called in-process with
  ``InProcessContext``: the benchmark's yardstick and the tests' fakes).

Two grpc.aio behaviours are handled here once:

* A write that fails because the server already ended the call replaces the server's status (say
  NOT_FOUND) with ``INTERNAL: Internal error from Core`` (grpc/grpc#36066). The writer stops as
  soon as the call has a status, so the reader reports the server's status.
* Reading a call that *we* cancelled raises ``asyncio.CancelledError``, which callers would take
  for their own cancellation and silently stop (a pipeline stage would hang instead of failing).
  ``CallStream`` turns it into the reason the call was cancelled (the request iterator's error,
  or a CANCELLED ``StageError``) unless the reading task itself is being cancelled.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from typing import Any

import grpc

from talkmesh.common.aio import cancel_and_wait
from talkmesh.common.errors import StageError, TalkmeshError
from talkmesh.common.inprocess import InProcessContext


class Stream(abc.ABC):
    """A response stream that can be cancelled (a gRPC call, or an in-process generator)."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[Any]: ...

    async def admitted(self) -> None:  # noqa: B027 - in-process streams are always admitted
        """Returns once the stage has admitted the stream; raises its refusal."""

    async def trailers(self) -> tuple[tuple[str, str | bytes], ...]:
        """The stage's trailing metadata (TTS's voice and warnings: ``talkmesh.common.propagation``)
        once the stream has ended (() before; in-process, what the handler has set so far). A
        wrapper of another Stream passes it on."""
        return ()

    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stops the stream and everything it started; safe to call more than once."""


class CallCancelled(TalkmeshError):
    """The call to a stage was cancelled by this process (not by the task reading it)."""

    code = grpc.StatusCode.CANCELLED


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class CallStream(Stream):
    """A grpc.aio call to ``stage``; ``requests`` (for client streaming) is written by an owned task.

    An exception raised by ``requests`` itself cancels the call and is re-raised to the reader
    instead of the resulting CANCELLED.
    """

    def __init__(self, call: Any, requests: AsyncIterable[Any] | None = None, *, stage: str) -> None:
        self.call = call
        self.stage = stage
        self.failure: BaseException | None = None
        self._cancelled = False
        self.writer: asyncio.Task[None] | None = None
        if requests is not None:
            self.writer = asyncio.create_task(self._write(requests), name=f"{stage}-request-writer")

    async def _write(self, requests: AsyncIterable[Any]) -> None:
        try:
            async for request in requests:
                if self.call.done():
                    return
                if not await _write_keeping_status(self.call, request):
                    return
            if not self.call.done():
                await self.call.done_writing()
        except asyncio.CancelledError:
            raise
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            return  # the call ended; its status is what the reader reports
        except Exception as exc:
            self.failure = exc
            self.call.cancel()

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """What reading the call raises, as this stream's errors (see the module docstring)."""
        try:
            yield
        except asyncio.CancelledError:
            if _being_cancelled() or not (self._cancelled or self.failure is not None or self.call.cancelled()):
                raise  # our own task is being cancelled: never turn that into an error
            if self.failure is not None:
                raise self.failure from None
            raise CallCancelled(f"{self.stage}: call cancelled") from None
        except grpc.aio.AioRpcError as exc:
            if self.failure is not None:
                raise self.failure from None
            raise StageError(self.stage, exc) from None

    async def _read(self) -> AsyncIterator[Any]:
        with self._translated():
            while (msg := await self.call.read()) is not grpc.aio.EOF:
                yield msg
        if self.failure is not None:
            raise self.failure

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._read()

    async def admitted(self) -> None:
        """Returns once the stage has admitted the stream (its headers arrived); raises its status
        (RESOURCE_EXHAUSTED, UNAVAILABLE...) as a ``StageError`` if it refused it."""
        try:
            await self.call.initial_metadata()
        except grpc.aio.AioRpcError as exc:
            raise StageError(self.stage, exc) from None
        if self.call.done():
            code = await self.call.code()
            if code != grpc.StatusCode.OK:
                details = await self.call.details()
                trailing = await self.call.trailing_metadata()
                raise StageError(
                    self.stage, grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=details)
                )

    async def trailers(self) -> tuple[tuple[str, str | bytes], ...]:
        if not self.call.done():
            return ()
        return tuple(await self.call.trailing_metadata() or ())

    async def response(self) -> Any:
        """The single response of a client-streaming call (same error handling as reading)."""
        try:
            with self._translated():
                return await self.call
        finally:
            await cancel_and_wait(self.writer)

    async def cancel(self) -> None:
        self._cancelled = True
        self.call.cancel()
        await cancel_and_wait(self.writer)


async def _write_keeping_status(call: Any, request: Any) -> bool:
    """``call.write(request)``, except that a write failing because the server already ended the
    call leaves the server's status in place (grpc/grpc#36066: ``_write`` overwrites it with
    INTERNAL). Uses grpc.aio internals when present, the public API otherwise. False: call ended."""
    cython_call = getattr(call, "_cython_call", None)
    serializer = getattr(call, "_request_serializer", None)
    metadata_sent = getattr(call, "_metadata_sent", None)
    if cython_call is None or metadata_sent is None or not hasattr(cython_call, "send_serialized_message"):
        await call.write(request)
        return True
    if not metadata_sent.is_set():
        await metadata_sent.wait()
    if call.done():
        return False
    data = serializer(request) if serializer is not None else request.SerializeToString()
    try:
        await cython_call.send_serialized_message(data)
    except grpc._cython.cygrpc.InternalError:  # the stream is closed; the status is on its way
        return False
    return True


class LocalStream(Stream):
    """An async generator as a Stream (a handler called in-process)."""

    def __init__(self, gen: AsyncIterator[Any], context: InProcessContext | None = None) -> None:
        self.gen = gen
        self.context = context

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.gen

    async def trailers(self) -> tuple[tuple[str, str | bytes], ...]:
        return () if self.context is None else self.context.trailing_metadata

    async def cancel(self) -> None:
        aclose = getattr(self.gen, "aclose", None)
        if aclose is None:
            return
        try:
            await aclose()
        except RuntimeError:
            pass  # "aclose(): asynchronous generator is already running": its reader is being cancelled
