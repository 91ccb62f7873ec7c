# ruff: noqa: RUF001
"""Piper voices end to end: a small ONNX model with a Piper voice's inputs and outputs, a config in
Piper's format, run through the gRPC service.

The test model ignores prosody: each phoneme id becomes ``K`` samples of the constant
``(id + 1) / 512`` (times ``length_scale``), so the audio spells out the id sequence the service fed
it and the test can read it back and compare it with ids computed here from known IPA.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from services.tts.backends.piper import PiperVoiceConfig, PiperVoiceError
from services.tts.config import PiperConfig
from services.tts.main import create_service
from talkmesh.common.channel import create_channel
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import tts_pb2, tts_pb2_grpc
from tests.tts.conftest import default_config, pcm_of, visemes_of

K = 64  # samples per phoneme id
SR = 16000
SYMBOLS = ["_", "^", "$", " ", "!", ",", ".", "?", *"abdefhijklmnoprstuvwzæðŋɐɑɔəɛɜɪɹʃʊʌʒθ", "ˈ", "ˌ", "ː"]
ID_MAP = {s: [i] for i, s in enumerate(SYMBOLS)}


def build_model(path: Path, *, speakers: bool) -> None:
    table = ((np.arange(256, dtype=np.float32) + 1) / 512).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "input"], ["vals"], axis=0),  # [1, N]
        helper.make_node("Unsqueeze", ["vals", "axis2"], ["vals3"]),  # [1, N, 1]
        helper.make_node("Expand", ["vals3", "expand_shape"], ["rep"]),  # [1, N, K]
        helper.make_node("Reshape", ["rep", "out_shape"], ["flat"]),  # [1, 1, N*K]
        helper.make_node("Gather", ["scales", "one"], ["length_scale"], axis=0),
        helper.make_node("Mul", ["flat", "length_scale"], ["output"]),
    ]
    inputs = [
        helper.make_tensor_value_info("input", TensorProto.INT64, [1, "phonemes"]),
        helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
    ]
    if speakers:
        inputs.append(helper.make_tensor_value_info("sid", TensorProto.INT64, [1]))
    graph = helper.make_graph(
        nodes,
        "piper_test_voice",
        inputs,
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "time"])],
        initializer=[
            helper.make_tensor("table", TensorProto.FLOAT, [256], table),
            helper.make_tensor("axis2", TensorProto.INT64, [1], [2]),
            helper.make_tensor("expand_shape", TensorProto.INT64, [3], [1, 1, K]),
            helper.make_tensor("out_shape", TensorProto.INT64, [3], [1, 1, -1]),
            helper.make_tensor("one", TensorProto.INT64, [], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def write_voice(root: Path, name: str, *, speakers: int = 1) -> None:
    build_model(root / f"{name}.onnx", speakers=speakers > 1)
    config = {
        "audio": {"sample_rate": SR, "quality": "x_low"},
        "espeak": {"voice": "en-us"},
        "inference": {"noise_scale": 0.667, "length_scale": 1, "noise_w": 0.8},
        "phoneme_type": "espeak",
        "phoneme_map": {},
        "phoneme_id_map": ID_MAP,
        "num_symbols": 256,
        "num_speakers": speakers,
        "speaker_id_map": {f"s{i}": i for i in range(speakers)} if speakers > 1 else {},
        "language": {"code": "en_US"},
        "dataset": "test",
    }
    (root / f"{name}.onnx.json").write_text(json.dumps(config, ensure_ascii=False))


def expected_ids(ipa: str) -> list[int]:
    ids = [ID_MAP["^"][0], ID_MAP["_"][0]]
    for ch in unicodedata.normalize("NFD", ipa):
        ids += [ID_MAP[ch][0], ID_MAP["_"][0]]
    return [*ids, ID_MAP["$"][0]]


def decode_ids(pcm: np.ndarray, length_scale: float = 1.0) -> list[int]:
    values = pcm.astype(np.float64)[K // 2 :: K] / 32767 / length_scale
    return [round(v * 512) - 1 for v in values]


@pytest.fixture
async def piper(tmp_path: Path) -> Any:
    write_voice(tmp_path, "test-voice")
    write_voice(tmp_path, "multi", speakers=3)
    (tmp_path / "orphan.onnx").write_bytes(b"")  # no config: skipped with a warning
    cfg = default_config(piper=PiperConfig(voices_dir=str(tmp_path), fade_ms=0.0))
    service = create_service(cfg, Telemetry("tts"))
    async with serve(service) as host:
        channel = create_channel(host.address)
        try:
            yield tts_pb2_grpc.TTSStub(channel)
        finally:
            await channel.close()


async def test_piper_voice_runs_end_to_end(piper: Any) -> None:
    voices = {v.id: v for v in (await piper.ListVoices(tts_pb2.ListVoicesRequest())).voices}
    assert voices["piper:test-voice"].sample_rate == SR and voices["piper:test-voice"].engine == "piper"
    assert "piper:orphan" not in voices
    cfg = tts_pb2.SynthesisConfig(voice="piper:test-voice", request_id="p1")
    chunks = [c async for c in piper.Synthesize(tts_pb2.SynthesizeRequest(config=cfg, text="Hi there. Bob ate a pie!"))]
    assert all(c.sample_rate == SR and c.request_id == "p1" for c in chunks)
    assert chunks[-1].end_of_stream
    offsets = [c.sample_offset for c in chunks]
    assert offsets == list(np.cumsum([0] + [len(c.pcm) // 2 for c in chunks[:-1]]))
    assert all(len(c.pcm) // 2 <= SR * 40 // 1000 for c in chunks)
    pcm = pcm_of(chunks)
    # Clause by clause, each clause's ids (phonemized by eSpeak, punctuation kept, pads between).
    first = expected_ids("hˈaɪ ðˈɛɹ.")
    second = expected_ids("bˈɑːb ˈeɪt ɐ pˈaɪ!")
    assert decode_ids(pcm) == first + second
    split = len(first) * K
    assert {c.segment_index for c in chunks if c.sample_offset < split} == {0}
    assert {c.segment_index for c in chunks if c.sample_offset >= split} == {1}
    # Visemes tile the audio, in order, with the b and p of "Bob ... pie" closed.
    vis = visemes_of(chunks)
    assert vis[0].start_sample == 0 and vis[-1].end_sample == len(pcm)
    assert all(a.end_sample == b.start_sample for a, b in itertools.pairwise(vis))
    closed = [v.phoneme for v in vis if v.viseme == 1]
    assert closed == ["b", "b", "p"]


async def test_piper_rate_and_speaker_inputs(piper: Any) -> None:
    cfg = tts_pb2.SynthesisConfig(voice="piper:multi", settings=tts_pb2.VoiceSettings(rate=2.0))
    chunks = [c async for c in piper.Synthesize(tts_pb2.SynthesizeRequest(config=cfg, text="Hi there."))]
    # rate 2 -> length_scale 0.5, which this test model applies as a gain.
    assert decode_ids(pcm_of(chunks), length_scale=0.5) == expected_ids("hˈaɪ ðˈɛɹ.")


async def test_piper_streamed_input(piper: Any) -> None:
    async def pieces() -> Any:
        yield tts_pb2.TextPiece(config=tts_pb2.SynthesisConfig(voice="piper:test-voice"))
        yield tts_pb2.TextPiece(text="Hi the")
        yield tts_pb2.TextPiece(text="re. Bob ate a pie!", end_of_stream=True)

    chunks = [c async for c in piper.SynthesizeStream(pieces())]
    assert decode_ids(pcm_of(chunks)) == expected_ids("hˈaɪ ðˈɛɹ.") + expected_ids("bˈɑːb ˈeɪt ɐ pˈaɪ!")


async def test_unknown_piper_voice_is_not_found(piper: Any) -> None:
    cfg = tts_pb2.SynthesisConfig(voice="piper:nobody")
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        _ = [c async for c in piper.Synthesize(tts_pb2.SynthesizeRequest(config=cfg, text="Hi."))]
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert (exc.value.details() or "").startswith("config.voice")


def test_config_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "v.onnx.json"
    bad.write_text(json.dumps({"audio": {"sample_rate": 22050}, "phoneme_id_map": {"_": [0]}}))
    with pytest.raises(PiperVoiceError, match=r"v\.onnx\.json"):
        PiperVoiceConfig.from_json(bad)
    bad.write_text("{not json")
    with pytest.raises(PiperVoiceError, match=r"v\.onnx\.json"):
        PiperVoiceConfig.from_json(bad)


def test_phoneme_ids_with_phoneme_map_and_missing_symbols() -> None:
    cfg = PiperVoiceConfig(sample_rate=SR, espeak_voice="en-us", phoneme_id_map=ID_MAP, phoneme_map={"g": ["k"]})
    ids, missing = cfg.phoneme_ids("ga☃")
    assert ids == [1, 0, ID_MAP["k"][0], 0, ID_MAP["a"][0], 0, 2]
    assert missing == ["☃"]


async def test_piper_runs_on_the_shared_session_factory_and_reports_its_provider(tmp_path: Path) -> None:
    write_voice(tmp_path, "test-voice")
    cfg = default_config(piper=PiperConfig(voices_dir=str(tmp_path), fade_ms=0.0))
    telemetry = Telemetry("tts")
    service = create_service(cfg, telemetry)
    async with serve(service):
        labels = {"service": "tts", "kind": "execution_provider", "name": "piper/CPUExecutionProvider"}
        assert telemetry.metrics.registry.get_sample_value("talkmesh_backend_info", labels) == 1


async def test_piper_pinned_provider_that_cannot_load_stops_start_up_naming_the_file(tmp_path: Path) -> None:
    import dataclasses

    from talkmesh.common.onnx import ExecutionConfig

    write_voice(tmp_path, "test-voice")
    cfg = dataclasses.replace(
        default_config(piper=PiperConfig(voices_dir=str(tmp_path))), execution=ExecutionConfig(providers=["cuda"])
    )
    with pytest.raises(PiperVoiceError, match=r"test-voice\.onnx\): execution\.providers \['CUDAExecutionProvider'\]"):
        async with serve(create_service(cfg, Telemetry("tts"))):
            pass
