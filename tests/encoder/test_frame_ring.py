"""The data plane on one machine: the encoder offers the renderer a shared-memory frame ring
(talkmesh/common/framering.py) and the frames come through it instead of gRPC messages. Here a
real renderer and encoder talk over gRPC on port 0, sharing a directory: the stream that uses the
ring produces the same tracks as the one that did not, packet for packet; only small messages
leave the renderer; the ring's file is gone at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.encoder.main import create_service as create_encoder
from services.encoder.main import load_config as encoder_config
from services.renderer.main import create_service as create_renderer
from services.renderer.main import load_config as renderer_config
from talkmesh.common.channel import create_channel
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import audio_features_pb2, common_pb2, encoder_pb2, encoder_pb2_grpc, renderer_pb2

from .media import FPS, SR, audio_request, decode, frames_for, packets, tone

SECONDS = 2
FRAME_BYTES = 512 * 512 * 3 // 2
OUT = {"service": "renderer", "direction": "out"}
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


@pytest.fixture
async def mesh(tmp_path) -> AsyncIterator[tuple[encoder_pb2_grpc.EncoderStub, Telemetry]]:
    shm = tmp_path / "shm"
    shm.mkdir()
    env = {
        "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache"),
        "TALKMESH_RENDERER__FRAME_RING__DIRECTORY": str(shm),
    }
    renderer_telemetry = Telemetry("renderer")
    async with serve(create_renderer(renderer_config(None, env=env), renderer_telemetry)) as renderer:
        env = {
            "TALKMESH_ENCODER__RENDERER__TARGET": renderer.address,
            "TALKMESH_ENCODER__FRAME_RING__DIRECTORY": str(shm),
        }
        encoder = create_encoder(encoder_config(env=env), Telemetry("encoder"), nvenc_probe=lambda _: False)
        async with serve(encoder) as host, create_channel(host.address) as channel:
            yield encoder_pb2_grpc.EncoderStub(channel), renderer_telemetry


async def test_frames_through_the_ring_make_the_same_video(mesh, tmp_path) -> None:
    stub, renderer = mesh
    samples = SR * SECONDS
    n = frames_for(samples)
    outputs: list[bytes] = []
    sent: list[float] = []
    for _ in range(2):
        before = _sample(renderer, "talkmesh_stream_bytes_total", OUT)
        out = [m async for m in stub.Encode(iter(_requests(samples)))]
        outputs.append(b"".join(m.data for m in out))
        sent.append(_sample(renderer, "talkmesh_stream_bytes_total", OUT) - before)
    hits = _sample(renderer, "talkmesh_cache_requests_total", RING_HITS)
    # the first stream's frame size was not known yet: no ring; the second had one
    assert hits == 1
    assert sent[0] >= n * FRAME_BYTES
    # every frame through the ring, small messages only; frame 0 may come inline, as here, where its
    # input reaches the encoder at once, before the ring is made
    assert sent[1] < FRAME_BYTES + n * 200
    assert packets(outputs[1]) == packets(outputs[0])  # the same pixels reached the encoder
    d = decode(outputs[1])
    assert d.size == (512, 512) and len(d.video_pts) == n
    assert list((tmp_path / "shm").iterdir()) == []  # unlinked once the renderer had it open
