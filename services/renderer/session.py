"""One Render stream: viseme events and per-frame features in, frames out in order, as rendered.

A reader task turns incoming messages into frame jobs (through a bounded queue); the render loop
takes the jobs that are ready, sends the voiced ones to the backend (through the runner, which may
batch them with other sessions' frames) and shows the idle avatar for silent ones, then applies the
idle life of still photos, resizes to the requested preset and converts to the encoder's format.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from services.renderer.backends.base import Avatar, FrameJob, RenderBackend
from services.renderer.frames import I420Regions, encode_pixels, resize, split
from services.renderer.idle import IdleLife
from services.renderer.metrics import Queue, SkipReason, Stage
from services.renderer.mouth import MouthAnimator
from services.renderer.runner import BlockingRender, FrameRunner
from talkmesh.common.aio import Chan, cancel_and_wait
from talkmesh.common.errors import FailedPrecondition, InvalidArgument
from talkmesh.common.framering import FrameRing
from talkmesh.common.telemetry import Telemetry
from talkmesh.common.tensors import from_tensor
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import renderer_pb2 as rpb

# Viseme messages with more events than this are queued in a worker thread, not on the event loop.
INLINE_EVENTS = 256
#: Groups of frames of a stream that get spans of their own (infer, compose); the rest are timed
#: in talkmesh_stage_duration_seconds only.
TRACED_GROUPS = 16


def held_frame(avatar: Avatar) -> int:
    """The frame a still video avatar holds (RenderConfig.idle_motion OFF): the first on which its
    face was found, so that it still speaks."""
    kept = avatar.kept
    return int(np.argmax(kept)) if kept is not None and kept.any() else 0


def ping_pong(t: int, n: int) -> int:
    """Avatar frame for clock tick ``t``: forward then backward, so a looping video has no jump."""
    if n <= 1:
        return 0
    period = 2 * n - 2
    k = t % period
    return k if k < n else period - k


@dataclass
class SessionOptions:
    request_id: str
    size: tuple[int, int]
    fps: float
    pixel_format: int
    sample_rate: int
    part_bytes: int
    idle_life: bool  # the server's switch (viseme.idle_motion)
    # RenderConfig.idle_motion OFF: no idle life whatever the switch, and a video avatar holds one
    # frame (held_frame) instead of looping
    still: bool = False
    start_tick: int = 0
    idle_cache_bytes: int = 0  # the avatar's moved photos its sessions share (IdleLife, MovedPhotos)
    batch_frames: bool = False  # frames rendered together leave in one message (RenderConfig.batch_frames)
    ring_directory: str = ""  # where an offered frame ring is opened (frame_ring.directory); empty: rings off
    max_group: int = 8
    attack_ms: float = 20.0
    release_ms: float = 50.0


class RenderSession:
    def __init__(
        self,
        options: SessionOptions,
        avatar: Avatar,
        backend: RenderBackend,
        runner: FrameRunner,
        telemetry: Telemetry,
        queue_size: int,
        ring_opened: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.o = options
        self.avatar = avatar
        self.backend = backend
        self.runner = runner
        self.telemetry = telemetry
        self.jobs: Chan[FrameJob] = Chan(queue_size, gauge=telemetry.queue_gauge(Queue.RENDER_JOBS))
        self.animator = MouthAnimator(options.sample_rate or 16000, options.fps, options.attack_ms, options.release_ms)
        self.idle = (
            IdleLife(
                avatar,
                options.fps,
                options.start_tick,
                cache_bytes=options.idle_cache_bytes,
                on_cache=lambda hit: telemetry.cache("idle_motion", hit),
            )
            if options.idle_life and not options.still and avatar.frames.shape[0] == 1
            else None
        )
        self.held = held_frame(avatar) if options.still else None
        self.next_index = 0
        self.tick = options.start_tick
        self.frames_out = 0
        self.inferred = 0
        self.groups = 0  # groups of frames rendered (the first TRACED_GROUPS get spans)
        self.wants_features = backend.feature_type != fpb.FEATURE_TYPE_ACTIVITY
        self.features_checked = False  # the first features message's release, checked once (_check)
        self.failure: Exception | None = None
        # the encoder's shared-memory ring, once offered and opened (RenderRequest.frame_ring)
        self.ring: FrameRing | None = None
        self.ring_offered = False
        self.ring_opened = ring_opened or (lambda opened, reason: None)
        # idle life at the output size: frames converted to I420 only where they differ from the
        # key tick's moved photo (the drawn mouth, blinking eyes)
        w, h = options.size
        self.regions = (
            I420Regions()
            if self.idle is not None
            and options.pixel_format == cpb.PIXEL_FORMAT_I420
            and (int(avatar.frames.shape[2]), int(avatar.frames.shape[1])) == (w, h)
            else None
        )

    async def _read(self, requests: AsyncIterable[rpb.RenderRequest]) -> None:
        """Turns requests into frame jobs; closes the job channel at the end (or with the error)."""
        try:
            async for req in requests:
                kind = req.WhichOneof("kind")
                if kind == "visemes":
                    events = req.visemes.events
                    if len(events) > INLINE_EVENTS:  # a large track is queued off the event loop
                        await asyncio.to_thread(self.animator.add, events)
                    else:
                        self.animator.add(events)
                elif kind == "frame_ring":
                    await self._open_ring(req.frame_ring)
                elif kind == "features":
                    if not self.features_checked:
                        self._check(req.features)
                    # one frame, or a batch of consecutive frames (FeatureChunk.frames); errors name
                    # the frame's own path in the request
                    batch = req.features.frames
                    for i, fc in enumerate(batch or (req.features,)):
                        where = f"features.frames[{i}]" if batch else "features"
                        if self.animator.queued > INLINE_EVENTS:  # the frame may consume a large track
                            job = await asyncio.to_thread(self._job, fc, where)
                        else:
                            job = self._job(fc, where)
                        await self.jobs.send(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the render loop, which raises it after earlier frames
            self.jobs.close(exc)
            return
        self.jobs.close()

    async def _open_ring(self, offer: rpb.FrameRing) -> None:
        """Opens the encoder's ring; frames go inline if it cannot be (another machine, rings off here)."""
        if self.ring_offered:
            raise InvalidArgument("frame_ring", "a stream offers one ring, once")
        self.ring_offered = True
        if not self.o.ring_directory:
            self.ring_opened(False, "frame rings are off in this renderer (frame_ring.enabled)")
            return
        if math.prod(self._frame_shape()) > offer.slot_bytes:  # made for the size this avatar had before
            w, h = self.o.size
            self.ring_opened(False, f"frame ring {offer.name!r}: {w}x{h} frames do not fit its slots")
            return
        try:
            ring = await asyncio.to_thread(
                FrameRing.attach, self.o.ring_directory, offer.name, offer.slots, offer.slot_bytes
            )
        except (OSError, ValueError) as exc:
            # not an error of the stream: its frames go inline, as they would without the offer
            self.ring_opened(False, f"cannot open frame ring {offer.name!r} in {self.o.ring_directory}: {exc}")
            return
        # frames whose input came before the offer go inline (the encoder may have encoded more
        # than a ring's worth of them without releasing anything in the ring)
        ring.start(self.next_index)
        self.ring = ring
        self.ring_opened(True, "")

    def _check(self, first: fpb.FeatureChunk) -> None:
        """Whether the backend takes the stream's features: the release its first features message
        says they are for (FeatureChunk.musetalk_version; unsaid: taken). Once per stream, before
        its first frame."""
        self.features_checked = True
        if first.musetalk_version and (refusal := self.backend.features_refusal(first.musetalk_version)):
            raise FailedPrecondition(refusal)

    def _job(self, fc: fpb.FeatureChunk, where: str = "features") -> FrameJob:
        if fc.frame_index != self.next_index:
            raise InvalidArgument(
                f"{where}.frame_index",
                f"expected frame {self.next_index}, got {fc.frame_index} (frames must be in order)",
            )
        self.next_index += 1
        features = None
        if self.wants_features and fc.features.data:
            features = from_tensor(fc.features, f"{where}.features")
        elif self.wants_features and fc.activity.voiced:
            # silent frames show the idle avatar and skip the model: they need no features
            raise InvalidArgument(f"{where}.features", f"backend {self.backend.name} needs a feature tensor")
        mouth = self.animator.step(fc.frame_index, fc.activity.voiced, fc.activity.loudness)
        job = FrameJob(
            session_id=self.o.request_id,
            frame_index=fc.frame_index,
            avatar_frame=self.held if self.held is not None else ping_pong(self.tick, int(self.avatar.frames.shape[0])),
            voiced=bool(fc.activity.voiced),
            rms_dbfs=float(fc.activity.rms_dbfs),
            features=features,
            mouth=mouth,
        )
        self.tick += 1
        return job

    async def run(self, requests: AsyncIterable[rpb.RenderRequest]) -> AsyncIterator[cpb.VideoFrame]:
        reader = asyncio.create_task(self._read(requests), name=f"render-read-{self.o.request_id}")
        seq = 0
        try:
            async for first in self.jobs:
                group = [first]
                # The first frames go out one by one (time to first frame), later ones in groups of
                # up to max_group (fewer thread hops, and batches for the models).
                limit = min(self.o.max_group, 1 + self.frames_out // 4)
                if self.ring is not None:
                    # back-pressure: no more frames than the encoder has released slots for, and
                    # when the ring is full, a wait for room for a group (up to half the ring), not
                    # for one frame: a renderer ahead of its encoder still renders in groups
                    want = min(limit, max(1, self.ring.slots // 2))
                    await self.ring.room(first.frame_index + want - 1)
                    limit = min(limit, self.ring.free(first.frame_index))
                while len(group) < limit and self.jobs.qsize():
                    group.append(self.jobs.recv_nowait())
                for msg in await self._render(group):
                    msg.seq = seq
                    seq += 1
                    yield msg
            yield cpb.VideoFrame(request_id=self.o.request_id, seq=seq, end_of_stream=True)
        finally:
            await cancel_and_wait(reader)
            self.jobs.discard()

    async def _render(self, group: list[FrameJob]) -> list[cpb.VideoFrame]:
        voiced = [j for j in group if j.voiced]
        skipped = len(group) - len(voiced)
        if skipped:
            self.telemetry.metrics.skipped_frames_total.labels(self.telemetry.service, SkipReason.SILENCE).inc(skipped)
        if self.runner.blocking_render is not None:
            # no cross-session batching: render and compose in one worker-thread hop per group
            return await asyncio.to_thread(self._render_and_finish, group, voiced, self.runner.blocking_render)
        rendered: list[np.ndarray] = []
        traced = self._traced()
        if voiced:
            with self.telemetry.stage(Stage.INFER, traced=traced, backend=self.backend.name, frames=len(voiced)):
                rendered = await self.runner.render(self.avatar, voiced)
        with self.telemetry.stage(Stage.COMPOSE, traced=traced):
            return await asyncio.to_thread(self._finish, group, rendered)

    def _traced(self) -> bool:
        """Whether this group of frames gets spans: the first TRACED_GROUPS of the stream (frame
        0's path, the start of a trace); later groups are timed in the metrics only, so a long
        utterance's trace holds tens of spans, not one per group (hundreds a minute)."""
        self.groups += 1
        return self.groups <= TRACED_GROUPS

    def _render_and_finish(
        self, group: list[FrameJob], voiced: list[FrameJob], render: BlockingRender
    ) -> list[cpb.VideoFrame]:
        rendered: list[np.ndarray] = []
        traced = self._traced()
        if voiced:
            with self.telemetry.stage(Stage.INFER, traced=traced, backend=self.backend.name, frames=len(voiced)):
                rendered = render(self.avatar, voiced)
        with self.telemetry.stage(Stage.COMPOSE, traced=traced):
            return self._finish(group, rendered)

    def _finish(self, group: list[FrameJob], rendered: list[np.ndarray]) -> list[cpb.VideoFrame]:
        it = iter(rendered)
        w, h = self.o.size
        pixels: list[bytes | None] = []  # None: converted straight into the frame's ring slot
        for job in group:
            frame = next(it) if job.voiced else self.avatar.frames[job.avatar_frame]
            if self.idle is not None:
                frame = self.idle.apply(np.asarray(frame), job.frame_index + self.o.start_tick)
            slot = self._slot(job.frame_index)
            if self.regions is not None and self.idle is not None:
                pixels.append(self.regions.encode(frame, self.idle.base, self.idle.redone, out=slot))
            else:
                pixels.append(encode_pixels(resize(np.asarray(frame), (w, h)), self.o.pixel_format, out=slot))
            self.frames_out += 1
            self.inferred += int(job.voiced)
        self.telemetry.metrics.frames_total.labels(self.telemetry.service).inc(len(group))
        return self._messages(group, pixels)

    def _slot(self, index: int) -> np.ndarray | None:
        """Frame ``index``'s slot in the encoder's ring as an array of the frame's shape (the
        renderer converts the frame straight into it), or None: the frame goes inline."""
        ring = self.ring
        if ring is None or not ring.has_room(index):  # (run() takes no more frames than slots)
            return None
        shape = self._frame_shape()
        return np.frombuffer(ring.frame(index, math.prod(shape)), np.uint8).reshape(shape)

    def _frame_shape(self) -> tuple[int, ...]:
        """The shape of a converted frame: rows x width for I420, height x width x 3 for RGB."""
        w, h = self.o.size
        return (h, w, 3) if self.o.pixel_format == cpb.PIXEL_FORMAT_RGB24 else (h * 3 // 2, w)

    def _messages(self, group: list[FrameJob], pixels: list[bytes | None]) -> list[cpb.VideoFrame]:
        """The group's frames as messages: one per frame (or part), or with ``batch_frames``
        whole frames joined into batches of at most ``part_bytes`` of pixels. A frame already in
        the encoder's ring (``pixels`` None) carries no pixels (``in_ring``)."""
        out: list[cpb.VideoFrame] = []
        w, h = self.o.size
        fmt = self.o.pixel_format
        batch: cpb.VideoFrame | None = None
        batch_bytes = 0
        for job, converted in zip(group, pixels, strict=True):
            in_ring = converted is None
            data = b"" if converted is None else converted
            if self.o.batch_frames and len(group) > 1 and len(data) <= self.o.part_bytes:
                if batch is None or batch_bytes + len(data) > self.o.part_bytes:
                    batch = cpb.VideoFrame(
                        request_id=self.o.request_id,
                        frame_index=job.frame_index,
                        width=w,
                        height=h,
                        pixel_format=fmt,  # type: ignore[arg-type]
                    )
                    out.append(batch)
                    batch_bytes = 0
                batch.frames.add(
                    frame_index=job.frame_index,
                    width=w,
                    height=h,
                    pixel_format=fmt,  # type: ignore[arg-type]
                    data=data,
                    inferred=job.voiced,
                    in_ring=in_ring,
                )
                batch_bytes += len(data)
                continue
            batch = None
            parts = split(data, self.o.part_bytes)
            for i, part in enumerate(parts):
                out.append(
                    cpb.VideoFrame(
                        request_id=self.o.request_id,
                        frame_index=job.frame_index,
                        width=w,
                        height=h,
                        pixel_format=fmt,  # type: ignore[arg-type]
                        data=part,
                        part_index=i,
                        part_count=len(parts),
                        inferred=job.voiced,
                        in_ring=in_ring,
                    )
                )
        return out
