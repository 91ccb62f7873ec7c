"""Wav2Lip end to end through the renderer's gRPC service (random-weight model from the importer).

Runs once the renderer service (services/renderer/main.py, written in parallel) exists: two
concurrent Render streams with a silent stretch each, frames checked for order, size, format and
the ``inferred`` flag (silent frames skip the model), batches recorded in talkmesh_batch_size.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
renderer_main = pytest.importorskip("services.renderer.main")

from services.renderer.config import AvatarConfig, BatchConfig, ModelConfig, RendererConfig  # noqa: E402
from talkmesh.bench.stages.models import write_random_wav2lip  # noqa: E402
from talkmesh.common.channel import create_channel  # noqa: E402
from talkmesh.common.config import ServerConfig  # noqa: E402
from talkmesh.common.telemetry import Telemetry  # noqa: E402
from talkmesh.common.tensors import to_tensor  # noqa: E402
from talkmesh.testing import serve  # noqa: E402
from talkmesh.v1 import audio_features_pb2 as fpb  # noqa: E402
from talkmesh.v1 import common_pb2 as cpb  # noqa: E402
from talkmesh.v1 import renderer_pb2 as rpb  # noqa: E402
from talkmesh.v1 import renderer_pb2_grpc as rpb_grpc  # noqa: E402

pytestmark = pytest.mark.tools

FRAMES = 12
SILENT = range(4, 8)  # a silent stretch in the middle of each utterance


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_wav2lip(tmp_path_factory.mktemp("w2l"))


def requests(request_id: str, session: int) -> list[rpb.RenderRequest]:
    cfg = rpb.RenderConfig(
        request_id=request_id, backend="wav2lip", size="native", fps=25.0,
        pixel_format=cpb.PIXEL_FORMAT_RGB24, sample_rate=16000,
    )  # fmt: skip
    out = [rpb.RenderRequest(request_id=request_id, seq=0, config=cfg)]
    rng = np.random.default_rng(session)
    for i in range(FRAMES):
        voiced = i not in SILENT
        chunk = fpb.FeatureChunk(
            request_id=request_id, seq=i, frame_index=i,
            features=to_tensor(rng.uniform(-4, 4, (80, 16)).astype(np.float32)),
            activity=cpb.FrameActivity(rms_dbfs=-20.0 if voiced else -90.0, voiced=voiced),
        )  # fmt: skip
        out.append(rpb.RenderRequest(request_id=request_id, seq=i + 1, features=chunk))
    out.append(rpb.RenderRequest(request_id=request_id, seq=FRAMES + 1, end_of_stream=True))
    return out


async def test_two_sessions_render_in_order_and_skip_the_model_on_silence(model_path: Path, tmp_path: Path):
    config = RendererConfig(
        server=ServerConfig(port=0, metrics_port=-1, grace_seconds=2.0),
        backends=["viseme", "wav2lip"],
        wav2lip=ModelConfig(path=str(model_path)),
        batch=BatchConfig(max_size=4, max_delay_ms=20.0),
        avatars=AvatarConfig(cache_dir=str(tmp_path / "avatars")),
    )
    telemetry = Telemetry("renderer")
    service = renderer_main.create_service(config, telemetry)
    async with serve(service, config.server) as host, create_channel(host.address) as channel:
        stub = rpb_grpc.RendererStub(channel)

        async def session(k: int) -> list[cpb.VideoFrame]:
            call = stub.Render(iter(requests(f"r{k}", k)), timeout=120)
            return [msg async for msg in call]

        results = await asyncio.gather(*(session(k) for k in range(2)))
    for msgs in results:
        assert msgs[-1].end_of_stream
        frames: dict[int, list[cpb.VideoFrame]] = {}
        order: list[int] = []
        for m in msgs:
            if m.data:
                if m.frame_index not in frames:
                    order.append(m.frame_index)
                frames.setdefault(m.frame_index, []).append(m)
        assert order == list(range(FRAMES))
        for i, parts in frames.items():
            first = parts[0]
            assert first.pixel_format == cpb.PIXEL_FORMAT_RGB24
            data = b"".join(p.data for p in sorted(parts, key=lambda p: p.part_index))
            assert len(data) == first.width * first.height * 3
            assert first.inferred == (i not in SILENT)
    registry = telemetry.metrics.registry
    ran = registry.get_sample_value("talkmesh_batch_size_sum", {"service": "renderer", "model": "wav2lip"})
    # warm-up batches may be recorded too; at least the voiced frames of both sessions ran
    assert ran is not None and ran >= 2 * (FRAMES - len(SILENT))
