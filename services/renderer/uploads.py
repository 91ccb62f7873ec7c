"""Receiving avatar uploads: bounded in bytes held, in time, and refused early when the format is wrong.

An upload's bytes are held in memory until its registration is done (the decoders read them from
memory; a video goes to a temporary file for OpenCV at decoding time). So a renderer bounds:

* **what one upload holds**: its bytes once, in one ``bytearray`` grown in place (no copy at the
  end), at most ``avatars.max_upload_bytes``;
* **what all uploads hold together**: ``avatars.upload_memory_bytes`` (0: twice
  ``max_upload_bytes``), counted as the bytes arrive and given back when the registration has
  finished (in its worker thread, even when the caller went away meanwhile). An upload whose next
  block would go over it is refused with RESOURCE_EXHAUSTED naming the key (retry later);
* **how long an upload may take to arrive**: ``avatars.upload_timeout_seconds`` from the call's
  start to its last byte (DEADLINE_EXCEEDED), besides ``server.stream_idle_seconds`` between
  messages: a client that trickles a byte at a time cannot hold its stream for longer;
* **what it must be**: the first ``SNIFF_BYTES`` must be a format on the allow-list
  (``services/renderer/avatars/decode.py``), checked as soon as they are in, before the rest is
  received (the file name's extension even before that).

Once nothing is held any more, the process gives freed heap memory back to the system
(``malloc_trim``): the 1 MiB messages an upload arrives in are freed in glibc's arenas, which keep
them (a renderer that had received six 199 MB uploads kept 1.5 GB resident without it).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from services.renderer.avatars.decode import SNIFF_BYTES, check_filename_type, check_format
from services.renderer.config import AvatarConfig
from talkmesh.common.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from talkmesh.common.names import check_filename, check_id, clean_name
from talkmesh.common.streams import RequestStream
from talkmesh.v1 import renderer_pb2 as rpb

log = logging.getLogger(__name__)

T = TypeVar("T")


def _trimmer() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)`` (a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def run() -> None:
        trim(0)

    return run


class UploadBudget:
    """The bytes all uploads of one renderer hold (``avatars.upload_memory_bytes``). Thread-safe:
    a registration gives its bytes back from its worker thread."""

    def __init__(self, limit: int, trim: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()
        self._trim = trim if trim is not None else _trimmer()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.held + n > self.limit:
                return False
            self.held += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.held -= n
            idle = self.held == 0
        if idle and n:
            self._trim()  # (a few ms; only when the last upload is done)


class HeldUpload:
    """One upload's bytes and its share of the budget, given back once (``release``)."""

    def __init__(self, budget: UploadBudget) -> None:
        self.budget = budget
        self.data = bytearray()
        self._counted = 0
        self._released = False
        self._lock = threading.Lock()
        #: handed to ``Preparations.run``, which releases it from then on
        self.taken = False

    def add(self, block: bytes) -> bool:
        """Appends ``block`` (while receiving, before any release); False (nothing added) when
        the budget has no room for it."""
        if not self.budget.take(len(block)):
            return False
        with self._lock:
            self._counted += len(block)
        self.data += block  # grown in place (amortised), never copied whole at the end
        return True

    def release(self) -> None:
        """Drops the bytes and gives their share back (idempotent, from any thread)."""
        with self._lock:
            if self._released:
                return
            self._released = True
            counted, self._counted = self._counted, 0
        data, self.data = self.data, bytearray()
        # Freed here, in place: a failed registration's traceback (frames holding the bytes) may
        # live on until the garbage collector's next full pass.
        try:
            data.clear()
        except BufferError:  # a view of the bytes is still alive: freed with it
            pass
        self.budget.give(counted)


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    memory_bytes: int
    timeout_seconds: float

    @classmethod
    def of(cls, cfg: AvatarConfig) -> UploadLimits:
        return cls(cfg.max_upload_bytes, cfg.upload_memory_limit, cfg.upload_timeout_seconds)


async def receive_upload(
    request_iterator: AsyncIterator[Any], budget: UploadBudget, limits: UploadLimits, idle: float | None
) -> tuple[rpb.AvatarMeta, HeldUpload]:
    """The upload's meta and its bytes, held (the caller releases them when done with them; on an
    error they are released here)."""
    held = HeldUpload(budget)
    try:
        async with asyncio.timeout(limits.timeout_seconds or None):
            meta = await _receive(request_iterator, held, budget, limits, idle)
    except TimeoutError:
        held.release()
        raise DeadlineExceeded(
            f"upload: not complete after {limits.timeout_seconds:g} s (avatars.upload_timeout_seconds)"
        ) from None
    except BaseException:
        held.release()
        raise
    return meta, held


async def _receive(
    request_iterator: AsyncIterator[Any],
    held: HeldUpload,
    budget: UploadBudget,
    limits: UploadLimits,
    idle: float | None,
) -> rpb.AvatarMeta:
    upload: RequestStream[rpb.AvatarUpload] = await RequestStream.open(
        request_iterator, "meta", first_timeout=idle, idle_timeout=idle, what="upload"
    )
    meta = upload.head.meta
    check_filename("meta.filename", meta.filename)
    check_filename_type(meta.filename)
    meta.name = clean_name("meta.name", meta.name)
    if len(meta.backends) > 16:
        raise InvalidArgument("meta.backends", "names at most 16 backends")
    for i, b in enumerate(meta.backends):
        check_id(f"meta.backends[{i}]", b)
    sniffed = False
    async for msg in upload:
        if len(held.data) + len(msg.data) > limits.max_bytes:
            raise InvalidArgument("data", f"upload exceeds the limit of {limits.max_bytes} bytes")
        if not held.add(msg.data):
            raise ResourceExhausted(
                f"uploads in flight on this renderer hold {budget.held} bytes; {len(msg.data)} more would "
                f"exceed avatars.upload_memory_bytes ({budget.limit}); retry later",
                retry_after=5.0,
                quota="avatars.upload_memory_bytes",
                subject="renderer",
            )
        if not sniffed and len(held.data) >= SNIFF_BYTES:
            check_format(held.data[:SNIFF_BYTES], meta.filename)  # refused before the rest arrives
            sniffed = True
    return meta


class Preparations:
    """At most ``avatars.max_preparing`` registrations prepared at once, each in a worker thread.

    The slot and the upload's bytes are given back when the worker is done, not when the caller
    stops waiting for it: a client that hangs up while its video is decoded cannot start another
    decode in its place (the thread cannot be stopped; it finishes and its result is dropped)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)

    async def run(self, held: HeldUpload, work: Callable[[bytearray], T]) -> T:
        held.taken = True
        try:
            await self._slots.acquire()
        except BaseException:
            held.release()
            raise
        loop = asyncio.get_running_loop()
        lock = threading.Lock()
        done: list[bool] = []  # the slot was given back
        started: list[bool] = []

        def give_back() -> None:
            with lock:
                if done:
                    return
                done.append(True)
            held.release()
            if threading.current_thread() is threading.main_thread():
                self._slots.release()
            else:
                loop.call_soon_threadsafe(self._slots.release)

        def worker() -> T:
            started.append(True)
            try:
                return work(held.data)
            finally:
                give_back()

        try:
            return await asyncio.to_thread(worker)
        finally:
            if not started:  # (cancelled before the worker ran: it never will)
                give_back()
