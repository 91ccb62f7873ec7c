"""`talkmesh doctor`: its embedded models are valid ONNX, it reports this CPU-only machine honestly,
and its TensorRT cache check tells a reused engine from a rebuilt one (fake session boundary)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from talkmesh import doctor
from talkmesh.cli import main
from talkmesh.common.onnx import CPU, TENSORRT, cuda_driver_version


def test_embedded_models_are_valid_onnx_and_compute_what_they_say(tmp_path: Path) -> None:
    import onnxruntime as ort

    for name, data in (("tiny", doctor.tiny_model()), ("gen", doctor.embedded_generator())):
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model, full_check=True)
        assert model.ir_version == 8 and model.opset_import[0].version == 17
        (tmp_path / f"{name}.onnx").write_bytes(data)
    tiny = ort.InferenceSession(str(tmp_path / "tiny.onnx"), providers=[CPU])
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.testing.assert_array_equal(tiny.run(None, {"x": x})[0], 2 * x)
    gen = ort.InferenceSession(str(tmp_path / "gen.onnx"), providers=[CPU])
    [out] = gen.run(None, {"face": np.random.default_rng(0).random((3, 6, 96, 96), np.float32)})
    assert out.shape == (3, 3, 96, 96) and 0.0 < float(out.min()) and float(out.max()) < 1.0
    assert float(out.std()) > 1e-3  # random weights: not a constant image


def test_negative_int64_is_encoded_as_protobuf_does() -> None:
    from onnx import helper

    ours = doctor._attr_ints("pads", [-1, 2])
    theirs = helper.make_attribute("pads", [-1, 2]).SerializeToString()
    assert onnx.AttributeProto.FromString(ours) == onnx.AttributeProto.FromString(theirs)


@pytest.fixture(scope="module")
def cpu_only() -> None:
    if cuda_driver_version() is not None:
        pytest.skip("an NVIDIA driver is present: this test checks the CPU-only report")


def test_doctor_on_this_cpu_only_machine_says_so(cpu_only: None, tmp_path: Path, capsys) -> None:
    model = tmp_path / "tiny.onnx"
    model.write_bytes(doctor.tiny_model())
    assert main(["doctor", "--json", "--model", str(model), "--seconds", "0.05"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"][0].startswith("CPU only: no NVIDIA GPU or driver found here")
    assert report["gpu"]["driver_cuda"] is None and report["gpu"]["gpus"] == []
    assert report["gpu"]["driver_floor"] == {"inference": 535, "nvenc": 570}
    assert report["onnxruntime"]["session_provider"] == CPU and report["onnxruntime"]["session_result_ok"]
    assert report["tensorrt"]["tried"] is False
    assert report["nvenc"]["opens"] is False and report["nvenc"]["detail"]
    assert any(line.startswith("h264_nvenc does not open") for line in report["summary"])
    [m] = report["models"]
    assert m["name"] == "tiny.onnx" and m["provider"] == CPU
    assert set(m["fps"]) == {"1", "8", "32"} and all(v > 0 for v in m["fps"].values())
    assert report["encoder"]["encoder"] == "libx264"
    assert report["encoder"]["fps"]["512x512"] > 0 and report["encoder"]["fps"]["1280x720"] > 0


def test_text_output_leads_with_the_summary(cpu_only: None, tmp_path: Path, capsys) -> None:
    model = tmp_path / "tiny.onnx"
    model.write_bytes(doctor.tiny_model())
    assert main(["doctor", "--model", str(model), "--seconds", "0.02"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "talkmesh doctor" and lines[2].startswith("  CPU only:")
    assert "  onnxruntime.session_provider: CPUExecutionProvider" in lines


def test_without_configured_models_the_embedded_one_is_measured(tmp_path: Path) -> None:
    info = {"installed": True}
    [m] = doctor.models_section(tmp_path, info, [], seconds=0.01)
    assert m["name"] == doctor.EMBEDDED_NAME and m["fps"]["1"] > 0


class FakeSession:
    def __init__(self, cache: Path, rebuild: bool) -> None:
        self.cache, self.rebuild = cache, rebuild
        self.provider = TENSORRT

    def run(self, feeds: dict[str, Any]) -> list[np.ndarray]:
        engine = self.cache / "TensorrtExecutionProvider_TRTKernel_graph_0.engine"
        if self.rebuild or not engine.exists():
            self.cache.mkdir(parents=True, exist_ok=True)
            engine.write_bytes(b"engine")
            import os

            os.utime(engine, ns=(engine.stat().st_mtime_ns + 10**9,) * 2)
        return [np.zeros(1)]


@pytest.mark.parametrize("rebuild", [False, True])
def test_tensorrt_engine_reuse_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rebuild: bool) -> None:
    from talkmesh.common import onnx as tonnx

    def fake_open(path: Path, config: Any, **kwargs: Any) -> FakeSession:
        assert config.providers == ["tensorrt"]  # pinned: a CUDA fallback would not count
        return FakeSession(Path(config.trt_cache_dir), rebuild)

    monkeypatch.setattr(tonnx, "open_session", fake_open)
    info = {"installed": True, "available": [TENSORRT, CPU], "preflight": {TENSORRT: "loads"}}
    out = doctor.tensorrt_section(tmp_path, info)
    assert out["tried"] and out["engine_built"] and out["engine_files"] == 1
    assert out["engine_reused"] is (not rebuild)
    line = next(s for s in doctor.summarize(doctor.Report(tensorrt=out)) if s.startswith("TensorRT"))
    assert ("reused from the cache: NO" in line) is rebuild


def test_tensorrt_not_tried_says_why() -> None:
    reason = "missing library libnvinfer.so.10"
    info = {"installed": True, "available": [TENSORRT, CPU], "preflight": {TENSORRT: reason}}
    assert doctor.tensorrt_section(Path("/nonexistent"), info) == {
        "tried": False, "detail": "TensorRT cannot load: missing library libnvinfer.so.10",
    }  # fmt: skip


def test_gpu_summary_flags_a_driver_below_the_nvenc_floor() -> None:
    r = doctor.Report(
        gpu={"driver_cuda": "12.4", "driver_version": "550.54.15", "gpus": [{"name": "NVIDIA L4"}],
             "driver_floor": {"inference": 535, "nvenc": 570}, "driver_ok": {"inference": True, "nvenc": False}},
        onnxruntime={"installed": False}, tensorrt={"tried": False, "detail": "x"},
        nvenc={"opens": False, "detail": "y"},
    )  # fmt: skip
    lines = doctor.summarize(r)
    assert lines[0] == "GPU: NVIDIA L4; driver 550.54.15 (CUDA 12.4)."
    assert "driver below the nvenc floor (>= 570): see docs/DEPLOY.md" in lines


def test_nvidia_smi_output_is_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    class Done:
        stdout = "NVIDIA L4, 570.124.06, 23034, 22800, 8.9, 00000000:00:03.0\n"

    monkeypatch.setattr(doctor.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    gpus = doctor.nvidia_smi(run=lambda *a, **k: Done())
    assert gpus == [{"name": "NVIDIA L4", "driver_version": "570.124.06", "memory_total": "23034",
                     "memory_free": "22800", "compute_cap": "8.9", "pci_bus_id": "00000000:00:03.0"}]  # fmt: skip


def test_configured_model_files_come_from_the_services_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "w.onnx"
    model.write_bytes(doctor.tiny_model())
    monkeypatch.setenv("TALKMESH_RENDERER__WAV2LIP__PATH", str(model))
    monkeypatch.setenv("TALKMESH_RENDERER__EXECUTION__TRT_CACHE_DIR", str(tmp_path / "engines"))
    assert doctor.ModelConfigs.load().models() == [("wav2lip", model)]
    assert doctor.ModelConfigs.load().execution.trt_cache_dir == str(tmp_path / "engines")


def test_a_configured_model_the_renderer_would_refuse_is_reported_not_measured(tmp_path: Path) -> None:
    """Doctor's first check on a node says what the renderer will say at start: the embedded
    generator is not a Wav2Lip model (its input is `face` alone), so as `wav2lip` it is refused."""
    path = tmp_path / "gen.onnx"
    path.write_bytes(doctor.embedded_generator())
    m = doctor.measure_model("wav2lip", path, batches=(1,), seconds=0.01)
    assert "wrong model signature" in m["error"] and m["fps"] == {}, m
    m = doctor.measure_model("whisper encoder", path, batches=(1,), seconds=0.01)  # audio_features' check
    assert "needs input 'input_features' and output 'hidden_states'" in m["error"] and m["fps"] == {}, m
    assert doctor.measure_model("gen.onnx", path, batches=(1,), seconds=0.01)["fps"]["1"] > 0  # --model: unchecked


def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Doctor's model checks alone: no GPU probing, TensorRT or encoder timing (they are tested above)."""
    monkeypatch.setattr(doctor, "gpu_section", lambda: {})
    monkeypatch.setattr(doctor, "tensorrt_section", lambda tmp, info: {"tried": False, "detail": "skipped"})
    monkeypatch.setattr(doctor, "nvenc_section", lambda: {"opens": False, "detail": "skipped"})
    monkeypatch.setattr(doctor, "encoder_section", lambda opens, seconds: {})
    monkeypatch.delenv("TALKMESH_SERVICE", raising=False)


def test_a_configured_model_path_that_does_not_exist_fails_doctor(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """Not the embedded model timed in its place, exit code 0: the missing file, exit code 1."""
    _quick(monkeypatch)
    monkeypatch.setenv("TALKMESH_RENDERER__WAV2LIP__PATH", "/tmp/nope-doctor.onnx")
    assert main(["doctor", "--json", "--seconds", "0.01"]) == 1
    report = json.loads(capsys.readouterr().out)
    [m] = report["models"]
    assert m["name"] == "wav2lip" and "/tmp/nope-doctor.onnx): model file does not exist" in m["error"]
    assert report["failures"] == [f"wav2lip: {m['error']}"]


def test_a_configured_model_the_service_refuses_fails_doctor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """A Wav2Lip file as the Whisper encoder: audio_features refuses it at start, so doctor does
    too (the same check), and says so in the exit code and the text."""
    _quick(monkeypatch)
    path = tmp_path / "gen.onnx"
    path.write_bytes(doctor.embedded_generator())
    monkeypatch.setenv("TALKMESH_AUDIO_FEATURES__WHISPER_ENCODER__PATH", str(path))
    assert main(["doctor", "--seconds", "0.01"]) == 1
    text = capsys.readouterr().out
    assert "FAILED: 1 check(s):" in text
    assert f"  whisper encoder: whisper_encoder.path: {path} needs input 'input_features'" in text


def test_a_whisper_encoder_of_another_musetalk_release_fails_doctor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """audio_features refuses an encoder exported for MuseTalk 1.0 when musetalk.version is 1.5
    (the default); doctor passed it (it checked the shapes only)."""
    from tests.audio_features.test_backends import tiny_encoder

    _quick(monkeypatch)
    path = tiny_encoder(tmp_path / "enc.onnx")
    model = onnx.load(str(path))
    for key, value in {"talkmesh.musetalk_version": "1.0", "talkmesh.final_layer_norm": "false"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    monkeypatch.setenv("TALKMESH_AUDIO_FEATURES__WHISPER_ENCODER__PATH", str(path))
    assert main(["doctor", "--seconds", "0.01"]) == 1
    assert "  whisper encoder: musetalk.version 1.5: the Whisper encoder enc.onnx was exported for MuseTalk 1.0" in (
        capsys.readouterr().out
    )
    monkeypatch.setenv("TALKMESH_AUDIO_FEATURES__MUSETALK__VERSION", "1.0")
    assert main(["doctor", "--seconds", "0.01"]) == 0  # the release it was exported for


def test_doctor_config_is_placed_by_its_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`doctor --config my-renderer.yaml` reads it as the renderer's without TALKMESH_SERVICE; a
    file it cannot place is refused with what to set."""
    from talkmesh.cli import CliError

    monkeypatch.delenv("TALKMESH_SERVICE", raising=False)
    renderer = tmp_path / "my-renderer.yaml"
    renderer.write_text(f"wav2lip:\n  path: {tmp_path / 'w.onnx'}\n")
    assert doctor.ModelConfigs.load(renderer).models() == [("wav2lip", tmp_path / "w.onnx")]
    features = tmp_path / "features.yaml"
    features.write_text(f"musetalk:\n  version: '1.0'\nwhisper_encoder:\n  path: {tmp_path / 'e.onnx'}\n")
    assert doctor.ModelConfigs.load(features).models() == [("whisper encoder", tmp_path / "e.onnx")]
    both = tmp_path / "both.yaml"
    both.write_text("execution:\n  providers: [cpu]\n")
    with pytest.raises(CliError, match=r"fit both .* TALKMESH_SERVICE=renderer or TALKMESH_SERVICE=audio_features"):
        doctor.ModelConfigs.load(both).models()
    monkeypatch.setenv("TALKMESH_SERVICE", "audio_features")
    assert doctor.ModelConfigs.load(both).models() == []
    neither = tmp_path / "gateway.yaml"
    neither.write_text("auth:\n  api_keys_file: k\n")
    monkeypatch.delenv("TALKMESH_SERVICE")
    with pytest.raises(CliError, match=r"not a renderer or audio_features config .*unknown key.*auth"):
        doctor.ModelConfigs.load(neither).models()
