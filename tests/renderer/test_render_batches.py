"""RenderConfig.batch_frames: frames rendered together leave in one message (VideoFrame.frames),
with the same pixels as one message per frame; the first frames still leave one by one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.encoder.render import unbatched
from services.renderer.main import create_service, load_config
from talkmesh.common.channel import create_channel
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import renderer_pb2_grpc

SR, FPS = 16000, 25
FRAMES = 48
FRAME_BYTES = 512 * 512 * 3 // 2
VOICED = [(i // 6) % 2 == 1 for i in range(FRAMES)]  # speech and silence alternate every 6 frames


async def _requests(config: rpb.RenderConfig) -> AsyncIterator[rpb.RenderRequest]:
    yield rpb.RenderRequest(request_id="b", config=config)
    spf = SR // FPS
    events = [
        cpb.VisemeEvent(
            viseme=cpb.VISEME_OPEN if i % 2 else cpb.VISEME_ROUNDED, start_sample=i * spf, end_sample=(i + 1) * spf
        )
        for i in range(FRAMES)
        if VOICED[i]
    ]
    yield rpb.RenderRequest(request_id="b", seq=1, visemes=rpb.VisemeTrack(events=events))
    chunk = fpb.FeatureChunk(request_id="b", frame_index=0)
    for i, voiced in enumerate(VOICED):  # all features at once: the renderer finds groups ready
        chunk.frames.add(frame_index=i, activity=cpb.FrameActivity(rms_dbfs=-15.0 if voiced else -90.0, voiced=voiced))
    yield rpb.RenderRequest(request_id="b", seq=2, features=chunk, end_of_stream=True)


@pytest.fixture
async def stub(tmp_path) -> AsyncIterator[renderer_pb2_grpc.RendererStub]:
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache")}  # idle motion on
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    async with serve(service) as host, create_channel(host.address) as ch:
        yield renderer_pb2_grpc.RendererStub(ch)


async def _aiter(messages: list[cpb.VideoFrame]) -> AsyncIterator[cpb.VideoFrame]:
    for m in messages:
        yield m


async def test_batches_carry_the_same_frames_as_single_messages(stub):
    plain = [m async for m in stub.Render(_requests(rpb.RenderConfig(fps=FPS, sample_rate=SR)))]
    assert not any(m.frames for m in plain)  # not asked for: one message per frame
    assert len(plain) == FRAMES + 1
    batched = [m async for m in stub.Render(_requests(rpb.RenderConfig(fps=FPS, sample_rate=SR, batch_frames=True)))]
    assert [m.seq for m in batched] == list(range(len(batched)))
    assert batched[-1].end_of_stream and not batched[-1].frames
    # the first frames leave one by one (time to first frame), later ones in batches
    assert not batched[0].frames and batched[0].frame_index == 0 and len(batched[0].data) == FRAME_BYTES
    batches = [m for m in batched if m.frames]
    assert batches and len(batched) < FRAMES
    for m in batches:
        assert m.frame_index == m.frames[0].frame_index and not m.data
        assert sum(len(f.data) for f in m.frames) <= 4 * 1024 * 1024
    frames = [f async for f in unbatched(_aiter(batched[:-1]))]
    assert [f.frame_index for f in frames] == list(range(FRAMES))
    for f, p in zip(frames, plain[:-1], strict=True):
        assert (f.width, f.height, f.pixel_format) == (512, 512, cpb.PIXEL_FORMAT_I420)
        assert f.inferred == p.inferred and f.part_count in (0, 1)
        assert f.data == p.data  # identical pixels (idle motion is a function of the tick)
    assert [f.inferred for f in frames] == VOICED
