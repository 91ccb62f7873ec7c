"""The Render stream over gRPC: order, parts, formats, sizes, silence skipping, and its errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from services.renderer.main import create_service, load_config
from talkmesh.common.channel import create_channel
from talkmesh.common.clock import MAX_STAGE_RATE, MIN_STAGE_RATE
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import renderer_pb2_grpc

SR, FPS = 16000, 25
# frame -> voiced; the mouth opens on an /a/ over frames 3..8
VOICED = [False] * 3 + [True] * 6 + [False] * 4


async def _requests(config: rpb.RenderConfig) -> AsyncIterator[rpb.RenderRequest]:
    yield rpb.RenderRequest(request_id="r", config=config)
    spf = SR // FPS
    events = [cpb.VisemeEvent(viseme=cpb.VISEME_OPEN, start_sample=3 * spf, end_sample=9 * spf, phoneme="a")]
    yield rpb.RenderRequest(request_id="r", seq=1, visemes=rpb.VisemeTrack(events=events))
    for i, voiced in enumerate(VOICED):
        activity = cpb.FrameActivity(rms_dbfs=-15.0 if voiced else -90.0, voiced=voiced)
        yield rpb.RenderRequest(
            request_id="r", seq=2 + i, features=fpb.FeatureChunk(request_id="r", frame_index=i, activity=activity)
        )
    yield rpb.RenderRequest(request_id="r", seq=2 + len(VOICED), end_of_stream=True)


@pytest.fixture
async def stub(tmp_path) -> AsyncIterator[renderer_pb2_grpc.RendererStub]:
    env = {
        "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache"),
        "TALKMESH_RENDERER__FRAME_PART_BYTES": str(100_000),
        "TALKMESH_RENDERER__VISEME__IDLE_MOTION": "false",
    }
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    async with serve(service) as host, create_channel(host.address) as ch:
        yield renderer_pb2_grpc.RendererStub(ch)


def _assemble(messages: list[cpb.VideoFrame]) -> list[tuple[cpb.VideoFrame, bytes]]:
    """Joins parts; checks seq, part numbering and frame order on the way."""
    assert [m.seq for m in messages] == list(range(len(messages)))
    assert messages[-1].end_of_stream and not any(m.end_of_stream for m in messages[:-1])
    frames: list[tuple[cpb.VideoFrame, bytes]] = []
    parts: list[bytes] = []
    for m in messages[:-1]:
        assert m.part_index == len(parts) and m.part_count >= 1
        parts.append(m.data)
        if len(parts) == m.part_count:
            assert m.frame_index == len(frames)
            frames.append((m, b"".join(parts)))
            parts = []
    assert not parts
    return frames


async def test_frames_arrive_in_order_split_into_parts_and_silence_shows_the_idle_avatar(stub):
    config = rpb.RenderConfig(request_id="r", fps=FPS, sample_rate=SR)  # defaults: avatar, backend, 512, I420
    frames = _assemble([m async for m in stub.Render(_requests(config))])
    assert len(frames) == len(VOICED)
    images = []
    for (m, data), voiced in zip(frames, VOICED, strict=True):
        assert (m.width, m.height, m.pixel_format) == (512, 512, cpb.PIXEL_FORMAT_I420)
        assert len(data) == 512 * 512 * 3 // 2 and m.part_count == 4  # 393216 bytes in 100 kB parts
        assert m.inferred == voiced
        images.append(np.frombuffer(data, np.uint8)[: 512 * 512].reshape(512, 512).astype(np.int16))
    idle = images[0]
    assert all(np.array_equal(images[i], idle) for i, v in enumerate(VOICED) if not v)  # no idle motion
    # the open mouth darkens the lower face; the still parts of the frame do not change
    open_frame = images[6]
    diff = np.abs(open_frame - idle)
    assert (open_frame < idle - 40).sum() > 200
    assert diff[:60].max() == 0 and diff[:, :100].max() == 0


async def test_feature_batches_render_the_same_frames_as_single_features(stub):
    """FeatureChunk.frames (the gateway's batches, one per TTS chunk) render frame by frame, the
    same pixels as one message per frame; a batch out of order is INVALID_ARGUMENT."""
    config = rpb.RenderConfig(request_id="r", fps=FPS, sample_rate=SR)
    single = _assemble([m async for m in stub.Render(_requests(config))])

    async def batched() -> AsyncIterator[rpb.RenderRequest]:
        seq = 0
        async for req in _requests(config):
            if req.WhichOneof("kind") != "features":
                yield req
            elif req.features.frame_index % 5 == 0:  # batches of 5 frames, the last one shorter
                batch = rpb.RenderRequest(request_id="r", seq=seq, features=fpb.FeatureChunk(request_id="r"))
                batch.features.frame_index = req.features.frame_index
                for i in range(req.features.frame_index, min(req.features.frame_index + 5, len(VOICED))):
                    activity = cpb.FrameActivity(rms_dbfs=-15.0 if VOICED[i] else -90.0, voiced=VOICED[i])
                    batch.features.frames.add(frame_index=i, activity=activity)
                yield batch
            seq += 1

    frames = _assemble([m async for m in stub.Render(batched())])
    assert len(frames) == len(single) == len(VOICED)
    for (m, data), (ms, ds) in zip(frames, single, strict=True):
        assert m.inferred == ms.inferred and data == ds

    async def out_of_order() -> AsyncIterator[rpb.RenderRequest]:
        yield rpb.RenderRequest(request_id="r", config=config)
        batch = fpb.FeatureChunk(request_id="r")
        batch.frames.add(frame_index=0)
        batch.frames.add(frame_index=2)
        yield rpb.RenderRequest(request_id="r", seq=1, features=batch)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [m async for m in stub.Render(out_of_order())]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # the offending frame's own path: the second frame of the batch
    assert (err.value.details() or "").startswith("features.frames[1].frame_index")


async def test_rgb_and_size_presets(stub):
    config = rpb.RenderConfig(fps=FPS, sample_rate=SR, size="360p", pixel_format=cpb.PIXEL_FORMAT_RGB24)
    frames = _assemble([m async for m in stub.Render(_requests(config))])
    m, data = frames[0]
    assert (m.width, m.height, m.pixel_format) == (360, 360, cpb.PIXEL_FORMAT_RGB24)
    assert len(data) == 360 * 360 * 3


@pytest.mark.parametrize(
    ("config", "code", "field"),
    [
        (rpb.RenderConfig(avatar_id="nobody"), grpc.StatusCode.NOT_FOUND, "config.avatar_id"),
        (rpb.RenderConfig(backend="wav2lip"), grpc.StatusCode.INVALID_ARGUMENT, "config.backend"),
        (rpb.RenderConfig(backend="cartoon"), grpc.StatusCode.INVALID_ARGUMENT, "config.backend"),
        (rpb.RenderConfig(size="999p"), grpc.StatusCode.INVALID_ARGUMENT, "config.size"),
        (rpb.RenderConfig(fps=500), grpc.StatusCode.INVALID_ARGUMENT, "config.fps"),
        (rpb.RenderConfig(sample_rate=MAX_STAGE_RATE + 1), grpc.StatusCode.INVALID_ARGUMENT, "config.sample_rate"),
    ],
)
async def test_bad_render_configs_name_the_field_and_the_service_stays_up(stub, config, code, field):
    async def config_only() -> AsyncIterator[rpb.RenderRequest]:
        # only the config: the server refuses it before reading on (a client still writing when
        # the server ends the call sees a transport error instead of the status)
        yield rpb.RenderRequest(request_id="r", config=config)

    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [m async for m in stub.Render(config_only())]
    assert err.value.code() == code
    assert (err.value.details() or "").startswith(field)
    ok = _assemble([m async for m in stub.Render(_requests(rpb.RenderConfig(fps=FPS, sample_rate=SR)))])
    assert len(ok) == len(VOICED)


async def test_a_sample_rate_out_of_range_is_refused_with_the_range_the_encoder_takes_too(stub):
    """The renderer and the encoder take the same rates (MIN_STAGE_RATE..MAX_STAGE_RATE), and say which."""

    async def config_only() -> AsyncIterator[rpb.RenderRequest]:
        yield rpb.RenderRequest(request_id="r", config=rpb.RenderConfig(sample_rate=MIN_STAGE_RATE - 1))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [m async for m in stub.Render(config_only())]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    rate = MIN_STAGE_RATE - 1
    assert err.value.details() == f"config.sample_rate: {rate} Hz is outside {MIN_STAGE_RATE}..{MAX_STAGE_RATE}"


async def test_a_backend_not_loaded_says_which_setting_loads_it(stub):
    """`--backend wav2lip` on a mesh started without it: the refusal said what was loaded, not how
    to load more."""

    async def config_only() -> AsyncIterator[rpb.RenderRequest]:
        yield rpb.RenderRequest(request_id="r", config=rpb.RenderConfig(backend="wav2lip"))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [m async for m in stub.Render(config_only())]
    assert err.value.details() == (
        "config.backend: backend 'wav2lip' is not loaded (loaded: viseme); the renderer loads the ones its "
        "backends setting lists (TALKMESH_RENDERER__BACKENDS=viseme,wav2lip)"
    )


async def test_a_model_path_set_for_a_backend_not_loaded_is_warned_about(tmp_path, caplog):
    """README's MuseTalk example set musetalk.path but not backends: the renderer started with viseme
    alone and said nothing; the first `--backend musetalk` request was the first sign."""
    env = {
        "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache"),
        "TALKMESH_RENDERER__MUSETALK__PATH": str(tmp_path / "musetalk"),
        "TALKMESH_RENDERER__WAV2LIP__PATH": str(tmp_path / "wav2lip.onnx"),
    }
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    with caplog.at_level("WARNING", logger="services.renderer.server"):
        async with serve(service):
            pass
    warned = [r.getMessage() for r in caplog.records if r.name == "services.renderer.server"]
    for name in ("wav2lip", "musetalk"):
        assert (
            f"{name}.path is set but {name!r} is not in backends: not loaded "
            f"(TALKMESH_RENDERER__BACKENDS=viseme,{name} loads it)"
        ) in warned, warned
