"""The cross-session dynamic batcher and frame skip, with a fake model that records every batch."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from services.renderer.backends.base import Avatar, FrameJob
from services.renderer.backends.neural import NeuralBackend
from services.renderer.batcher import DynamicBatcher
from services.renderer.config import BatchConfig, ModelConfig, RendererConfig
from services.renderer.interpolate import fill_skipped, plan_keyframes
from services.renderer.runner import DirectRunner, make_runner
from talkmesh.common.errors import InvalidArgument, Unavailable
from talkmesh.common.telemetry import Telemetry

FEATURE_SHAPE = (4, 2)


class FakeModel(NeuralBackend):
    """Crop value = the frame's feature value (so outputs identify their frame), 2x2 crops."""

    name = "fake"
    crop_size = 2
    feature_shape = FEATURE_SHAPE

    def __init__(self, config: RendererConfig, telemetry: Telemetry, skip: int = 1) -> None:
        super().__init__(config, telemetry)
        self.skip = skip
        self.batches: list[list[tuple[str, int]]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False

    @property
    def frame_skip(self) -> int:
        return self.skip

    def infer(self, items: Sequence[tuple[Avatar, FrameJob]]) -> list[np.ndarray]:
        self.batches.append([(j.session_id, j.frame_index) for _, j in items])
        self.entered.set()
        self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model failed")
        out = []
        for _, job in items:
            assert job.features is not None
            out.append(np.full((2, 2, 3), job.features[0, 0], np.uint8))
        return out

    def compose(self, avatar: Avatar, job: FrameJob, crop: np.ndarray) -> np.ndarray:
        return crop.copy()


def make(max_size: int = 4, delay_ms: float = 5.0, skip: int = 1) -> tuple[FakeModel, DynamicBatcher, Telemetry]:
    tel = Telemetry("renderer")
    cfg = RendererConfig(batch=BatchConfig(max_size=max_size, max_delay_ms=delay_ms))
    model = FakeModel(cfg, tel, skip)
    return model, DynamicBatcher(model, tel, max_size=max_size, max_delay_ms=delay_ms), tel


AVATAR = Avatar(
    "a", "a", np.zeros((1, 8, 8, 3), np.uint8), np.array([[0, 0, 8, 8]], np.int32),
    np.array([[2, 4, 6, 6]], np.int32),
)  # fmt: skip


def job(session: str, i: int, value: int | None = None) -> FrameJob:
    v = i % 250 if value is None else value
    return FrameJob(session, i, 0, True, -20.0, features=np.full(FEATURE_SHAPE, v, np.float32))


def values(frames: Sequence[np.ndarray]) -> list[int]:
    return [int(f[0, 0, 0]) for f in frames]


async def test_sessions_get_their_frames_in_order_and_batches_mix_sessions():
    model, batcher, tel = make(max_size=4)
    try:

        async def session(k: int) -> list[int]:
            got: list[int] = []
            for start in range(0, 12, 3):  # 4 calls of 3 frames
                jobs = [job(f"s{k}", i, value=10 * k + i) for i in range(start, start + 3)]
                got += values(await batcher.render(AVATAR, jobs))
            return got

        results = await asyncio.gather(*(session(k) for k in range(4)))
    finally:
        await batcher.close()
    for k, got in enumerate(results):
        assert got == [10 * k + i for i in range(12)]
    ran = [f for b in model.batches for f in b]
    assert sorted(ran) == sorted((f"s{k}", i) for k in range(4) for i in range(12))
    assert max(len(b) for b in model.batches) <= 4
    assert any(len({s for s, _ in b}) > 1 for b in model.batches), "no batch mixed sessions"
    count = tel.metrics.registry.get_sample_value("talkmesh_batch_size_count", {"service": "renderer", "model": "fake"})
    assert count == len(model.batches)


async def test_batches_fill_up_while_the_model_is_busy():
    model, batcher, tel = make(max_size=4, delay_ms=1000.0)
    model.gate.clear()
    try:
        first = asyncio.create_task(batcher.render(AVATAR, [job("s0", 0)] * 4))
        await asyncio.to_thread(model.entered.wait, 10)  # batch 1 (full: 4) is running
        later = [asyncio.create_task(batcher.render(AVATAR, [job(f"s{k}", i) for i in range(3)])) for k in
                 range(1, 4)]  # fmt: skip
        await asyncio.sleep(0.05)
        model.gate.set()
        await asyncio.gather(first, *later)
    finally:
        await batcher.close()
    # 9 frames waited while batch 1 ran: they leave as full batches, round-robin over sessions.
    assert [len(b) for b in model.batches] == [4, 4, 4, 1]
    assert {s for s, _ in model.batches[1]} == {"s1", "s2", "s3"}
    assert (
        tel.metrics.registry.get_sample_value(
            "talkmesh_batch_size_bucket", {"service": "renderer", "model": "fake", "le": "4.0"}
        )
        == 4
    )


async def test_a_lone_frame_runs_after_the_delay():
    model, batcher, _ = make(max_size=8, delay_ms=1.0)
    try:
        out = await batcher.render(AVATAR, [job("s", 7)])
    finally:
        await batcher.close()
    assert values(out) == [7]
    assert model.batches == [[("s", 7)]]


async def test_a_cancelled_session_withdraws_its_frames_and_does_not_block_others():
    model, batcher, _ = make(max_size=2, delay_ms=1000.0)
    model.gate.clear()
    try:
        busy = asyncio.create_task(batcher.render(AVATAR, [job("busy", 0), job("busy", 1)]))
        await asyncio.to_thread(model.entered.wait, 10)
        doomed = asyncio.create_task(batcher.render(AVATAR, [job("doomed", i) for i in range(6)]))
        await asyncio.sleep(0.02)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        other = asyncio.create_task(batcher.render(AVATAR, [job("other", 5), job("other", 6)]))
        await asyncio.sleep(0.02)
        model.gate.set()
        assert values(await other) == [5, 6]
        assert values(await busy) == [0, 1]
    finally:
        await batcher.close()
    assert all(s != "doomed" for b in model.batches for s, _ in b)


async def test_a_slow_consumer_does_not_hold_up_other_sessions():
    _, batcher, _ = make(max_size=4, delay_ms=1.0)
    try:
        await batcher.render(AVATAR, [job("slow", 0)])  # then never asks again
        for i in range(5):
            assert values(await batcher.render(AVATAR, [job("fast", i)])) == [i]
    finally:
        await batcher.close()


async def test_a_failing_batch_fails_its_calls_and_the_batcher_keeps_serving():
    model, batcher, _ = make(max_size=4, delay_ms=1.0)
    model.fail_next = True
    try:
        with pytest.raises(RuntimeError, match="model failed"):
            await batcher.render(AVATAR, [job("s", 0)])
        assert values(await batcher.render(AVATAR, [job("s", 1)])) == [1]
    finally:
        await batcher.close()


async def test_bad_features_are_rejected_before_batching():
    model, batcher, _ = make()
    bad = FrameJob("s", 0, 0, True, -20.0, features=np.zeros((80, 16), np.float32))
    try:
        with pytest.raises(InvalidArgument) as err:
            await batcher.render(AVATAR, [job("s", 0), bad])
        assert err.value.field == "features.tensor.shape"
        with pytest.raises(InvalidArgument):
            await batcher.render(AVATAR, [FrameJob("s", 0, 0, True, -20.0, features=None)])
    finally:
        await batcher.close()
    assert model.batches == []


async def test_close_fails_waiting_calls_with_unavailable():
    model, batcher, _ = make(max_size=1, delay_ms=1.0)
    model.gate.clear()
    call = asyncio.create_task(batcher.render(AVATAR, [job("s", 0), job("s", 1)]))
    await asyncio.to_thread(model.entered.wait, 10)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0.02)
    model.gate.set()
    await closing
    with pytest.raises(Unavailable):
        await call
    with pytest.raises(Unavailable):
        await batcher.render(AVATAR, [job("s", 2)])


async def test_frame_skip_runs_key_frames_only_and_interpolates_between():
    model, batcher, tel = make(max_size=8, delay_ms=1.0, skip=3)
    jobs = [job("s", i, value=10 * i) for i in range(8)]  # keys: 0, 3, 6 and the last (7)
    try:
        out = await batcher.render(AVATAR, jobs)
    finally:
        await batcher.close()
    ran = sorted(i for b in model.batches for _, i in b)
    assert ran == [0, 3, 6, 7]
    assert values(out) == [0, 10, 20, 30, 40, 50, 60, 70]  # linear in the index: exact here
    assert (
        tel.metrics.registry.get_sample_value(
            "talkmesh_skipped_frames_total", {"service": "renderer", "reason": "frame_skip"}
        )
        == 4
    )


def test_plan_keyframes():
    assert plan_keyframes([0, 1, 2, 3], 1) == [True] * 4
    assert plan_keyframes([5, 6, 7, 8, 9, 10, 11], 3) == [True, True, False, False, True, False, True]
    assert plan_keyframes([4, 5], 4) == [True, True]


def test_fill_skipped_uses_frame_index_distance_and_rounds():
    a = np.zeros((1, 1, 3), np.uint8)
    b = np.full((1, 1, 3), 255, np.uint8)
    out = fill_skipped([0, 1, 4], [True, False, True], [a, b])
    assert out[0] is a and out[2] is b
    assert out[1].dtype == np.uint8 and int(out[1][0, 0, 0]) == 64  # 255 / 4 rounded
    with pytest.raises(ValueError):
        fill_skipped([0, 1], [True, True], [a])


def test_make_runner_batches_neural_backends_only_when_enabled():
    tel = Telemetry("renderer")
    on = RendererConfig(batch=BatchConfig(max_size=3), wav2lip=ModelConfig())
    model = FakeModel(on, tel)
    runner = make_runner(model, on, tel)
    assert isinstance(runner, DynamicBatcher) and runner.max_size == 3
    off = RendererConfig(batch=BatchConfig(enabled=False))
    assert isinstance(make_runner(FakeModel(off, tel), off, tel), DirectRunner)


def test_direct_render_applies_frame_skip_and_batches_by_max_size():
    tel = Telemetry("renderer")
    model = FakeModel(RendererConfig(batch=BatchConfig(max_size=2)), tel, skip=2)
    out = model.render(AVATAR, [job("s", i, value=2 * i) for i in range(5)])
    assert values(out) == [0, 2, 4, 6, 8]
    assert [len(b) for b in model.batches] == [2, 1]  # keys 0, 2, 4


async def test_each_batch_is_a_span_linked_to_the_sessions_it_served():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tel = Telemetry("renderer", tracer_provider=provider)
    cfg = RendererConfig(batch=BatchConfig(max_size=4, max_delay_ms=50.0))
    model = FakeModel(cfg, tel)
    batcher = DynamicBatcher(model, tel, max_size=4, max_delay_ms=50.0)
    tracer = provider.get_tracer("test")

    async def session(k: int) -> None:
        with tracer.start_as_current_span(f"session-{k}"):
            await batcher.render(AVATAR, [job(f"s{k}", i) for i in range(2)])

    try:
        await asyncio.gather(session(0), session(1))
    finally:
        await batcher.close()
    spans = exporter.get_finished_spans()
    sessions = {s.name: s.context.span_id for s in spans if s.name.startswith("session-")}
    batches = [s for s in spans if s.name == "renderer.batch.fake"]
    assert len(batches) == len(model.batches) >= 1
    linked = {link.context.span_id for b in batches for link in b.links}
    assert linked == set(sessions.values())
    assert sum(b.attributes["talkmesh.batch_size"] for b in batches) == 4
