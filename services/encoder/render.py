"""Where the encoder gets rendered frames: the renderer's Render stream, pulled by the encoder.

The data plane keeps raw frames between the renderer and the encoder (one pod, one GPU, a Unix
socket or localhost in Kubernetes): the caller sends the renderer's input (visemes, per-frame
features) inside its Encode stream, and the encoder forwards it to the renderer and encodes the
frames that come back. ``FrameSource`` is that one call; ``GrpcFrameSource`` makes it over gRPC,
and the benchmark's in-process yardstick passes the renderer's handler directly (``LocalFrameSource``).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import errno
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from talkmesh.common.calls import CallStream, LocalStream, Stream
from talkmesh.common.channel import create_channel
from talkmesh.common.config import Endpoint
from talkmesh.common.errors import InvalidArgument
from talkmesh.common.framering import FrameRing
from talkmesh.common.inprocess import InProcessContext
from talkmesh.common.lru import Lru
from talkmesh.common.principal import principal_metadata
from talkmesh.common.propagation import outgoing_metadata
from talkmesh.v1 import common_pb2, renderer_pb2, renderer_pb2_grpc

log = logging.getLogger(__name__)


class FrameSource(abc.ABC):
    """Opens a Render stream: ``requests`` (config first) in, VideoFrame messages out."""

    #: The renderer is another process, which may share this machine's memory: streams offer it a
    #: frame ring (talkmesh/common/framering.py). In-process, frames are passed as they are.
    remote = False

    @abc.abstractmethod
    def render(self, requests: AsyncIterable[renderer_pb2.RenderRequest], timeout: float | None) -> Stream: ...

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases the connection."""


class GrpcFrameSource(FrameSource):
    """The renderer over gRPC (``renderer.target``: ``host:port``, ``dns:///...`` or ``unix:///path``)."""

    remote = True

    def __init__(self, endpoint: Endpoint, max_message_bytes: int) -> None:
        # Raw frames come back: the stream window starts large enough for two whole messages.
        self.channel = create_channel(
            endpoint.target, max_message_bytes, interceptors=False, large_window=True, tls=endpoint.tls
        )
        self.stub = renderer_pb2_grpc.RendererStub(self.channel)

    def render(self, requests: AsyncIterable[renderer_pb2.RenderRequest], timeout: float | None) -> Stream:
        # The API key the gateway named (if any): the renderer renders only avatars the key may use.
        call = self.stub.Render(timeout=timeout, metadata=outgoing_metadata(principal_metadata()))
        return CallStream(call, requests, stage="renderer")

    async def close(self) -> None:
        await self.channel.close()


class LocalFrameSource(FrameSource):
    """The renderer's Render handler called in this process (no gRPC): the benchmark's yardstick."""

    def __init__(self, handler: Callable[[Any, Any], Any]) -> None:
        self.handler = handler

    def render(self, requests: AsyncIterable[renderer_pb2.RenderRequest], timeout: float | None) -> Stream:
        return LocalStream(self.handler(aiter(requests), InProcessContext(timeout)))


async def unbatched(stream: AsyncIterable[common_pb2.VideoFrame]) -> AsyncIterator[common_pb2.VideoFrame]:
    """The Render stream's messages with each batch (``VideoFrame.frames``, asked for with
    ``RenderConfig.batch_frames``) replaced by its frames, in order."""
    async for vf in stream:
        if vf.frames:
            for frame in vf.frames:
                yield frame
        else:
            yield vf


class RingOffer:
    """A stream's frame ring (talkmesh/common/framering.py), from the encoder's side.

    Offered to the renderer ahead of the stream's next renderer input once it is made (``offer``:
    at once for a ring ``FrameRings`` had ready); its slots read as frames are encoded (``pixels``)
    and released after them (``release``); its file unlinked once the renderer has used it, or at
    the end (``close``). A ring the directory cannot hold is not made: the frames then come inline.
    """

    def __init__(self, made: asyncio.Future[FrameRing | None]) -> None:
        self._made: asyncio.Future[FrameRing | None] | None = made
        self._offered = False
        self._ring: FrameRing | None = None

    @property
    def ring(self) -> FrameRing | None:
        """The ring, once made and offered (frames may come through it from then on)."""
        return self._ring

    def offer(self, seq: int) -> renderer_pb2.RenderRequest | None:
        """The RenderRequest that offers the ring: once, the first time it is asked for after the
        ring is made (None before, after, or if it could not be made)."""
        if self._offered or self._made is None or not self._made.done():
            return None
        self._offered = True
        ring = self._made.result()
        if ring is None:
            return None
        self._ring = ring
        return renderer_pb2.RenderRequest(
            seq=seq, frame_ring=renderer_pb2.FrameRing(name=ring.name, slots=ring.slots, slot_bytes=ring.slot_bytes)
        )

    def pixels(self, vf: common_pb2.VideoFrame, width: int, height: int, frame_bytes: int) -> memoryview:
        """The pixels of a frame the renderer put into the ring (``VideoFrame.in_ring``): its slot,
        valid until the frame is released."""
        ring = self._ring
        if ring is None:
            raise InvalidArgument("frame.in_ring", "no frame ring was offered to the renderer")
        if frame_bytes > ring.slot_bytes:
            raise InvalidArgument(
                "frame.in_ring", f"a {width}x{height} frame does not fit the ring's {ring.slot_bytes}-byte slots"
            )
        ring.unlink()  # the renderer has it open: the mappings outlive the name
        return ring.frame(vf.frame_index, frame_bytes)

    def release(self, frames: int) -> None:
        """Frames ``0 .. frames - 1`` are encoded (or copied): their slots may take new frames."""
        if self._ring is not None:
            self._ring.release(frames)

    def close(self) -> None:
        """Removes the ring's file now, or once the worker thread has made it, and lets go of the
        ring: its mapping goes with the last view of it, even while this offer is still referenced
        (a cancelled stream's frames sit in a reference cycle until the garbage collector runs)."""
        if self._made is not None:
            _unlink_when_made(self._made)
        self._made = None
        self._ring = None


def _unlink_when_made(made: asyncio.Future[FrameRing | None]) -> None:
    def unlink(done: asyncio.Future[FrameRing | None]) -> None:
        if not done.cancelled() and done.exception() is None and (ring := done.result()) is not None:
            ring.unlink()

    made.add_done_callback(unlink)  # runs soon, also when it is already done


#: errors that mean frame rings cannot work in the directory at all
_NO_RINGS_HERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.EOPNOTSUPP})


def _unlink(rings: list[FrameRing]) -> None:
    for ring in rings:
        ring.unlink()


class FrameRings:
    """Where the encoder's streams get their frame rings: one made ahead (``ready`` per frame size)
    is offered right behind the stream's config, so frame 0 comes through it too; otherwise one
    is made in a worker thread (allocating and mapping 12 slots of 393 KB takes ~1.5 ms) and
    offered once made. ``prepare`` makes the next ones in the background; streams call it once
    their first frame is out of the way, so the making never competes with a frame 0. ``enabled``
    False (rings off, or a renderer in this process): no rings."""

    #: frame sizes with rings kept ready (the oldest size's are unlinked to make room)
    MAX_SIZES = 4

    def __init__(self, directory: str, slots: int, ready: int, enabled: bool) -> None:
        self.directory = directory
        self.slots = slots
        self.ready = ready
        self.enabled = enabled
        # rings kept ready per frame size; a size forgotten for room has its rings unlinked
        self._ready: Lru[int, list[FrameRing]] = Lru(self.MAX_SIZES, on_drop=lambda _size, rings: _unlink(rings))
        self._making: collections.Counter[int] = collections.Counter()
        self._closed = False
        self._full = 0  # rings not made for want of room

    def _make(self, frame_bytes: int) -> asyncio.Future[FrameRing | None]:
        directory, slots = self.directory, self.slots

        def make() -> FrameRing | None:
            try:
                return FrameRing.create(directory, slots, frame_bytes)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:  # full for now: this stream's frames come inline
                    self._full += 1
                    if self._full % 100 == 1:
                        log.warning("no room for a frame ring in %s (%d times): inline frames", directory, self._full)
                    return None
                if exc.errno in _NO_RINGS_HERE and self.enabled:
                    # no such directory (macOS has no /dev/shm), not writable...: off for good
                    log.warning("frame rings off: cannot make one in %s (%s); frames come inline", directory, exc)
                    self.enabled = False
                elif exc.errno not in _NO_RINGS_HERE:  # (fds, memory...): this stream goes inline
                    log.warning("no frame ring this time (%s): frames come inline", exc)
                return None

        # an executor future, not a task: it runs to its end even if the stream is cancelled, and
        # RingOffer.close (or _keep) removes what it made
        return asyncio.get_running_loop().run_in_executor(None, make)

    def take(self, frame_bytes: int) -> RingOffer | None:
        """A ring for frames of ``frame_bytes`` (None when rings are off)."""
        if not self.enabled or self._closed:
            self._unlink_ready()  # (rings were turned off since they were made)
            return None
        held = self._ready.get(frame_bytes)
        if held:
            made: asyncio.Future[FrameRing | None] = asyncio.get_running_loop().create_future()
            made.set_result(held.pop())
            if not held:
                self._ready.pop(frame_bytes)
        else:
            made = self._make(frame_bytes)
        return RingOffer(made)

    def prepare(self, frame_bytes: int) -> None:
        """Makes rings for frames of ``frame_bytes`` in the background, up to ``ready``."""
        if not self.enabled or self._closed:
            return
        while len(self._ready.get(frame_bytes) or ()) + self._making[frame_bytes] < self.ready:
            self._making[frame_bytes] += 1
            self._make(frame_bytes).add_done_callback(lambda done: self._keep(frame_bytes, done))

    def _keep(self, frame_bytes: int, done: asyncio.Future[FrameRing | None]) -> None:
        self._making[frame_bytes] -= 1
        if not self._making[frame_bytes]:
            del self._making[frame_bytes]
        if done.cancelled() or done.exception() is not None or (ring := done.result()) is None:
            return
        if self._closed or not self.enabled:
            ring.unlink()
            return
        held = self._ready.get(frame_bytes)
        if held is None:
            self._ready.put(frame_bytes, [ring])
        else:
            held.append(ring)

    def close(self) -> None:
        """Unlinks the rings kept ready (and those still being made, once made)."""
        self._closed = True
        self._unlink_ready()

    def _unlink_ready(self) -> None:
        for size in self._ready.keys():
            _unlink(self._ready.pop(size) or [])
