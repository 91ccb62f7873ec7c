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
    """Default geometry (1 s blocks, the segment so far as left and 0.5 s right context): each block
    from its clip placed at its true position in the 30 s window (the rest: the clip repeated, the
    default future_fill), exactly what transformers' extractor makes of that window."""
    encoder, onnx_path = tiny
    x = quantise(speech_like(16000, 1.7))
    cfg = WhisperEncoderConfig(path=str(onnx_path))
    ours = await extract(onnx_path, cfg, x, 16000)
    valid = len(x) // 320
    blocks = []
    for first in range(0, valid, cfg.block_frames):
        start = max(0, first - cfg.left_frames)
        end = (first + cfg.block_frames + cfg.right_frames) * 320
        clip = x[start * 320 : min(len(x), end)]
        # future_fill "repeat": the clip's periodic extension, silent after the audio once it ended
        window = clip[(np.arange(480000) - start * 320) % len(clip)]
        if end > len(x):
            window[start * 320 + len(clip) :] = 0.0
        hidden = torch_hidden(encoder, window)
        blocks.append(hidden[first : first + min(cfg.block_frames, valid - first)])
    states = np.concatenate(blocks)
    assert len(states) == valid
    expected = musetalk_windows(np.concatenate([states, np.zeros((1, 5, 384))]), len(x), len(ours))
    np.testing.assert_allclose(ours, expected, atol=1e-4)


async def long_speech(seconds: float) -> np.ndarray:
    """At least ``seconds`` of eSpeak NG speech (22050 Hz float32), sentences one after another."""
    from services.tts.engine import EspeakEngine, EspeakParams

    sentences = [
        "The quick brown fox jumps over the lazy dog, and then it runs back home through the rain.",
        "She sells sea shells by the sea shore; the shells she sells are surely sea shells.",
        "How many pickled peppers did Peter Piper pick, if Peter Piper picked a peck of them?",
        "A talking head should move its lips in time with every word it says.",
    ]
    engine = EspeakEngine()
    await engine.start()
    blocks: list[np.ndarray] = []
    try:
        k = 0
        while sum(len(b) for b in blocks) < seconds * 22050:
            async for block in engine.synthesize(sentences[k % len(sentences)], EspeakParams()):
                blocks.append(block.samples)
            k += 1
    finally:
        await engine.close()
    return np.concatenate(blocks).astype(np.float32) / 32768.0


def token_relative_error(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per token (one Whisper frame of one hidden state, a row of a [50, 384] window): |got - ref| / |ref|,
    over the tokens that are not padding."""
    norm = np.linalg.norm(ref, axis=-1)
    keep = norm > 0
    assert np.array_equal(keep, np.linalg.norm(got, axis=-1) > 0)  # the same padding
    return np.asarray(np.linalg.norm(got - ref, axis=-1)[keep] / norm[keep])


@pytest.mark.timeout(1800)  # ~50 encoder windows: minutes on a loaded 2-core machine
async def test_streamed_embeddings_match_the_full_window_computation(tiny: tuple[Any, Path]) -> None:
    """45 s of speech (one 30 s segment boundary): the default streaming geometry (1 s blocks, whole
    segment so far as left context, 0.5 s right context) against MuseTalk's offline computation
    (30 s segments, each encoded whole), with the random Whisper-tiny export: per-token relative
    error <= 2 % in every frame."""
    from services.audio_features.backends.onnx import OnnxWhisperEncoder
    from services.audio_features.streaming import (
        EmbeddingGeometry,
        FeatureKind,
        FeatureStream,
        StreamOptions,
        extract_offline,
    )
    from talkmesh.common.clock import fps_fraction

    _, onnx_path = tiny
    x = soxr.resample(await long_speech(45.0), 22050, 16000, quality="HQ").astype(np.float32)
    assert len(x) > 45 * 16000
    cfg = WhisperEncoderConfig(path=str(onnx_path))
    encoder = OnnxWhisperEncoder(cfg)
    options = StreamOptions(FeatureKind.WHISPER_EMBEDDING, fps_fraction(25), 16000)
    reference = extract_offline(x, options, encoder, EmbeddingGeometry(1500, 0, 0, 1500))
    offline = np.stack([f.features for f in reference if f.features is not None])
    geometry = EmbeddingGeometry(cfg.block_frames, cfg.left_frames, cfg.right_frames, 1500, fill=cfg.future_fill)
    stream = FeatureStream(options, encoder, geometry)
    frames = []
    for a in range(0, len(x), 480):  # 30 ms chunks
        frames += stream.push(x[a : a + 480])
    frames += stream.finish()
    streamed = np.stack([f.features for f in frames if f.features is not None])
    assert streamed.shape == offline.shape == (math.ceil(len(x) * 25 / 16000), 50, 384)
    errors = token_relative_error(streamed, offline)
    p99 = np.quantile(errors, 0.99)
    print(f"per-token relative error: max {errors.max():.4f}, p99 {p99:.4f}, mean {errors.mean():.4f}")
    assert errors.max() <= 0.02


def test_musetalk_versions_export_their_last_state(tiny: tuple[Any, Path]) -> None:
    """1.5: transformers' hidden_states (final LayerNorm on the last); 1.0: the last block's own output
    (openai-whisper's states collected before ln_post). Everything before the last state is shared."""
    import onnx
    import onnxruntime as ort

    from tools.export_whisper_encoder import main as export_main

    encoder, onnx_path = tiny
    v10 = onnx_path.with_name("encoder-v1.0.onnx")
    assert export_main([str(onnx_path.parent / "checkpoint"), str(v10), "--musetalk-version", "1.0"]) == 0
    mel = np.random.default_rng(1).uniform(-1.5, 1.5, (1, 80, 3000)).astype(np.float32)
    states = {}
    for version, path in (("1.5", onnx_path), ("1.0", v10)):
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        assert meta["talkmesh.musetalk_version"] == version
        assert meta["talkmesh.final_layer_norm"] == ("true" if version == "1.5" else "false")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        states[version] = session.run(["hidden_states"], {"input_features": mel})[0][0]
    np.testing.assert_allclose(states["1.0"][:-1], states["1.5"][:-1], atol=1e-5)
    with torch.no_grad():
        normed = encoder.layer_norm(torch.from_numpy(states["1.0"][-1])).numpy()
    np.testing.assert_allclose(normed, states["1.5"][-1], atol=1e-4)  # 1.5 = LayerNorm(1.0)
    assert not np.allclose(states["1.0"][-1], states["1.5"][-1], atol=1e-2)


async def test_musetalk_version_must_match_the_encoder(tiny: tuple[Any, Path]) -> None:
    """musetalk.version 1.0 with a 1.5 export refuses to start, naming the setting and the fix; with a
    1.0 export the windows repeat the edge frames instead of zero padding."""
    from services.audio_features.config import MuseTalkConfig

    _, onnx_path = tiny
    config = AudioFeaturesConfig(
        server=SERVER, whisper_encoder=WhisperEncoderConfig(path=str(onnx_path)), musetalk=MuseTalkConfig("1.0")
    )
    service = create_service(config, Telemetry("audio_features"))
    with pytest.raises(ValueError, match=r"musetalk.version 1.0.*--musetalk-version 1.0"):
        await service.start()
    v10 = onnx_path.with_name("encoder-v1.0.onnx")
    if not v10.is_file():
        from tools.export_whisper_encoder import main as export_main

        assert export_main([str(onnx_path.parent / "checkpoint"), str(v10), "--musetalk-version", "1.0"]) == 0
    x = quantise(speech_like(16000, 0.5))
    config = AudioFeaturesConfig(
        server=SERVER, whisper_encoder=WhisperEncoderConfig(path=str(v10)), musetalk=MuseTalkConfig("1.0")
    )
    service = create_service(config, Telemetry("audio_features"))
    async with serve(service, SERVER) as host:
        out = await call(host.address, requests(pb.FEATURE_TYPE_WHISPER_EMBEDDING, to_pcm(x), 16000, 4800))
    feats = np.stack([from_tensor(m.features) for m in out[:-1]]).reshape(-1, 10, 5, 384)
    for k in range(4):  # frame 0's window is Whisper frames [-4, 6): the first 4 repeat frame 0
        np.testing.assert_array_equal(feats[0, k], feats[0, 4])
    last = len(x) // 320 - 1  # the last frame's window runs past the audio: frame `last` repeated
    i = len(feats) - 1
    for k, t in enumerate(range(2 * i - 4, 2 * i + 6)):
        if t >= last:
            np.testing.assert_array_equal(feats[i, k], feats[i, last - (2 * i - 4)])
    assert np.all(np.abs(feats).sum(axis=-1) > 0)  # no zero padding anywhere


def test_a_missing_checkpoint_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As the other tools: `error: ...` and exit code 2, not a traceback."""
    from tools.export_whisper_encoder import main as export_main

    with pytest.raises(SystemExit) as done:
        export_main([str(tmp_path / "models" / "whisper"), str(tmp_path / "out.onnx")])
    assert done.value.code == 2
    err = capsys.readouterr().err
    missing = tmp_path / "models" / "whisper"
    assert err == f"error: {missing} has no config.json: not a Hugging Face Whisper checkpoint\n"
    assert not (tmp_path / "out.onnx").exists()


def test_random_writes_an_encoder_the_service_takes(tmp_path: Path) -> None:
    """`--random OUTPUT`: Whisper-tiny's architecture (5 states of 384), random weights, for the version asked."""
    import onnx

    from services.audio_features.backends.onnx import OnnxWhisperEncoder
    from tools.export_whisper_encoder import main as export_main

    out = tmp_path / "random.onnx"
    assert export_main(["--random", str(out), "--musetalk-version", "1.0"]) == 0
    encoder = OnnxWhisperEncoder(WhisperEncoderConfig(path=str(out)))
    assert (encoder.input_frames, encoder.layers, encoder.width) == (3000, 5, 384)
    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    assert meta["talkmesh.musetalk_version"] == "1.0"
    with pytest.raises(SystemExit):
        export_main(["--random", str(tmp_path / "checkpoint"), str(out)])  # OUTPUT alone
