"""RenderConfig.batch_frames: frames rendered together leave in one message (VideoFrame.frames),
with the same pixels as one message per frame; the first frames still leave one by one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.encoder.render import unbatched
from services.renderer.config import MIN_FRAME_PART_BYTES
from services.renderer.main import create_service, load_config
from talkmesh.common.channel import MESSAGE_HEADROOM_BYTES, create_channel
from talkmesh.common.config import ConfigError
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


async def _render(tmp_path, part_bytes: int, **env_changes: str) -> list[cpb.VideoFrame]:
    env = {
        "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache"),
        "TALKMESH_RENDERER__FRAME_PART_BYTES": str(part_bytes),
        **env_changes,
    }
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)
        return [m async for m in stub.Render(_requests(rpb.RenderConfig(fps=FPS, sample_rate=SR, batch_frames=True)))]


async def test_a_batch_holds_at_most_frame_part_bytes_of_pixels(tmp_path):
    """frame_part_bytes of two and a half frames: batches of at most two frames, every frame there."""
    batched = await _render(tmp_path, FRAME_BYTES * 5 // 2)
    batches = [m for m in batched if m.frames]
    assert batches and max(len(m.frames) for m in batches) == 2
    assert all(sum(len(f.data) for f in m.frames) <= FRAME_BYTES * 5 // 2 for m in batches)
    frames = [f async for f in unbatched(_aiter(batched[:-1]))]
    assert [f.frame_index for f in frames] == list(range(FRAMES))
    assert all(len(f.data) == FRAME_BYTES for f in frames)


async def test_a_frame_larger_than_frame_part_bytes_goes_in_parts_not_in_a_batch(tmp_path):
    part = 256 * 1024  # below one 512² frame (384 KiB): two parts each
    messages = await _render(tmp_path, part)
    assert not any(m.frames for m in messages)
    pixels = [m for m in messages if not m.end_of_stream]
    assert len(pixels) == 2 * FRAMES
    assert all(m.part_count == 2 and len(m.data) <= part for m in pixels)
    for i in range(FRAMES):
        a, b = pixels[2 * i], pixels[2 * i + 1]
        assert (a.frame_index, a.part_index, b.frame_index, b.part_index) == (i, 0, i, 1)
        assert len(a.data) + len(b.data) == FRAME_BYTES


async def test_a_small_message_limit_cuts_frames_in_parts_that_fit_or_is_refused_at_start(tmp_path):
    """server.max_message_bytes leaves MESSAGE_HEADROOM_BYTES beside a frame part: at the smallest
    a renderer takes, frames go in parts of MIN_FRAME_PART_BYTES; below it the config is refused
    (a renderer at ServerConfig's own smallest, 65536, failed every Render with INTERNAL)."""
    least = MIN_FRAME_PART_BYTES + MESSAGE_HEADROOM_BYTES
    with pytest.raises(ConfigError, match=rf"server\.max_message_bytes: must be at least {least} on a renderer"):
        load_config(None, env={"TALKMESH_RENDERER__SERVER__MAX_MESSAGE_BYTES": str(least - 1)})
    messages = await _render(tmp_path, 4 * 1024 * 1024, TALKMESH_RENDERER__SERVER__MAX_MESSAGE_BYTES=str(least))
    pixels = [m for m in messages if not m.end_of_stream]
    assert not any(m.frames for m in pixels)  # a frame is larger than a part: in parts, not batched
    assert all(len(m.data) <= MIN_FRAME_PART_BYTES for m in pixels)
    parts = -(-FRAME_BYTES // MIN_FRAME_PART_BYTES)
    assert len(pixels) == parts * FRAMES and all(m.part_count == parts for m in pixels)
    assert [(m.frame_index, m.part_index) for m in pixels] == [(i, p) for i in range(FRAMES) for p in range(parts)]
    assert all(sum(len(m.data) for m in pixels[i * parts : (i + 1) * parts]) == FRAME_BYTES for i in range(FRAMES))
