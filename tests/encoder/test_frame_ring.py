"""The data plane on one machine: the encoder offers the renderer a shared-memory frame ring
(talkmesh/common/framering.py) and the frames come through it instead of gRPC messages. Here a
real renderer and encoder talk over gRPC on port 0, sharing a directory: the stream that uses the
ring produces the same tracks as the one that did not, packet for packet; only small messages
leave the renderer; the ring's file is gone at the end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from services.encoder.main import create_service as create_encoder
from services.encoder.main import load_config as encoder_config
from services.encoder.render import FrameRings
from services.renderer.main import create_service as create_renderer
from services.renderer.main import load_config as renderer_config
from talkmesh.common.channel import create_channel
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import audio_features_pb2, common_pb2, encoder_pb2, encoder_pb2_grpc, renderer_pb2

from .media import FPS, SR, audio_request, config_request, decode, frame_request, frames_for, packets, tone

SECONDS = 2
FRAME_BYTES = 512 * 512 * 3 // 2
OUT = {"service": "renderer", "direction": "out"}
_RINGS: list[FrameRings] = []  # the encoder's, of the last _mesh
RING_HITS = {"service": "renderer", "cache": "frame_ring", "result": "hit"}


def _requests(samples: int) -> list[encoder_pb2.EncodeRequest]:
    render = renderer_pb2.RenderConfig(request_id="ring", sample_rate=SR)
    cfg = encoder_pb2.EncodeConfig(request_id="ring", fps=FPS, sample_rate=SR, render=render)
    pcm = tone(samples)
    n = frames_for(samples)
    out = [encoder_pb2.EncodeRequest(config=cfg)]
    step = SR // 5  # 200 ms chunks, each with its frames' features, as the gateway sends them
    frame = 0
    for offset in range(0, samples, step):
        end = min(offset + step, samples)
        out.append(audio_request(offset, pcm[2 * offset : 2 * end]))
        last = n if end == samples else end * FPS // SR
        batch = audio_features_pb2.FeatureChunk(frame_index=frame)
        for i in range(frame, last):
            voiced = (i // 10) % 2 == 0
            batch.frames.add(
                frame_index=i, activity=common_pb2.FrameActivity(rms_dbfs=-15.0 if voiced else -90.0, voiced=voiced)
            )
        if last > frame:
            out.append(encoder_pb2.EncodeRequest(features=batch))
        frame = last
    return [*out, encoder_pb2.EncodeRequest(end_of_stream=True)]


def _sample(telemetry: Telemetry, name: str, labels: dict[str, str]) -> float:
    return telemetry.metrics.registry.get_sample_value(name, labels) or 0.0


@contextlib.asynccontextmanager
async def _mesh(
    tmp_path: Path, renderer_rings: bool = True
) -> AsyncIterator[tuple[encoder_pb2_grpc.EncoderStub, Telemetry]]:
    """A renderer and an encoder on port 0, sharing the ring directory ``tmp_path / "shm"``."""
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {
        "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache"),
        "TALKMESH_RENDERER__FRAME_RING__DIRECTORY": str(shm),
        "TALKMESH_RENDERER__FRAME_RING__ENABLED": str(renderer_rings).lower(),
    }
    renderer_telemetry = Telemetry("renderer")
    async with serve(create_renderer(renderer_config(None, env=env), renderer_telemetry)) as renderer:
        env = {
            "TALKMESH_ENCODER__RENDERER__TARGET": renderer.address,
            "TALKMESH_ENCODER__FRAME_RING__DIRECTORY": str(shm),
        }
        encoder = create_encoder(encoder_config(env=env), Telemetry("encoder"), nvenc_probe=lambda _: False)
        _RINGS[:] = [encoder.servicer.rings]  # type: ignore[attr-defined]
        async with serve(encoder) as host, create_channel(host.address) as channel:
            yield encoder_pb2_grpc.EncoderStub(channel), renderer_telemetry


async def test_frames_through_the_ring_make_the_same_video(tmp_path: Path) -> None:
    samples = SR * SECONDS
    n = frames_for(samples)
    outputs: list[bytes] = []
    sent: list[float] = []
    shm = tmp_path / "shm"
    async with _mesh(tmp_path) as (stub, renderer):
        encoder_rings = _RINGS
        for _ in range(3):
            before = _sample(renderer, "talkmesh_stream_bytes_total", OUT)
            async with asyncio.timeout(60):  # (an encoder that never released a slot would stall)
                out = [m async for m in stub.Encode(iter(_requests(samples)))]
            outputs.append(b"".join(m.data for m in out))
            sent.append(_sample(renderer, "talkmesh_stream_bytes_total", OUT) - before)
        hits = _sample(renderer, "talkmesh_cache_requests_total", RING_HITS)
        async with asyncio.timeout(10):  # rings made ahead for the next streams (frame_ring.ready: 2)
            while len(list(shm.iterdir())) < 2:
                await asyncio.sleep(0.01)
            await _settle(encoder_rings[0])
        assert len(list(shm.iterdir())) == 2  # those in use were unlinked
    # the first stream's frame size was not known yet: no ring; the next two had one made ahead,
    # offered before their first input, so every frame (frame 0 too) came through it
    assert hits == 2
    assert sent[0] >= n * FRAME_BYTES
    assert sent[1] < n * 200 and sent[2] < n * 200  # small messages only
    assert packets(outputs[1]) == packets(outputs[0]) == packets(outputs[2])  # the same pixels were encoded
    d = decode(outputs[1])
    assert d.size == (512, 512) and len(d.video_pts) == n
    assert list(shm.iterdir()) == []  # the encoder's stop unlinked the rings kept ready


async def _settle(rings: FrameRings) -> None:
    async with asyncio.timeout(10):
        while sum(rings._making.values()):
            await asyncio.sleep(0.005)


async def test_rings_made_ahead_are_taken_kept_per_size_and_unlinked_at_close(tmp_path: Path) -> None:
    rings = FrameRings(str(tmp_path), 3, ready=2, enabled=True)
    miss = rings.take(1000)  # none ready: made now, offered once made
    assert miss is not None and miss.offer(1) is None  # not made yet (a worker thread makes it)
    async with asyncio.timeout(10):
        while (offer := miss.offer(1)) is None:
            await asyncio.sleep(0.005)
    assert offer.frame_ring.slots == 3 and offer.frame_ring.slot_bytes == 1000
    assert miss.offer(2) is None  # once
    rings.prepare(1000)
    await _settle(rings)
    assert len(rings._ready.get(1000) or ()) == 2
    hit = rings.take(1000)
    assert hit is not None and hit.offer(1) is not None  # made ahead: offered at once
    assert len(rings._ready.get(1000) or ()) == 1  # the next is made by prepare(), not by take()
    for size in (2000, 3000, 4000, 5000):  # four more sizes: the oldest size's ring is unlinked
        rings.prepare(size)
        await _settle(rings)
    assert rings._ready.keys() == [2000, 3000, 4000, 5000]
    miss.close()
    hit.close()
    await asyncio.sleep(0)
    assert len(list(tmp_path.iterdir())) == 8
    rings.prepare(6000)
    rings.close()  # the ready ones now, the one being made once made
    await _settle(rings)
    await asyncio.sleep(0)
    assert list(tmp_path.iterdir()) == []
    assert rings.take(1000) is None and FrameRings(str(tmp_path), 3, 2, enabled=False).take(1000) is None


@pytest.mark.parametrize("how", ["refused", "cancelled"])
async def test_no_ring_is_left_behind(tmp_path: Path, how: str) -> None:
    """A ring the renderer refused (its rings are off) or a stream cancelled after its first
    fragment: the file goes with the stream, and those kept ready go when the encoder stops."""
    samples = SR * SECONDS
    shm = tmp_path / "shm"
    async with _mesh(tmp_path, renderer_rings=how != "refused") as (stub, renderer):
        async with asyncio.timeout(60):
            for i in range(3):
                call = stub.Encode(iter(_requests(samples)))
                if how == "cancelled" and i > 0:
                    async for m in call:
                        if m.frames_encoded:
                            break
                    call.cancel()
                else:
                    out = [m async for m in call]
                    assert len(decode(b"".join(m.data for m in out)).video_pts) == frames_for(samples)
            while len(list(shm.iterdir())) > 2:  # a cancelled stream's ring goes as its handler ends
                await asyncio.sleep(0.01)
            await _settle(_RINGS[0])
        lookups = {
            r: _sample(renderer, "talkmesh_cache_requests_total", {**RING_HITS, "result": r}) for r in ("hit", "miss")
        }
    assert lookups == ({"hit": 0, "miss": 2} if how == "refused" else {"hit": 2, "miss": 0})
    assert list(shm.iterdir()) == []


async def test_frames_in_a_ring_are_refused_on_the_encode_stream() -> None:
    """The caller's own frames (the Encode stream without config.render) carry pixels; a frame
    claiming to be in a ring names the field."""
    service = create_encoder(encoder_config(env={}), Telemetry("encoder"), nvenc_probe=lambda _: False)
    frame = frame_request(0, b"", 64, 48)
    frame.frame.in_ring = True
    async with serve(service) as host, create_channel(host.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in encoder_pb2_grpc.EncoderStub(channel).Encode(iter([config_request(64, 48), frame])):
                pass
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "frame.in_ring" in (err.value.details() or "")


async def test_a_directory_that_is_not_there_turns_rings_off(tmp_path: Path, caplog) -> None:
    """macOS has no /dev/shm: one warning, then no ring is tried again (frames go inline)."""
    rings = FrameRings(str(tmp_path / "missing"), 3, ready=2, enabled=True)
    offer = rings.take(1000)
    assert offer is not None
    async with asyncio.timeout(10):
        while offer.offer(1) is None and rings.enabled:
            await asyncio.sleep(0.005)
    assert offer.ring is None and not rings.enabled
    assert rings.take(1000) is None
    assert sum("frame rings off" in r.message for r in caplog.records) == 1
