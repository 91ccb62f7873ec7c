"""The streaming core: bounded channels, owned tasks, and cancellation that never lies.

Every service, the gateway's pipelines and the live sessions move data between concurrent parts
with these three pieces (the shape follows livekit/agents ``utils.aio``; the code is ours), and
a few small helpers built on them (``priority_merge``, ``wait_event``, ``any_event``, ``all_of``):

* ``Chan``: a bounded, closable channel. ``send`` waits while it is full (back pressure),
  iteration ends when it is closed and drained (no sentinels in callers), and a producer that
  fails closes it with the error so the consumer raises it, in order, after the items before it.
* ``cancel_and_wait``: cancels tasks and waits until they have finished, without swallowing the
  *caller's* own cancellation (``task.cancel(); with suppress(CancelledError): await task`` does
  swallow it when the caller is cancelled while waiting).
* ``TaskSet``: owns the tasks of one request or session: each is named, a failure in one is
  recorded (the first wins) and reported to a callback, and ``aclose`` cancels and awaits them all.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


class ChanClosed(Exception):
    """Raised by ``Chan.send`` after the channel was closed, and by ``recv`` once it is drained."""


class _Gauge(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Chan(Generic[T]):
    """A bounded FIFO channel between one or more producers and consumers.

    ``close()`` ends the stream: items already sent are still received, then iteration stops
    (``recv`` raises ``ChanClosed``). ``close(error)`` makes the consumer raise ``error`` after
    those items instead, which is how a failing producer hands its error downstream.
    ``gauge`` (e.g. a ``talkmesh_queue_depth`` child) follows the number of items waiting: each
    channel adds its own depth (so concurrent streams sharing a gauge sum up) and takes it back when
    it is drained or ``discard``-ed. Owners discard their channels when a stream ends (the items of
    a cancelled stream are never read), so no stale depth is left behind.
    """

    def __init__(self, maxsize: int, *, gauge: _Gauge | None = None) -> None:
        if maxsize < 1:
            raise ValueError("Chan: maxsize must be at least 1 (channels are bounded)")
        self.maxsize = maxsize
        self._items: collections.deque[T] = collections.deque()
        self._closed = False
        self._error: BaseException | None = None
        self._gauge = gauge
        self._reported = 0
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        #: set when the channel is closed (or discarded): ``any_event(done, chan.closed_event)``
        self.closed_event = asyncio.Event()

    # -- state ------------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def _changed(self) -> None:
        n = len(self._items)
        if n or self._closed:
            self._readable.set()
        else:
            self._readable.clear()
        if n < self.maxsize or self._closed:
            self._writable.set()
        else:
            self._writable.clear()
        if self._gauge is not None and n != self._reported:
            self._gauge.inc(n - self._reported)
            self._reported = n

    # -- producer ---------------------------------------------------------------------------------
    async def send(self, item: T) -> None:
        """Waits for room, then appends ``item``; ``ChanClosed`` if the channel is (or gets) closed."""
        while not self._closed and len(self._items) >= self.maxsize:
            await self._writable.wait()
        self.send_nowait(item)

    def send_nowait(self, item: T) -> None:
        """Appends ``item`` now: ``ChanClosed`` if closed, ``asyncio.QueueFull`` if full."""
        if self._closed:
            raise ChanClosed("send on a closed channel")
        if len(self._items) >= self.maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        self._changed()

    def close(self, error: BaseException | None = None) -> None:
        """Ends the stream (idempotent: the first close, and its error, win)."""
        if self._closed:
            return
        self._closed = True
        self._error = error
        self.closed_event.set()
        self._changed()  # wakes consumers (they see the end) and blocked producers (ChanClosed)

    def discard(self) -> None:
        """Closes the channel and drops what is waiting (its reader is gone: a stream's teardown)."""
        self._closed = True
        self.closed_event.set()
        self._items.clear()
        self._changed()

    def clear(self) -> list[T]:
        """Removes and returns everything waiting (interrupts drop queued media this way)."""
        items = list(self._items)
        self._items.clear()
        self._changed()
        return items

    # -- consumer ---------------------------------------------------------------------------------
    async def recv(self) -> T:
        """The next item; at the end ``ChanClosed`` (or the error the channel was closed with)."""
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise ChanClosed("receive on a closed, drained channel")
            await self._readable.wait()
        return self.recv_nowait()

    def recv_nowait(self) -> T:
        """The next item now: ``asyncio.QueueEmpty`` if none is waiting (and the channel is open)."""
        if not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise ChanClosed("receive on a closed, drained channel")
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        self._changed()
        return item

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.recv()
        except ChanClosed:
            raise StopAsyncIteration from None


async def cancel_and_wait(*futures: asyncio.Future[Any] | None) -> None:
    """Cancels ``futures`` and waits until every one has finished.

    Their results and exceptions are discarded. If the *caller* is cancelled while waiting, the
    ``CancelledError`` propagates to it (the futures have been cancelled already); it is never
    swallowed, unlike the common ``cancel(); suppress(CancelledError): await`` idiom.
    """
    pending = [f for f in futures if f is not None and not f.done()]
    if not pending:
        return
    loop = asyncio.get_running_loop()
    released = loop.create_future()
    remaining = len(pending)

    def _one_done(_: asyncio.Future[Any]) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0 and not released.done():
            released.set_result(None)

    for f in pending:
        f.add_done_callback(_one_done)
        f.cancel()
    try:
        await released
    finally:
        for f in pending:
            f.remove_done_callback(_one_done)
        for f in pending:  # mark exceptions as retrieved: nobody else will look at them
            if f.done() and not f.cancelled():
                f.exception()


class TaskSet:
    """The tasks of one request or session, owned in one place.

    ``spawn`` starts a named task. When a task fails (any exception but cancellation), the first
    failure is kept in ``failure`` and handed to ``on_error`` (typically: close the output channel
    with it, so the consumer raises it); the other tasks keep running until ``aclose``, which
    cancels and awaits whatever is left. Use it as an async context manager.
    """

    def __init__(self, name: str = "", on_error: Callable[[BaseException], None] | None = None) -> None:
        self.name = name
        self.on_error = on_error
        self.failure: BaseException | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failed = asyncio.Event()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str) -> asyncio.Task[T]:
        if self._closed:
            coro.close()
            raise RuntimeError(f"TaskSet {self.name!r} is closed")
        task = asyncio.create_task(coro, name=f"{self.name}:{name}" if self.name else name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        if self.failure is None:
            self.failure = exc
            self._failed.set()
            if self.on_error is not None:
                self.on_error(exc)

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        return frozenset(self._tasks)

    async def wait_failure(self) -> BaseException:
        """Returns the first failure once there is one (waits forever if none happens)."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    async def join(self) -> None:
        """Waits for every task to finish on its own; raises the first failure, if any."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))
        if self.failure is not None:
            raise self.failure

    async def aclose(self) -> None:
        """Cancels every task still running and waits for them (see ``cancel_and_wait``)."""
        self._closed = True
        await cancel_and_wait(*self._tasks)

    async def __aenter__(self) -> TaskSet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def priority_merge(*chans: Chan[T]) -> AsyncIterator[T]:
    """Items of several channels, always from the first non-empty one in ``chans`` order.

    Control overtakes media: an interrupt in the first channel is taken before any data still
    queued in the second. Ends when every channel is closed and drained; a channel closed with an
    error raises it when it is reached.
    """
    while True:
        for ch in chans:
            if ch.qsize():
                yield ch.recv_nowait()
                break
        else:
            open_ = [ch for ch in chans if not ch.closed]
            for ch in chans:
                if ch.closed and ch._error is not None:
                    raise ch._error
            if not open_:
                return
            waiters = [asyncio.ensure_future(ch._readable.wait()) for ch in open_]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(*waiters)


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Waits until ``event`` is set or ``timeout`` seconds have passed; returns whether it is set.

    Use this (or ``asyncio.timeout``), never ``asyncio.wait_for``, in talkmesh: on Python 3.11
    ``wait_for`` returns normally, swallowing the caller's cancellation, when the awaited thing
    completes at the moment the caller is cancelled (a session's own ``end`` event firing while
    the session is being torn down left its task running forever).
    """
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def any_event(*events: asyncio.Event) -> None:
    """Returns once any of ``events`` is set."""
    if any(e.is_set() for e in events):
        return
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(*waiters)


async def all_of(*aws: Coroutine[Any, Any, Any]) -> list[Any]:
    """Runs ``aws`` concurrently and returns their results; at the first failure the others are
    cancelled (and awaited) and that failure is raised as it is (not wrapped in an ExceptionGroup)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
    finally:
        await cancel_and_wait(*tasks)
