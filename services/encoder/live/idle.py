"""Idle loops: an avatar's idle motion rendered and encoded once, then replayed for free.

Between turns a live session shows the avatar idling (blinks, breathing, small head motion). Doing
that frame by frame would cost a render and an H.264 encode per frame, most of what speaking
costs. Instead the renderer draws ``frames`` idle frames once (silent features: no model
inference), they are played forward then backward (so the loop has no seam) and encoded once, in
closed GOPs that each start with an IDR; a session then sends the loop's packets with new
timestamps, entering the loop only at a GOP start. The loop's encoder has the live encoder's
settings, and its parameter sets are checked to be identical, so its packets decode in the live
stream after any IDR. When they differ (an encoder that does not produce identical headers), the
loop keeps its raw frames and the session encodes them live instead (correct, just not cheap).

Loops are cached per (avatar, backend, size, idle motion, fps, encoder settings), bounded, built
once even when several sessions ask at the same time: a still session (RenderConfig.idle_motion
OFF) idles on a loop of its own, of the still avatar.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from services.encoder.backends.base import VideoBackend
from services.encoder.live.media import LiveParams, VideoEncoder
from services.encoder.render import FrameSource, unbatched
from talkmesh.common.errors import FailedPrecondition, Unavailable
from talkmesh.common.lru import Lru
from talkmesh.v1 import audio_features_pb2, common_pb2, renderer_pb2

log = logging.getLogger(__name__)


@dataclass
class IdleLoop:
    """A loop of encoded idle frames; GOPs of ``gop`` frames, each starting with an IDR."""

    width: int
    height: int
    packets: list[bytes]
    keyframes: list[bool]
    gop: int
    #: raw I420 frames at every GOP start (the targets of the blend into the loop)
    entries: dict[int, bytes]
    #: every raw frame, when the packets cannot be spliced into the live stream
    raw: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.packets)

    @property
    def spliceable(self) -> bool:
        return not self.raw

    def entry_at_or_after(self, position: int) -> int:
        """The first GOP start at or after loop position ``position`` (wrapping around)."""
        n = len(self.packets)
        k = -(-(position % n) // self.gop) * self.gop
        return k % n


def ping_pong_order(frames: int) -> list[int]:
    """0, 1, ..., n-1, n-2, ..., 1: a loop of 2n-2 positions without a jump at the seam."""
    return [*range(frames), *range(frames - 2, 0, -1)]


def loop_frames(loop_seconds: float, fps: float, gop: int) -> int:
    """Rendered frames for a ping-pong loop of about ``loop_seconds`` whose length is a whole
    number of GOPs (length 2n-2 = k*gop)."""
    gops = max(2, round(loop_seconds * fps / gop))
    if gops * gop % 2:
        gops += 1
    return gops * gop // 2 + 1


async def render_idle_frames(
    source: FrameSource, render: renderer_pb2.RenderConfig, frames: int, timeout: float | None
) -> list[tuple[int, int, bytes]]:
    """``frames`` idle frames (width, height, I420 bytes) rendered from silent features."""

    async def requests() -> AsyncIterator[renderer_pb2.RenderRequest]:
        yield renderer_pb2.RenderRequest(config=render)
        silent = common_pb2.FrameActivity(rms_dbfs=-120.0, voiced=False)
        for i in range(frames):
            yield renderer_pb2.RenderRequest(
                seq=i + 1, features=audio_features_pb2.FeatureChunk(frame_index=i, activity=silent)
            )
        yield renderer_pb2.RenderRequest(seq=frames + 1, end_of_stream=True)

    out: list[tuple[int, int, bytes]] = []
    parts: list[bytes] = []
    stream = source.render(requests(), timeout)
    try:
        async for vf in unbatched(stream):
            if vf.end_of_stream:
                break
            parts.append(vf.data)
            if vf.part_index + 1 >= max(1, vf.part_count):
                out.append((vf.width, vf.height, b"".join(parts)))
                parts = []
    finally:
        await stream.cancel()
    if len(out) != frames:
        raise FailedPrecondition(f"renderer: {len(out)} idle frames rendered, {frames} asked for")
    return out


def encode_loop(
    rendered: list[tuple[int, int, bytes]], backend: VideoBackend, params: LiveParams, gop: int, live_extradata: bytes
) -> IdleLoop:
    """Encodes the ping-pong loop of ``rendered`` (blocking)."""
    order = ping_pong_order(len(rendered))
    if len(order) % gop:
        raise ValueError(f"loop of {len(order)} frames is not a whole number of {gop}-frame GOPs")
    encoder = VideoEncoder.standalone(backend, params)
    spliceable = encoder.extradata == live_extradata
    if not spliceable:
        log.warning(
            "idle loop: %s headers differ from the live encoder's; idle frames will be encoded live", backend.name
        )
    packets: list[bytes] = []
    keys: list[bool] = []
    entries: dict[int, bytes] = {}
    for pos, idx in enumerate(order):
        raw = rendered[idx][2]
        if pos % gop == 0:
            entries[pos] = raw
        packet, key = encoder.encode(raw, pos, force_keyframe=pos % gop == 0)
        if pos % gop == 0 and not key:
            raise RuntimeError(f"{backend.name}: a forced keyframe did not come out as one")
        packets.append(packet)
        keys.append(key)
    width, height = rendered[0][0], rendered[0][1]
    raw_frames = [rendered[i][2] for i in order] if not spliceable else []
    return IdleLoop(width, height, packets, keys, gop, entries, raw_frames)


def blend_i420(a: bytes, b: bytes, weight_b: float) -> bytes:
    """``(1 - w) * a + w * b`` of two frames of the same size (a cross-fade step)."""
    x = np.frombuffer(a, np.uint8).astype(np.uint16)
    y = np.frombuffer(b, np.uint8).astype(np.uint16)
    w = round(256 * min(1.0, max(0.0, weight_b)))
    return (((256 - w) * x + w * y + 128) >> 8).astype(np.uint8).tobytes()


class IdleLoops:
    """A bounded cache of idle loops, each built once (concurrent askers wait for the same build)."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._loops: Lru[Hashable, asyncio.Future[IdleLoop]] = Lru(max_entries)
        self.builds = 0

    async def get(self, key: Hashable, build: Callable[[], Awaitable[IdleLoop]]) -> IdleLoop:
        fut = self._loops.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._loops.put(key, fut)
        try:
            self.builds += 1
            loop = await build()
        except BaseException as exc:
            self._loops.pop(key)
            if not fut.done():
                # Waiters must not mistake the builder's cancellation for their own.
                shared = (
                    Unavailable("idle loop: its build was abandoned; retry")
                    if isinstance(exc, asyncio.CancelledError)
                    else exc
                )
                fut.set_exception(shared)
                fut.exception()  # retrieved: waiters re-raise it themselves
            raise
        fut.set_result(loop)
        return loop
