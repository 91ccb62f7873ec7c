"""The ONNX Whisper-encoder path end to end: export a randomly initialised Whisper-tiny-sized model
(4 layers, 384 wide, 30 s window: the real architecture and size, random weights) with
tools/export_whisper_encoder.py, serve it through gRPC and check the per-frame windows against a
direct computation with transformers' own feature extractor and the torch encoder."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from services.audio_features.config import AudioFeaturesConfig, WhisperEncoderConfig
from services.audio_features.main import create_service
from talkmesh.common.config import ServerConfig
from talkmesh.common.telemetry import Telemetry
from talkmesh.common.tensors import from_tensor
from talkmesh.testing import serve
from talkmesh.v1 import audio_features_pb2 as pb

from .helpers import quantise, speech_like, to_pcm
from .test_service import call, requests

pytestmark = pytest.mark.tools

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SERVER = ServerConfig(port=0, metrics_port=-1, grace_seconds=2.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    from tools.export_whisper_encoder import main as export_main
    from tools.export_whisper_encoder import random_tiny_checkpoint

    directory = tmp_path_factory.mktemp("whisper")
    checkpoint = random_tiny_checkpoint(directory)
    model = transformers.WhisperModel.from_pretrained(checkpoint).eval()
    onnx_path = directory / "encoder.onnx"
    assert export_main([str(checkpoint), str(onnx_path)]) == 0
    return model.get_encoder(), onnx_path


def torch_hidden(encoder: Any, clip16: np.ndarray) -> np.ndarray:
    """transformers' feature extractor (pads to 30 s) + the torch encoder: [1500, layers, width]."""
    extractor = transformers.WhisperFeatureExtractor()
    features = extractor(clip16, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        states = encoder(features, output_hidden_states=True).hidden_states
    return torch.stack(states, dim=2)[0].numpy()


def musetalk_windows(hidden: np.ndarray, n16: int, frames: int) -> np.ndarray:
    """MuseTalk's windowing at 25 fps: actual length, 4 zero frames before, 12 after, 10 per frame."""
    actual = math.floor(n16 / 16000 * 50)
    padded = np.concatenate([np.zeros_like(hidden[:4]), hidden[:actual], np.zeros_like(hidden[:12])])
    return np.stack([padded[2 * i : 2 * i + 10].reshape(-1, hidden.shape[-1]) for i in range(frames)])


async def extract(onnx_path: Path, encoder_config: WhisperEncoderConfig, x: np.ndarray, sr: int) -> np.ndarray:
    config = AudioFeaturesConfig(server=SERVER, whisper_encoder=encoder_config)
    service = create_service(config, Telemetry("audio_features"))
    async with serve(service, SERVER) as host:  # Service.start loads the ONNX file from the config
        assert service.encoder is not None and service.encoder.width == 384 and service.encoder.layers == 5
        out = await call(host.address, requests(pb.FEATURE_TYPE_WHISPER_EMBEDDING, to_pcm(x), sr, 4800))
    assert out[-1].end_of_stream and out[-1].frame_count == math.ceil(len(x) * 25 / sr)
    return np.stack([from_tensor(m.features) for m in out[:-1]])


def test_export_matches_torch(tiny: tuple[Any, Path]) -> None:
    import onnxruntime as ort

    encoder, onnx_path = tiny
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    mel = np.random.default_rng(0).uniform(-1.5, 1.5, (1, 80, 3000)).astype(np.float32)
    (ours,) = session.run(["hidden_states"], {"input_features": mel})
    assert ours.shape == (1, 5, 1500, 384)
    with torch.no_grad():
        ref = torch.stack(encoder(torch.from_numpy(mel), output_hidden_states=True).hidden_states, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4)


async def test_musetalk_recipe_through_grpc(tiny: tuple[Any, Path]) -> None:
    """block_seconds 30 without context is MuseTalk's offline recipe: compare with it directly."""
    encoder, onnx_path = tiny
    x = quantise(speech_like(24000, 1.3))
    ours = await extract(
        onnx_path,
        WhisperEncoderConfig(path=str(onnx_path), block_seconds=30.0, left_context_seconds=0, right_context_seconds=0),
        x,
        24000,
    )
    assert ours.shape == (33, 50, 384) and ours.dtype == np.float32
    x16 = soxr.resample(x, 24000, 16000, quality="HQ")  # librosa.load's default resampler
    expected = musetalk_windows(torch_hidden(encoder, x16), len(x16), len(ours))
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    assert np.all(ours[0, :20] == 0) and np.all(ours[-1, -20:] == 0)  # zero padding at both ends


async def test_streaming_blocks_through_grpc(tiny: tuple[Any, Path]) -> None:
    """Default geometry (1 s blocks, 1 s left and 0.5 s right context): each block from its own
    30 s-padded clip, exactly what transformers' extractor makes of that clip."""
    encoder, onnx_path = tiny
    x = quantise(speech_like(16000, 1.7))
    cfg = WhisperEncoderConfig(path=str(onnx_path))
    ours = await extract(onnx_path, cfg, x, 16000)
    valid = len(x) // 320
    blocks = []
    for first in range(0, valid, cfg.block_frames):
        start = max(0, first - cfg.left_frames)
        clip = x[start * 320 : min(len(x), (first + cfg.block_frames + cfg.right_frames) * 320)]
        hidden = torch_hidden(encoder, clip)
        blocks.append(hidden[first - start : first - start + min(cfg.block_frames, valid - first)])
    states = np.concatenate(blocks)
    assert len(states) == valid
    expected = musetalk_windows(np.concatenate([states, np.zeros((1, 5, 384))]), len(x), len(ours))
    np.testing.assert_allclose(ours, expected, atol=1e-4)
