"""The shared ONNX Runtime session factory (talkmesh.common.onnx), with a fake onnxruntime boundary.

No GPU exists on the test machine: the GPU providers are exercised by monkeypatching what ONNX
Runtime would report (available providers, the session class, the providers a session got) and what
the dynamic loader finds (libcuda and the provider libraries), and real CPU sessions run through the
renderer, audio_features and Piper TTS.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from talkmesh.common import onnx as tonnx
from talkmesh.common.config import ConfigError, load_config
from talkmesh.common.onnx import (
    CPU,
    CUDA,
    PROVIDER_LIBRARIES,
    TENSORRT,
    ExecutionConfig,
    ModelError,
    open_session,
    provider_preflight,
)

ALL = [TENSORRT, CUDA, CPU]


def double_model(path: Path) -> Path:
    """``y = 2 * x``, x and y ``[batch, 2, 3]`` float."""
    dims: list[str | int] = ["batch", 2, 3]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "g", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


class FakeSession:
    """An InferenceSession as ONNX Runtime returns it: ``active`` is what get_providers() reports
    (a GPU provider that failed to initialise silently leaves only the CPU provider)."""

    def __init__(self, file: str, providers: list[tuple[str, dict[str, Any]]], options: Any, active: list[str]):
        import onnxruntime as ort

        self.real = ort.InferenceSession(file, sess_options=options, providers=[CPU])
        self.providers = providers
        self.active = active

    def get_providers(self) -> list[str]:
        return self.active

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Factory:
    """Records every session built; ``behaviour[provider]`` is "ok", "cpu" (silent fallback) or "raise"."""

    def __init__(self, **behaviour: str) -> None:
        self.behaviour = behaviour
        self.calls: list[tuple[str, list[tuple[str, dict[str, Any]]]]] = []

    def __call__(self, file: str, providers: list[tuple[str, dict[str, Any]]], options: Any) -> FakeSession:
        self.calls.append((Path(file).name, providers))
        first = providers[0][0]
        how = self.behaviour.get(first, "ok")
        if how == "raise":
            raise RuntimeError(f"{first} could not be created\nsecond line of a C++ trace")
        return FakeSession(file, providers, options, [CPU] if how == "cpu" else [first, CPU])

    @property
    def tried(self) -> list[str]:
        return [p[0][0] for _, p in self.calls]


# -- pre-flight: the dynamic loader, faked --------------------------------------------------------


class FakeLibcuda:
    def __init__(self, version: int) -> None:
        self.version = version

    def cuDriverGetVersion(self, out: Any) -> int:
        out._obj.value = self.version
        return 0


@pytest.fixture
def loader(monkeypatch: pytest.MonkeyPatch):
    """``loader(driver=12080, present={...})``: what ctypes can load, for provider_preflight."""
    provider_preflight.cache_clear()
    monkeypatch.setattr(tonnx, "_preload_pip_libraries", lambda: None)

    def install(driver: int | None, present: set[str]) -> list[str]:
        asked: list[str] = []

        def load(name: str) -> Any:
            asked.append(name)
            if name == "libcuda.so.1":
                return None if driver is None else FakeLibcuda(driver)
            return object() if name in present else None

        monkeypatch.setattr(tonnx, "_load", load)
        return asked

    yield install
    provider_preflight.cache_clear()


def test_preflight_cpu_always_loads(loader) -> None:
    asked = loader(None, set())
    assert provider_preflight(CPU) is None and asked == []


def test_preflight_names_a_missing_driver(loader) -> None:
    loader(None, set())
    assert "no NVIDIA driver (libcuda.so.1 not found" in (provider_preflight(CUDA) or "")


def test_preflight_names_a_driver_too_old(loader) -> None:
    loader(11080, set(PROVIDER_LIBRARIES[TENSORRT]) | set(PROVIDER_LIBRARIES[CUDA]))
    reason = provider_preflight(TENSORRT) or ""
    assert reason.startswith("NVIDIA driver too old: it supports CUDA 11.8, this ONNX Runtime needs CUDA 12")


def test_preflight_names_the_missing_tensorrt_libraries(loader) -> None:
    loader(12080, set(PROVIDER_LIBRARIES[CUDA]))
    assert provider_preflight(TENSORRT) == "missing libraries libnvinfer.so.10, libnvonnxparser.so.10"
    assert provider_preflight(CUDA) is None


# -- planning and probing ---------------------------------------------------------------------------


def test_missing_tensorrt_is_skipped_without_building_a_session(tmp_path: Path, caplog) -> None:
    path = double_model(tmp_path / "m.onnx")
    factory = Factory()
    checked: list[str] = []

    def check(p: str) -> str | None:
        checked.append(p)
        return "missing library libnvinfer.so.10" if p == TENSORRT else None

    cfg = ExecutionConfig(trt_cache_dir=str(tmp_path / "trt"))
    with caplog.at_level(logging.INFO, logger="talkmesh.onnx"):
        s = open_session(path, cfg, name="toy", available=ALL, factory=factory, check=check)
    assert checked == [TENSORRT, CUDA]
    assert factory.tried == [CUDA]  # no TensorRT session was built
    assert s.provider == CUDA and s.use_io_binding
    assert not (tmp_path / "trt").exists()  # nor its engine cache prepared
    [record] = [r for r in caplog.records if r.name == "talkmesh.onnx"]
    assert record.levelno == logging.WARNING
    assert "running on CUDA" in record.message
    assert "TensorRT skipped: missing library libnvinfer.so.10" in record.message


def test_cuda_fallback_to_cpu_is_logged_in_one_line(tmp_path: Path, caplog) -> None:
    path = double_model(tmp_path / "m.onnx")
    factory = Factory(**{CUDA: "cpu"})
    with caplog.at_level(logging.INFO, logger="talkmesh.onnx"):
        s = open_session(
            path, ExecutionConfig(), name="toy", available=[CUDA, CPU], factory=factory, check=lambda p: None
        )
    assert s.provider == CPU and not s.use_io_binding and factory.tried == [CUDA, CPU]
    records = [r for r in caplog.records if r.name == "talkmesh.onnx"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    line = records[0].getMessage()
    assert "\n" not in line
    assert line == (
        f"toy ({path}): running on CPU (fp16=False): CUDA failed: the session fell back to ['CPUExecutionProvider']"
    )


def test_pinned_providers_that_cannot_be_obtained_fail_in_one_line_naming_file_and_reasons(tmp_path: Path) -> None:
    path = double_model(tmp_path / "unet.onnx")
    factory = Factory(**{CUDA: "raise"})

    def check(p: str) -> str | None:
        return "missing library libnvinfer.so.10" if p == TENSORRT else None

    cfg = ExecutionConfig(providers=["tensorrt", "cuda"])
    with pytest.raises(ModelError) as err:
        open_session(path, cfg, name="musetalk unet", available=ALL, factory=factory, check=check)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"musetalk unet ({path}): pinned execution.providers ['tensorrt', 'cuda']: ")
    assert "TensorRT: skipped: missing library libnvinfer.so.10" in msg
    assert "CUDA: failed: RuntimeError: CUDAExecutionProvider could not be created second line" in msg
    assert factory.tried == [CUDA]  # never a CPU session for a pinned GPU deployment


def test_pinned_driver_too_old_names_the_driver(tmp_path: Path, loader) -> None:
    loader(11040, set(PROVIDER_LIBRARIES[CUDA]))
    path = double_model(tmp_path / "m.onnx")
    factory = Factory()
    with pytest.raises(ModelError, match=r"m\.onnx.*CUDA: skipped: NVIDIA driver too old: it supports CUDA 11\.4"):
        open_session(path, ExecutionConfig(providers=["cuda"]), available=[CUDA, CPU], factory=factory)
    assert factory.calls == []


def test_pinned_provider_absent_from_the_runtime_names_the_file(tmp_path: Path) -> None:
    path = double_model(tmp_path / "m.onnx")
    with pytest.raises(ModelError, match=r"m\.onnx: execution\.providers \['CUDAExecutionProvider'\]: none is in"):
        open_session(path, ExecutionConfig(providers=["cuda"]), available=[CPU])


def test_gpu_options_reach_the_session(tmp_path: Path) -> None:
    path = double_model(tmp_path / "m.onnx")
    factory = Factory()
    cfg = ExecutionConfig(
        arena_extend_strategy="kNextPowerOfTwo", cudnn_conv_algo_search="EXHAUSTIVE", device_id=1,
        trt_cache_dir=str(tmp_path / "engines"),
    )  # fmt: skip
    open_session(path, cfg, available=ALL, factory=factory, check=lambda p: None, gpu_mem_limit=3 << 30)
    [(_, providers)] = factory.calls
    opts = dict(providers)
    assert [p for p, _ in providers] == [TENSORRT, CUDA, CPU]
    assert opts[CUDA]["gpu_mem_limit"] == 3 << 30
    assert opts[CUDA]["arena_extend_strategy"] == "kNextPowerOfTwo"
    assert opts[CUDA]["cudnn_conv_algo_search"] == "EXHAUSTIVE" and opts[CUDA]["device_id"] == 1
    assert opts[TENSORRT]["trt_fp16_enable"] is True and opts[TENSORRT]["device_id"] == 1
    assert opts[TENSORRT]["trt_engine_cache_path"] == str(tmp_path / "engines")
    assert (tmp_path / "engines").is_dir()


def test_no_limit_means_no_gpu_mem_limit_option(tmp_path: Path) -> None:
    factory = Factory()
    open_session(double_model(tmp_path / "m.onnx"), ExecutionConfig(), available=[CUDA, CPU], factory=factory,
                 check=lambda p: None)  # fmt: skip
    assert "gpu_mem_limit" not in dict(factory.calls[0][1])[CUDA]


def test_a_model_onnxruntime_rejects_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"broken\.onnx.*ONNX Runtime cannot load broken\.onnx"):
        open_session(bad, ExecutionConfig())


def test_real_cpu_session_runs_with_and_without_io_binding(tmp_path: Path) -> None:
    s = open_session(double_model(tmp_path / "m.onnx"), ExecutionConfig())
    assert s.provider == CPU and s.input_names == ["x"] and s.output_names == ["y"]
    x = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    np.testing.assert_array_equal(s.run({"x": x})[0], 2 * x)
    bound = tonnx.run_bound(s.session, {"x": x}, ["y"], "cpu")
    np.testing.assert_array_equal(bound[0], 2 * x)


def test_config_validation_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="arena_extend_strategy"):
        ExecutionConfig(arena_extend_strategy="kDouble").validate()
    with pytest.raises(ConfigError, match="gpu_mem_limit_mb"):
        ExecutionConfig(gpu_mem_limit_mb=-1).validate()
    from services.audio_features.config import AudioFeaturesConfig

    monkeypatch.setenv("TALKMESH_AUDIO_FEATURES__EXECUTION__PROVIDERS", "cuda,cpu")
    monkeypatch.setenv("TALKMESH_AUDIO_FEATURES__EXECUTION__GPU_MEM_LIMIT_MB", "2048")
    cfg = load_config(AudioFeaturesConfig, None, env_prefix="TALKMESH_AUDIO_FEATURES")
    assert cfg.execution.providers == ["cuda", "cpu"] and cfg.execution.gpu_mem_limit_mb == 2048
