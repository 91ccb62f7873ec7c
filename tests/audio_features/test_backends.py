"""Encoder backend selection and loading, resampler drift and flat memory over long streams."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.audio_features.backends.onnx import OnnxWhisperEncoder
from services.audio_features.config import AudioFeaturesConfig, WhisperEncoderConfig
from services.audio_features.server import AudioFeaturesService
from services.audio_features.streaming import FeatureKind, FeatureStream, Resampler, StreamOptions
from talkmesh.common.clock import fps_fraction
from talkmesh.common.telemetry import Telemetry

from .helpers import noise

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


def tiny_encoder(path: Path, frames: int = 300, layers: int = 3, width: int = 8) -> Path:
    """An ONNX model with the Whisper encoder's contract: [B, 80, frames] -> [B, layers, frames/2, width]."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input_features", TensorProto.FLOAT, ["batch", 80, frames])
    y = helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, ["batch", layers, frames // 2, width])
    ints = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["input_features", "s0", "s1", "s_ax"], ["cut"]),  # [B, L*W, frames]
        helper.make_node("Reshape", ["cut", "shape"], ["r"]),  # [B, L, W, frames]
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 1, 3, 2]),  # [B, L, frames, W]
        helper.make_node("Slice", ["t", "f0", "f1", "f_ax", "f_step"], ["hidden_states"]),  # every 2nd frame
    ]
    inits = [
        ints("s0", [0]), ints("s1", [layers * width]), ints("s_ax", [1]), ints("shape", [0, layers, width, frames]),
        ints("f0", [0]), ints("f1", [frames]), ints("f_ax", [2]), ints("f_step", [2]),
    ]  # fmt: skip
    graph = helper.make_graph(nodes, "enc", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_short_provider_names_work_for_the_encoder(tmp_path: Path) -> None:
    """`execution.providers: [cuda]` is accepted as in the renderer (it used to stop start-up)."""
    from talkmesh.common.onnx import ExecutionConfig, ModelError

    path = tiny_encoder(tmp_path / "enc.onnx")
    enc = OnnxWhisperEncoder(WhisperEncoderConfig(path=str(path)), ExecutionConfig(providers=["cpu"]))
    assert enc.provider == CPU
    with pytest.raises(ModelError, match=r"whisper_encoder\.path: whisper encoder \(.*enc\.onnx\): pinned.*CUDA"):
        OnnxWhisperEncoder(
            WhisperEncoderConfig(path=str(path)), ExecutionConfig(providers=["cuda"]),
            available=[CUDA, CPU], provider_check=lambda p: "no NVIDIA driver",
        )  # fmt: skip


async def test_real_cpu_session_and_the_provider_metric(tmp_path: Path) -> None:
    path = tiny_encoder(tmp_path / "enc.onnx")
    telemetry = Telemetry("audio_features")
    service = AudioFeaturesService(AudioFeaturesConfig(whisper_encoder=WhisperEncoderConfig(path=str(path))), telemetry)
    await service.start()
    assert service.encoder is not None and service.encoder.provider == CPU
    mel = np.random.default_rng(0).standard_normal((2, 80, 300)).astype(np.float32)
    hidden = service.encoder.encode(mel)
    assert hidden.shape == (2, 3, 150, 8)
    np.testing.assert_array_equal(hidden[1, 2, 5], mel[1, 16:24, 10])
    labels = {"service": "audio_features", "kind": "execution_provider", "name": CPU}
    assert telemetry.metrics.registry.get_sample_value("talkmesh_backend_info", labels) == 1


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


def test_an_unrelated_model_as_encoder_is_refused_with_the_shapes_expected(tmp_path: Path) -> None:
    """A model with the right names but not the encoder's ranks: the refusal says what it takes."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input_features", TensorProto.FLOAT, [1, 80, 3000])
    y = helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, [1, 80, 3000])
    graph = helper.make_graph([helper.make_node("Identity", ["input_features"], ["hidden_states"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError) as err:
        OnnxWhisperEncoder(WhisperEncoderConfig(path=str(tmp_path / "other.onnx")))
    assert str(err.value) == (
        "whisper_encoder.path: unexpected shapes [1, 80, 3000] -> [1, 80, 3000]; expected "
        "input_features [batch, 80, frames] -> hidden_states [batch, layers, frames / 2, width]"
    )


@pytest.mark.parametrize(("exported", "configured"), [("1.0", "1.5"), ("1.5", "1.0")])
async def test_an_encoder_exported_for_another_musetalk_release_is_refused(
    tmp_path: Path, exported: str, configured: str
) -> None:
    """The export's talkmesh.musetalk_version against musetalk.version: both named, and the fixes."""
    import onnx

    from services.audio_features.config import MuseTalkConfig

    path = tiny_encoder(tmp_path / "enc.onnx")
    model = onnx.load(str(path))
    for key, value in {
        "talkmesh.musetalk_version": exported,
        "talkmesh.final_layer_norm": "true" if exported == "1.5" else "false",  # as the export writes it
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    encoder = WhisperEncoderConfig(path=str(path))
    config = AudioFeaturesConfig(whisper_encoder=encoder, musetalk=MuseTalkConfig(configured))
    service = AudioFeaturesService(config, Telemetry("audio_features"))
    with pytest.raises(ValueError) as err:
        await service.start()
    assert str(err.value).startswith(f"musetalk.version {configured}: the Whisper encoder enc-")
    assert f"was exported for MuseTalk {exported} (its talkmesh.musetalk_version)" in str(err.value)
    fixes = f"set musetalk.version: {exported}, or re-export it: python -m tools.export_whisper_encoder"
    assert str(err.value).endswith(f"{fixes} --musetalk-version {configured}")
    config = AudioFeaturesConfig(whisper_encoder=encoder, musetalk=MuseTalkConfig(exported))
    service = AudioFeaturesService(config, Telemetry("audio_features"))
    await service.start()  # the same file with the release it was exported for
    assert service.encoder is not None and service.encoder.musetalk_version == exported
    await service.stop()
