"""Cross-session dynamic batching for the neural renderer backends.

One ``DynamicBatcher`` per model and process. Every session's key frames go into per-session FIFO
lanes; one worker task forms batches round-robin across the lanes (so a session that hands over
many frames at once cannot starve the others) and runs a batch when it is full (``max_size``) or
when the oldest waiting frame has waited ``max_delay``. While the model runs (in the batcher's own
inference thread) the next batch accumulates, so under load batches fill up by themselves.

Each ``render`` call waits only for its own frames, then blends them back into the avatar frames in
its own worker thread: results reach each session in order, a slow consumer only delays itself, and
a cancelled call withdraws its frames that have not run yet. ``talkmesh_batch_size{model}`` records
every batch; ``talkmesh_queue_depth{stage="batch_<model>"}`` the frames waiting.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from opentelemetry import trace

from services.renderer.backends.base import Avatar, FrameJob
from services.renderer.backends.neural import NeuralBackend
from services.renderer.interpolate import fill_skipped, plan_keyframes
from services.renderer.runner import BlockingRender
from talkmesh.common.errors import Unavailable
from talkmesh.common.telemetry import Telemetry

log = logging.getLogger("talkmesh.renderer.batcher")


@dataclass(eq=False)
class _Item:
    avatar: Avatar
    job: FrameJob
    future: asyncio.Future[np.ndarray]
    enqueued: float = field(default_factory=time.monotonic)
    # The requesting session's span: the batch span links to every session it served.
    span_context: trace.SpanContext = field(default_factory=lambda: trace.get_current_span().get_span_context())


class DynamicBatcher:
    """A FrameRunner that batches frames of all sessions for one model."""

    def __init__(self, backend: NeuralBackend, telemetry: Telemetry, *, max_size: int, max_delay_ms: float) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.backend = backend
        self.telemetry = telemetry
        self.max_size = max_size
        self.max_delay = max(0.0, max_delay_ms) / 1000.0
        self.blocking_render: BlockingRender | None = None  # frames of all sessions share batches
        self._lanes: dict[str, deque[_Item]] = {}
        self._pending = 0
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"{backend.name}-infer")
        self._closed = False
        self._batch_hist = telemetry.metrics.batch_size.labels(telemetry.service, backend.name)
        self._depth = telemetry.queue_gauge(f"batch_{backend.name}")
        #: sizes of the batches run so far (for tests and the benchmark report)
        # The most recent batch sizes (bounded: a long-running server must not grow with traffic).
        self.batch_sizes: deque[int] = deque(maxlen=4096)

    # -- FrameRunner ----------------------------------------------------------------------------

    async def render(self, avatar: Avatar, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        if self._closed:
            raise Unavailable("renderer is shutting down")
        if not jobs:
            return []
        for job in jobs:
            self.backend.validate_job(avatar, job)
        indices = [j.frame_index for j in jobs]
        keys = plan_keyframes(indices, self.backend.frame_skip)
        loop = asyncio.get_running_loop()
        self._ensure_worker()
        items = [_Item(avatar, j, loop.create_future()) for j, k in zip(jobs, keys, strict=True) if k]
        try:
            self._enqueue(items)
            outputs = [await it.future for it in items]
        finally:
            self._withdraw(items)
        self.backend.count_skipped(len(jobs) - len(items))
        crops = fill_skipped(indices, keys, outputs)
        return await asyncio.to_thread(self._compose, avatar, jobs, crops)

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            # return_exceptions: the worker's own CancelledError is a result here; if close() itself
            # is cancelled, gather still raises CancelledError.
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        for lane in self._lanes.values():
            for it in lane:
                if not it.future.done():
                    it.future.set_exception(Unavailable("renderer is shutting down"))
        self._lanes.clear()
        self._pending = 0
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    # -- internals ------------------------------------------------------------------------------

    def _compose(self, avatar: Avatar, jobs: Sequence[FrameJob], crops: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.backend.compose(avatar, j, c) for j, c in zip(jobs, crops, strict=True)]

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.backend.name}")

    def _enqueue(self, items: Sequence[_Item]) -> None:
        for it in items:
            self._lanes.setdefault(it.job.session_id, deque()).append(it)
        self._pending += len(items)
        self._depth.set(self._pending)
        assert self._wakeup is not None
        self._wakeup.set()

    def _withdraw(self, items: Sequence[_Item]) -> None:
        """Cancels a call's frames that have not run (no-op for those that have)."""
        for it in items:
            if it.future.done():
                if not it.future.cancelled():
                    it.future.exception()  # mark a failure as seen (it was raised for the first frame)
                continue
            it.future.cancel()
            lane = self._lanes.get(it.job.session_id)
            if lane is not None and it in lane:
                lane.remove(it)
                self._pending -= 1
                if not lane:
                    del self._lanes[it.job.session_id]
        self._depth.set(self._pending)

    def _take(self) -> list[_Item]:
        """Up to max_size live frames, one per session lane in turn; served lanes move to the back."""
        batch: list[_Item] = []
        while len(batch) < self.max_size and self._lanes:
            progressed = False
            for sid in list(self._lanes):
                lane = self._lanes[sid]
                while lane and lane[0].future.done():  # withdrawn (cancelled call)
                    lane.popleft()
                    self._pending -= 1
                if lane and len(batch) < self.max_size:
                    batch.append(lane.popleft())
                    self._pending -= 1
                    progressed = True
                    del self._lanes[sid]  # re-insert at the back: round-robin across batches
                    if lane:
                        self._lanes[sid] = lane
                elif not lane:
                    del self._lanes[sid]
            if not progressed:
                break
        self._depth.set(self._pending)
        return batch

    def _oldest(self) -> float | None:
        times = [it.enqueued for lane in self._lanes.values() for it in lane if not it.future.done()]
        return min(times) if times else None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        wakeup = self._wakeup
        while True:
            oldest = self._oldest()
            if oldest is None:
                wakeup.clear()
                await wakeup.wait()
                continue
            while self._pending < self.max_size:
                remaining = oldest + self.max_delay - time.monotonic()
                if remaining <= 0:
                    break
                wakeup.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await wakeup.wait()
                except TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            self._batch_hist.observe(len(batch))
            self.batch_sizes.append(len(batch))
            pairs = [(it.avatar, it.job) for it in batch]
            links = {it.span_context.span_id: it.span_context for it in batch if it.span_context.is_valid}
            span = self.telemetry.tracer.start_span(
                f"renderer.batch.{self.backend.name}",
                context=trace.set_span_in_context(trace.INVALID_SPAN),
                links=[trace.Link(c) for c in links.values()],
                attributes={"talkmesh.batch_size": len(batch), "talkmesh.sessions": len(links)},
            )
            try:
                outputs = await loop.run_in_executor(self._executor, self.backend.infer, pairs)
            except asyncio.CancelledError:
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(Unavailable("renderer is shutting down"))
                raise
            except Exception as exc:
                log.exception("%s: batch of %d failed", self.backend.name, len(batch))
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(exc)
                continue
            finally:
                span.end()
            for it, out in zip(batch, outputs, strict=True):
                if not it.future.done():
                    it.future.set_result(out)
