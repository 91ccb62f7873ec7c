"""RenderRequest.frame_ring: the renderer puts frames into the encoder's shared-memory ring and sends
only `in_ring`; the pixels are those it sends inline; a full ring holds it back until the encoder
releases a slot; a ring it cannot open leaves the frames inline, counted and not an error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from services.encoder.render import unbatched
from services.renderer.main import create_service, load_config
from talkmesh.common.channel import create_channel
from talkmesh.common.framering import NAME_PREFIX, FrameRing
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import renderer_pb2_grpc

SR, FPS = 16000, 25
FRAMES = 30
FRAME_BYTES = 512 * 512 * 3 // 2
VOICED = [(i // 5) % 2 == 1 for i in range(FRAMES)]


def _input(
    offer: rpb.FrameRing | None, extra_offer: bool = False, pixel_format: int = cpb.PIXEL_FORMAT_I420
) -> list[rpb.RenderRequest]:
    config = rpb.RenderConfig(
        request_id="r", fps=FPS, sample_rate=SR, batch_frames=True, pixel_format=pixel_format  # type: ignore[arg-type]
    )
    out = [rpb.RenderRequest(config=config)]
    if offer is not None:
        out.append(rpb.RenderRequest(seq=1, frame_ring=offer))
        if extra_offer:
            out.append(rpb.RenderRequest(seq=2, frame_ring=offer))
    chunk = fpb.FeatureChunk(frame_index=0)
    for i, voiced in enumerate(VOICED):
        chunk.frames.add(frame_index=i, activity=cpb.FrameActivity(rms_dbfs=-15.0 if voiced else -90.0, voiced=voiced))
    out.append(rpb.RenderRequest(seq=len(out), features=chunk, end_of_stream=True))
    return out


async def _aiter(items: list[rpb.RenderRequest]) -> AsyncIterator[rpb.RenderRequest]:
    for item in items:
        yield item


def _offer(ring: FrameRing) -> rpb.FrameRing:
    return rpb.FrameRing(name=ring.name, slots=ring.slots, slot_bytes=ring.slot_bytes)


def _ring_lookups(telemetry: Telemetry, result: str) -> float:
    labels = {"service": "renderer", "cache": "frame_ring", "result": result}
    return telemetry.metrics.registry.get_sample_value("talkmesh_cache_requests_total", labels) or 0.0


@pytest.fixture
async def renderer(tmp_path) -> AsyncIterator[tuple[renderer_pb2_grpc.RendererStub, Telemetry]]:
    (tmp_path / "shm").mkdir()
    env = {
        "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache"),
        "TALKMESH_RENDERER__FRAME_RING__DIRECTORY": str(tmp_path / "shm"),
    }
    telemetry = Telemetry("renderer")
    service = create_service(load_config(None, env=env), telemetry)
    async with serve(service) as host, create_channel(host.address) as ch:
        yield renderer_pb2_grpc.RendererStub(ch), telemetry


async def _inline(stub: renderer_pb2_grpc.RendererStub, pixel_format: int = cpb.PIXEL_FORMAT_I420) -> list[bytes]:
    frames = [
        f async for f in unbatched(stub.Render(_aiter(_input(None, pixel_format=pixel_format)))) if not f.end_of_stream
    ]
    assert [f.frame_index for f in frames] == list(range(FRAMES))
    assert not any(f.in_ring for f in frames)
    return [f.data for f in frames]


@pytest.mark.parametrize("pixel_format", [cpb.PIXEL_FORMAT_I420, cpb.PIXEL_FORMAT_RGB24])
async def test_frames_in_the_ring_are_the_frames_sent_inline(renderer, tmp_path, pixel_format: int) -> None:
    """Converted straight into the slots: I420 (idle life's regions, and whole frames) and RGB."""
    stub, telemetry = renderer
    expected = await _inline(stub, pixel_format)
    size = len(expected[0])
    assert size == (FRAME_BYTES if pixel_format == cpb.PIXEL_FORMAT_I420 else 512 * 512 * 3)
    ring = FrameRing.create(str(tmp_path / "shm"), 12, size)
    got: list[bytes] = []
    in_ring = 0
    async for f in unbatched(stub.Render(_aiter(_input(_offer(ring), pixel_format=pixel_format)))):
        if f.end_of_stream:
            break
        assert f.frame_index == len(got) and (f.width, f.height) == (512, 512)
        if f.in_ring:
            assert not f.data and f.part_count in (0, 1)
            got.append(bytes(ring.frame(f.frame_index, size)))
            in_ring += 1
        else:
            got.append(f.data)
        ring.release(f.frame_index + 1)  # as the encoder does once it has encoded the frame
    assert got == expected  # the same pixels, frame for frame
    assert in_ring == FRAMES  # the renderer takes no more frames at once than it has slots for
    assert _ring_lookups(telemetry, "hit") == 1


async def test_a_full_ring_holds_the_renderer_back_until_a_slot_is_released(renderer, tmp_path) -> None:
    stub, _ = renderer
    expected = await _inline(stub)
    ring = FrameRing.create(str(tmp_path / "shm"), 2, FRAME_BYTES)
    frames = aiter(unbatched(stub.Render(_aiter(_input(_offer(ring))))))
    first = [await anext(frames), await anext(frames)]
    assert [(f.frame_index, f.in_ring) for f in first] == [(0, True), (1, True)]
    assert [bytes(ring.frame(i, FRAME_BYTES)) for i in (0, 1)] == expected[:2]
    waiting = asyncio.ensure_future(anext(frames))
    done, _ = await asyncio.wait([waiting], timeout=0.5)
    assert not done  # both slots hold frames the encoder has not released: the renderer waits
    ring.release(1)
    third = await waiting
    assert (third.frame_index, third.in_ring) == (2, True)
    assert bytes(ring.frame(2, FRAME_BYTES)) == expected[2]  # into slot 0, frame 0's
    for i in range(3, FRAMES + 1):
        ring.release(i)
        f = await anext(frames)
        if f.end_of_stream:
            break
        data = bytes(ring.frame(f.frame_index, FRAME_BYTES)) if f.in_ring else f.data
        assert f.frame_index == i and data == expected[i]


@pytest.mark.parametrize("why", ["other_directory", "bad_name", "wrong_shape", "too_small", "off"])
async def test_a_ring_the_renderer_cannot_use_leaves_the_frames_inline(tmp_path, why: str) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    (tmp_path / "elsewhere").mkdir()
    env = {
        "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache"),
        "TALKMESH_RENDERER__FRAME_RING__DIRECTORY": str(shm),
        "TALKMESH_RENDERER__FRAME_RING__ENABLED": "false" if why == "off" else "true",
    }
    ring = FrameRing.create(str(tmp_path / "elsewhere" if why == "other_directory" else shm), 4, FRAME_BYTES)
    offer = _offer(ring)
    if why == "bad_name":
        offer.name = "../" + ring.name
    elif why == "wrong_shape":
        offer.slots = 5
    elif why == "too_small":  # a ring the encoder made for a smaller avatar: frames do not fit
        ring = FrameRing.create(str(shm), 4, 1000)
        offer = _offer(ring)
    telemetry = Telemetry("renderer")
    async with serve(create_service(load_config(None, env=env), telemetry)) as host, create_channel(host.address) as ch:
        frames = [f async for f in unbatched(renderer_pb2_grpc.RendererStub(ch).Render(_aiter(_input(offer))))]
    assert [f.frame_index for f in frames[:-1]] == list(range(FRAMES)) and frames[-1].end_of_stream
    assert not any(f.in_ring for f in frames)
    assert all(len(f.data) == FRAME_BYTES for f in frames[:-1])
    assert (_ring_lookups(telemetry, "hit"), _ring_lookups(telemetry, "miss")) == (0, 1)


async def test_a_second_offer_is_refused_by_field(renderer, tmp_path) -> None:
    stub, _ = renderer
    ring = FrameRing.create(str(tmp_path / "shm"), 4, FRAME_BYTES)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Render(_aiter(_input(_offer(ring), extra_offer=True))):
            pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "frame_ring" in (err.value.details() or "")
    assert NAME_PREFIX  # the module's name rule is what the encoder uses


async def test_a_ring_offered_after_more_frames_than_slots_does_not_stall(renderer, tmp_path) -> None:
    """The offer comes after 20 frames went inline (the ring was made late); the encoder, which
    encoded those without having the ring, released nothing in it. The rest of the frames still
    come through the ring."""
    stub, _ = renderer
    expected = await _inline(stub)
    ring = FrameRing.create(str(tmp_path / "shm"), 4, FRAME_BYTES)
    inputs: asyncio.Queue[rpb.RenderRequest | None] = asyncio.Queue()
    reqs = _input(None)
    config, features = reqs[0], reqs[-1].features
    head = fpb.FeatureChunk(frame_index=0, frames=features.frames[:20])
    tail = fpb.FeatureChunk(frame_index=20, frames=features.frames[20:])

    async def requests() -> AsyncIterator[rpb.RenderRequest]:
        while (item := await inputs.get()) is not None:
            yield item

    for item in (config, rpb.RenderRequest(seq=1, features=head)):
        inputs.put_nowait(item)
    frames = aiter(unbatched(stub.Render(requests())))
    async with asyncio.timeout(30):
        first = [await anext(frames) for _ in range(20)]
        assert not any(f.in_ring for f in first)
        inputs.put_nowait(rpb.RenderRequest(seq=2, frame_ring=_offer(ring)))
        inputs.put_nowait(rpb.RenderRequest(seq=3, features=tail, end_of_stream=True))
        inputs.put_nowait(None)
        rest = []
        async for f in frames:
            if f.end_of_stream:
                break
            rest.append(bytes(ring.frame(f.frame_index, FRAME_BYTES)) if f.in_ring else f.data)
            assert f.in_ring
            ring.release(f.frame_index + 1)  # as the encoder does from now on
    assert [f.data for f in first] + rest == expected
