"""Receiving avatar uploads: bounded in bytes held, in time, and refused early when the format is wrong.

An upload's bytes are held in memory until its registration is done (the decoders read them from
memory; a video goes to a temporary file for OpenCV at decoding time). So a renderer bounds:

* **what one upload holds**: its bytes once, in a memory mapping of their own (``HeldUpload``:
  grown without copies, unmapped at release), at most ``avatars.max_upload_bytes``;
* **what all uploads hold together**: ``avatars.upload_memory_bytes`` (0: twice
  ``max_upload_bytes``), counted as the bytes arrive and given back when the registration has
  finished (in its worker thread, even when the caller went away meanwhile). An upload whose next
  block would go over it is refused with RESOURCE_EXHAUSTED naming the key (retry later);
* **how slowly an upload may arrive**: after a grace of ``avatars.upload_grace_seconds`` (30 s) it
  must have averaged at least ``avatars.upload_min_bytes_per_second`` (32 KiB/s) since the call's
  start (DEADLINE_EXCEEDED the moment it falls below), besides ``server.stream_idle_seconds``
  between messages: a client that trickles a byte at a time is cut within about the grace, while
  a phone on a slow network (the gateway and the web edge pass its bytes straight through) gets
  as long as its upload needs at that rate. ``avatars.upload_timeout_seconds`` (default 0: none)
  is an optional ceiling on the whole upload;
* **what it must be**: the first ``SNIFF_BYTES`` must be a format on the allow-list
  (``services/renderer/avatars/decode.py``), checked as soon as they are in, before the rest is
  received (the file name's extension even before that).

Once nothing is held any more, the process gives freed heap memory back to the system
(``malloc_trim``): the 1 MiB messages an upload arrives in are freed in glibc's arenas, which keep
them (a renderer that had received six 199 MB uploads kept 1.5 GB resident without it). A trim
takes tens of milliseconds on a fragmented heap, so it never runs on the event loop (a frame is
40 ms): ``Trimmer`` runs it on one thread of its own, one at a time, at most once per
``TRIM_INTERVAL`` seconds, requests meanwhile coalesced into one.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import mmap
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from services.renderer.avatars.decode import SNIFF_BYTES, Data, check_filename_type, check_format
from services.renderer.config import AvatarConfig
from talkmesh.common.enums import short_name
from talkmesh.common.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted
from talkmesh.common.names import check_filename, check_id, clean_name
from talkmesh.common.streams import RequestStream
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import types_pb2

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


#: the shortest time between two trims (requests meanwhile are coalesced into one trim)
TRIM_INTERVAL = 1.0


class Trimmer:
    """Runs ``trim`` off the caller's thread: on one daemon thread of its own (started on first
    use), one trim at a time, at most once per ``interval`` seconds; requests while one is pending
    or running are coalesced into one trim after it. ``request`` never blocks."""

    def __init__(self, trim: Callable[[], None], interval: float = TRIM_INTERVAL) -> None:
        self._trim = trim
        self.interval = interval
        self._wanted = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: trims run so far
        self.runs = 0

    def request(self) -> None:
        self._wanted.set()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        last = -self.interval
        while True:
            self._wanted.wait()
            wait = last + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # (requests meanwhile: the same trim)
            self._wanted.clear()
            last = time.monotonic()
            try:
                self._trim()
            except Exception:  # pragma: no cover - a no-op or glibc's; never worth a thread
                log.exception("malloc_trim failed")
            self.runs += 1


class UploadBudget:
    """The bytes all uploads of one renderer hold (``avatars.upload_memory_bytes``). Thread-safe:
    a registration gives its bytes back from its worker thread."""

    def __init__(self, limit: int, trim: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()
        self.trimmer = Trimmer(trim if trim is not None else _trimmer())

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
            self.trimmer.request()  # (tens of ms: on the trimmer's thread, never the caller's)


#: the first mapping of an upload's bytes (grown by doubling, by ``mremap``: no copy)
FIRST_MAPPING = 1 << 20


def resized(m: mmap.mmap, size: int, used: int) -> mmap.mmap:
    """``m`` at ``size`` bytes, its first ``used`` kept: in place where the system can move a
    mapping's pages (Linux's ``mremap``); elsewhere (macOS) a new mapping, the bytes copied once."""
    try:
        m.resize(size)
        return m
    except (SystemError, OSError):
        pass
    grown = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    with memoryview(m) as view:  # (copied page to page: no third copy as bytes)
        grown[:used] = view[:used]
    m.close()
    return grown


class HeldUpload:
    """One upload's bytes and its share of the budget, given back once (``release``).

    The bytes are written in order into an anonymous private memory mapping of their own, not
    into the heap: growing it moves pages, never copies them (``mremap``), the pages not written
    yet cost no memory, and ``release`` unmaps it, so the memory goes back to the system at once.
    (A ``bytearray`` grown in place left the heap's arenas with the holes of every size it had
    outgrown, interleaved between concurrent uploads: ~300 MiB kept free in the arenas at the peak
    of six concurrent 199 MB uploads, beside the 400 MiB budget; BENCHMARKS.md, stop 40.)"""

    def __init__(self, budget: UploadBudget) -> None:
        self.budget = budget
        self._map: mmap.mmap | None = None
        self._counted = 0
        self._released = False
        self._lock = threading.Lock()
        #: bytes received (kept after a release, for messages)
        self.received = 0
        #: handed to ``Preparations.run``, which releases it from then on
        self.taken = False

    def add(self, block: bytes) -> bool:
        """Appends ``block`` (while receiving, before any release); False (nothing added) when
        the budget has no room for it."""
        if not self.budget.take(len(block)):
            return False
        with self._lock:
            self._counted += len(block)
        end = self.received + len(block)
        if self._map is None:
            if block:
                self._map = mmap.mmap(-1, max(end, FIRST_MAPPING), flags=mmap.MAP_PRIVATE)
        elif end > len(self._map):
            self._map = resized(self._map, max(end, 2 * len(self._map)), self.received)
        if self._map is not None:
            self._map[self.received : end] = block
        self.received = end
        return True

    def head(self, n: int) -> bytes:
        """A copy of the first ``n`` bytes received (while receiving)."""
        return self._map[: min(n, self.received)] if self._map is not None else b""

    @property
    def data(self) -> mmap.mmap | bytes:
        """The bytes received, read in place (``len``, slices and indexing as ``bytes``, ``find``,
        the buffer protocol), once all have arrived: the first access trims the mapping to them
        (``b""``: none, or released)."""
        m = self._map
        if m is None:
            return b""
        if len(m) != self.received:
            m = self._map = resized(m, self.received, self.received)  # (the unwritten tail: never touched)
        return m

    def release(self) -> None:
        """Drops the bytes and gives their share back (idempotent, from any thread)."""
        with self._lock:
            if self._released:
                return
            self._released = True
            counted, self._counted = self._counted, 0
        m, self._map = self._map, None
        # Unmapped here, in place: a failed registration's traceback (frames holding the bytes) may
        # live on until the garbage collector's next full pass.
        if m is not None:
            try:
                m.close()
            except BufferError:  # a view of the bytes is still alive: unmapped with the last one
                pass
        self.budget.give(counted)


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int
    memory_bytes: int
    #: ceiling on the whole upload (0: none)
    timeout_seconds: float = 0.0
    #: after ``grace_seconds``, the least average rate since the start (0: none)
    min_bytes_per_second: int = 0
    grace_seconds: float = 30.0

    @classmethod
    def of(cls, cfg: AvatarConfig) -> UploadLimits:
        return cls(
            cfg.max_upload_bytes,
            cfg.upload_memory_limit,
            cfg.upload_timeout_seconds,
            cfg.upload_min_bytes_per_second,
            cfg.upload_grace_seconds,
        )

    def deadline(self, start: float, received: int) -> float | None:
        """When (loop time) an upload started at ``start`` that has ``received`` bytes so far is
        too slow: the ceiling, or the moment its average rate since ``start`` falls below the
        minimum (never before the grace is over). None: never."""
        at: list[float] = []
        if self.timeout_seconds:
            at.append(start + self.timeout_seconds)
        if self.min_bytes_per_second:
            at.append(start + max(self.grace_seconds, received / self.min_bytes_per_second))
        return min(at) if at else None

    def too_slow(self, start: float, now: float, received: int) -> str:
        """Why the upload is cut at ``now`` (the DEADLINE_EXCEEDED message)."""
        elapsed = now - start
        if self.timeout_seconds and elapsed >= self.timeout_seconds:
            return f"upload: not complete after {self.timeout_seconds:g} s (avatars.upload_timeout_seconds)"
        return (
            f"upload: {received} bytes in {elapsed:.0f} s, slower than avatars.upload_min_bytes_per_second "
            f"({self.min_bytes_per_second} bytes/s on average after the first {self.grace_seconds:g} s)"
        )


async def receive_upload(
    request_iterator: AsyncIterator[Any], budget: UploadBudget, limits: UploadLimits, idle: float | None
) -> tuple[rpb.AvatarMeta, HeldUpload]:
    """The upload's meta and its bytes, held (the caller releases them when done with them; on an
    error they are released here)."""
    held = HeldUpload(budget)
    loop = asyncio.get_running_loop()
    start = loop.time()
    timeout = asyncio.timeout_at(limits.deadline(start, 0))
    try:
        async with timeout:
            meta = await _receive(request_iterator, held, budget, limits, idle, timeout, start)
    except TimeoutError:
        held.release()
        if timeout.expired():  # (not another timeout inside: that one is its own error)
            raise DeadlineExceeded(limits.too_slow(start, loop.time(), held.received)) from None
        raise
    except BaseException:
        held.release()
        raise
    return meta, held


def framing_of(meta: rpb.AvatarMeta) -> str:
    """The upload's framing as the avatar store takes it (services/renderer/avatars/store.py
    FRAMINGS: the value's short name, "auto" for 0), or InvalidArgument naming ``meta.framing``."""
    try:
        return short_name(types_pb2.Framing, meta.framing or types_pb2.FRAMING_AUTO)
    except ValueError:
        known = ", ".join(f"{types_pb2.Framing.Name(v)} ({v})" for v in types_pb2.Framing.values())
        raise InvalidArgument("meta.framing", f"unknown framing {meta.framing} (known: {known})") from None


async def _receive(
    request_iterator: AsyncIterator[Any],
    held: HeldUpload,
    budget: UploadBudget,
    limits: UploadLimits,
    idle: float | None,
    timeout: asyncio.Timeout,
    start: float,
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
    framing_of(meta)  # (refused before the file's bytes arrive)
    sniffed = False
    async for msg in upload:
        if held.received + len(msg.data) > limits.max_bytes:
            raise InvalidArgument("data", f"upload exceeds the limit of {limits.max_bytes} bytes")
        if not held.add(msg.data):
            raise ResourceExhausted(
                f"uploads in flight on this renderer hold {budget.held} bytes; {len(msg.data)} more would "
                f"exceed avatars.upload_memory_bytes ({budget.limit}); retry later",
                retry_after=5.0,
                quota="avatars.upload_memory_bytes",
                subject="renderer",
            )
        timeout.reschedule(limits.deadline(start, held.received))  # (the rate's deadline moves on)
        if not sniffed and held.received >= SNIFF_BYTES:
            check_format(held.head(SNIFF_BYTES), meta.filename)  # refused before the rest arrives
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

    async def run(self, held: HeldUpload, work: Callable[[Data], T]) -> T:
        """``work(bytes)`` in a worker thread once a slot is free. ``work`` may release ``held``
        itself as soon as it no longer needs the bytes (the store's register does once they are
        decoded: the upload budget need not wait for the face analysis and backends)."""
        held.taken = True
        try:
            await self._slots.acquire()
        except BaseException:
            held.release()
            raise
        loop = asyncio.get_running_loop()
        lock = threading.Lock()
        state = {"started": False, "done": False}  # the worker began work; the slot was given back

        def hand_back() -> None:  # (once: by whoever set state["done"])
            held.release()
            try:
                loop.call_soon_threadsafe(self._slots.release)  # (the semaphore is the loop's)
            except RuntimeError:  # the loop is closed: nothing waits for a slot any more
                pass

        def give_back() -> None:
            with lock:
                if state["done"]:
                    return
                state["done"] = True
            hand_back()

        def worker() -> T:
            with lock:
                if state["done"]:  # cancelled while this thread started: the bytes are gone
                    raise asyncio.CancelledError
                state["started"] = True
            try:
                return work(held.data)
            finally:
                give_back()

        try:
            return await asyncio.to_thread(worker)
        finally:
            with lock:  # decided with the worker's start in one step: a worker starting now stops
                abandoned = not state["started"] and not state["done"]
                if abandoned:
                    state["done"] = True
            if abandoned:  # (cancelled before the worker began: it never will)
                hand_back()
