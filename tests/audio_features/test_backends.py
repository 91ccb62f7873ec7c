"""Encoder backend selection and loading, resampler drift and flat memory over long streams."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.audio_features.backends.onnx import OnnxWhisperEncoder, choose_providers
from services.audio_features.config import AudioFeaturesConfig, WhisperEncoderConfig
from services.audio_features.server import AudioFeaturesService
from services.audio_features.streaming import FeatureKind, FeatureStream, Resampler, StreamOptions, fps_fraction
from talkmesh.common.telemetry import Telemetry

from .helpers import noise

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def test_choose_providers() -> None:
    assert choose_providers([], [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers([], ["AzureExecutionProvider", CPU]) == [CPU]
    assert choose_providers(["TensorrtExecutionProvider", CPU], [CUDA, CPU]) == [CPU]
    with pytest.raises(ValueError, match=r"whisper_encoder\.providers"):
        choose_providers(["TensorrtExecutionProvider"], [CPU])


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"whisper_encoder\.path"):
        OnnxWhisperEncoder(WhisperEncoderConfig(path=str(tmp_path / "nope.onnx")))


async def test_service_start_fails_on_a_bad_model(tmp_path: Path) -> None:
    bad = tmp_path / "encoder.onnx"
    bad.write_bytes(b"not a model")
    service = AudioFeaturesService(
        AudioFeaturesConfig(whisper_encoder=WhisperEncoderConfig(path=str(bad))), Telemetry("audio_features")
    )
    with pytest.raises(Exception):  # noqa: B017 - onnxruntime's own error type
        await service.start()


@pytest.mark.parametrize("sample_rate", [22050, 44100])
def test_resampler_does_not_drift_over_long_streams(sample_rate: int) -> None:
    x = noise(sample_rate, 120.0, level=0.05)
    resampler = Resampler(sample_rate)
    produced = 0
    lag = []
    chunk = sample_rate // 50 + 7  # an odd chunk size
    for start in range(0, len(x), chunk):
        produced += len(resampler.push(x[start : start + chunk]))
        lag.append(min(len(x), start + chunk) * 16000 / sample_rate - produced)
    produced += len(resampler.finish())
    assert produced == round(len(x) * 16000 / sample_rate)
    assert max(lag) < 1200 and min(lag) > -1  # a bounded delay, never ahead, no drift


@pytest.mark.parametrize("kind", [FeatureKind.WHISPER_LOG_MEL, FeatureKind.WAV2LIP_MEL, FeatureKind.ACTIVITY])
def test_buffers_stay_flat_over_a_long_stream(kind: str) -> None:
    x = noise(24000, 40.0, level=0.05)
    stream = FeatureStream(StreamOptions(kind, fps_fraction(25), 24000))
    chunk = 24000 // 10
    frames = 0
    for start in range(0, len(x), chunk):
        frames += len(stream.push(x[start : start + chunk]))
        held = len(stream.activity._pending)
        tensors = stream.tensors
        if tensors is not None:
            held += tensors._framer._buf.size + tensors._cols.shape[1]  # type: ignore[attr-defined]
        assert held < 3 * chunk  # bounded by a chunk plus a window, not by the stream's length
    frames += len(stream.finish())
    assert frames == 1000


def test_embedding_memory_stays_flat_over_a_long_stream() -> None:
    from services.audio_features.streaming import EmbeddingGeometry

    from .helpers import FakeEncoder

    x = noise(16000, 20.0, level=0.05)
    geometry = EmbeddingGeometry(block=25, left=10, right=10, window=150)
    stream = FeatureStream(
        StreamOptions(FeatureKind.WHISPER_EMBEDDING, fps_fraction(25), 16000), FakeEncoder(), geometry
    )
    frames = 0
    for start in range(0, len(x), 1600):
        frames += len(stream.push(x[start : start + 1600]))
        extractor = stream.tensors
        assert len(extractor._audio) <= (25 + 10 + 10) * 320 + 1600  # type: ignore[union-attr]
        assert len(extractor._states) <= 25 + 10  # type: ignore[union-attr]
    frames += len(stream.finish())
    assert frames == 500
