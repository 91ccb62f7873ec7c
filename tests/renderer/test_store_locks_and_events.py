"""Regression tests: the avatar store never makes a ready avatar wait for another's preparation;
the default avatar cannot be deleted by alias or id, and a stream keeps an avatar deleted under it;
viseme tracks of any size and order are queued in O(n log n), off the event loop."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from services.renderer.avatars import AvatarStore, default_avatar_bytes
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from services.renderer.main import create_service, load_config
from services.renderer.mouth import MouthAnimator
from talkmesh.common.channel import create_channel
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import renderer_pb2_grpc
from tests.media import portrait

PORTRAIT = default_avatar_bytes()


def _mirrored() -> bytes:
    img = portrait()
    return cv2.imencode(".png", cv2.flip(img, 1))[1].tobytes()


class BlockingBackend(VisemeBackend):
    """A backend whose precompute of one chosen avatar blocks until released."""

    name = "slow"

    def __init__(self, cfg: RendererConfig) -> None:
        super().__init__(cfg, Telemetry("renderer"))
        self.block_name = ""
        self.entered, self.release = threading.Event(), threading.Event()

    def prepare(self, avatar):  # type: ignore[no-untyped-def]
        if avatar.name == self.block_name:
            self.entered.set()
            self.release.wait(60)
        super().prepare(avatar)


def test_a_backend_precompute_of_one_avatar_does_not_block_get_of_another(tmp_path: Path):
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(tmp_path)))
    slow = BlockingBackend(cfg)
    store = AvatarStore(cfg.avatars, {"viseme": VisemeBackend(cfg, Telemetry("r")), "slow": slow})
    ready, _ = store.register(PORTRAIT, "a.png", "a", ("slow",))
    slow.block_name = "b"
    worker = threading.Thread(target=store.register, args=(_mirrored(), "b.png", "b", ("slow",)))
    worker.start()
    try:
        assert slow.entered.wait(60), "the other avatar's precompute never started"
        # While B's backend precompute is blocked: A from memory, from disk, with a backend.
        got: list[str] = []

        def reader() -> None:
            got.append(store.get(ready.id, "slow").id)
            store._forget(ready.id)
            got.append(store.get(ready.id, "slow").id)
            got.append(store.get(ready.id, "viseme").id)

        t = threading.Thread(target=reader)
        t.start()
        t.join(30)  # a deadlock guard, not a timing threshold
        assert not t.is_alive(), "get() of a ready avatar waited for another avatar's preparation"
        assert got == [ready.id] * 3
    finally:
        slow.release.set()
        worker.join(60)


async def _render_frames(stub, avatar_id: str, frames: int, after_half=None):  # type: ignore[no-untyped-def]
    """Renders ``frames`` voiced frames one at a time; ``after_half`` runs once half are out."""
    queue: asyncio.Queue = asyncio.Queue()

    async def requests():  # type: ignore[no-untyped-def]
        yield rpb.RenderRequest(config=rpb.RenderConfig(request_id="r", avatar_id=avatar_id, size="native"))
        for i in range(frames):
            act = cpb.FrameActivity(voiced=True, rms_dbfs=-20.0)
            yield rpb.RenderRequest(features=fpb.FeatureChunk(frame_index=i, activity=act))
            await queue.get()
        yield rpb.RenderRequest(end_of_stream=True)

    out = []
    async for frame in stub.Render(requests()):
        if frame.end_of_stream:
            break
        if frame.part_index == frame.part_count - 1:
            out.append(frame.frame_index)
            if len(out) == frames // 2 and after_half is not None:
                await after_half()
            queue.put_nowait(None)
    return out


async def test_default_avatar_cannot_be_deleted_and_a_running_stream_keeps_its_avatar(tmp_path):
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache")}
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)
        default_id = service.store.resolve("default")
        for name in ("default", default_id):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.DeleteAvatar(rpb.DeleteAvatarRequest(avatar_id=name))
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, name
        assert (await stub.ListAvatars(rpb.ListAvatarsRequest())).avatars[0].id == default_id

        async def upload():  # type: ignore[no-untyped-def]
            yield rpb.AvatarUpload(meta=rpb.AvatarMeta(name="mine", filename="mine.png"))
            yield rpb.AvatarUpload(data=_mirrored())

        mine = await stub.RegisterAvatar(upload())
        assert mine.face.detector == "mediapipe" and mine.face.frames_kept == 1 and mine.face.confidence > 0.5

        async def delete() -> None:
            assert (await stub.DeleteAvatar(rpb.DeleteAvatarRequest(avatar_id=mine.id))).deleted

        indices = await _render_frames(stub, mine.id, 12, after_half=delete)
        assert indices == list(range(12))  # the stream that used it finished
        with pytest.raises(grpc.aio.AioRpcError) as err:  # ... and new streams do not find it

            async def one():  # type: ignore[no-untyped-def]
                yield rpb.RenderRequest(config=rpb.RenderConfig(request_id="x", avatar_id=mine.id))

            async for _ in stub.Render(one()):
                pass
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert await _render_frames(stub, "", 3) == [0, 1, 2]  # the default still renders


class CountingInt(int):
    comparisons = 0

    def __lt__(self, other):  # type: ignore[no-untyped-def]
        CountingInt.comparisons += 1
        return int.__lt__(self, other)


class Event:
    def __init__(self, start: int, end: int) -> None:
        self.start_sample, self.end_sample, self.viseme = CountingInt(start), end, cpb.VISEME_OPEN


def test_viseme_events_in_descending_order_cost_n_log_n_comparisons():
    for n in (1000, 16000):
        animator = MouthAnimator(16000, 25.0)
        CountingInt.comparisons = 0
        animator.add(Event(10 * (n - i), 10 * (n - i) + 10) for i in range(n))
        for frame in range(0, 10 * n * 25 // 16000 + 2):
            animator.step(frame, True, 0.9)
        # heap pushes and pops: at most ~3 n log2 n comparisons (quadratic insertion: n^2 / 4 moves)
        assert CountingInt.comparisons <= 3 * n * np.log2(n), (n, CountingInt.comparisons)
        assert animator.queued == 0  # every event was consumed as the frames passed it


def test_the_mouth_mix_matches_a_direct_computation_for_shuffled_events():
    rng = np.random.default_rng(3)
    starts = np.sort(rng.integers(0, 16000, 60))
    track = rpb.VisemeTrack()
    for i, s in enumerate(starts):
        track.events.add(start_sample=int(s), end_sample=int(s) + 640, viseme=int(1 + i % 13))
    shuffled = list(track.events)
    rng.shuffle(shuffled)  # type: ignore[arg-type]
    a, b = MouthAnimator(16000, 25.0), MouthAnimator(16000, 25.0)
    a.add(track.events)
    for k in range(0, len(shuffled), 7):
        b.add(shuffled[k : k + 7])
    for frame in range(30):
        assert a.step(frame, True, 0.9) == b.step(frame, True, 0.9)
