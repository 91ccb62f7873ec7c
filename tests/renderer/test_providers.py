"""Execution provider selection (pure logic for every combination), model signature checks, I/O binding.

Only the CPU provider exists on the test machine: the TensorRT and CUDA branches are tested through
the selection logic and a fake session factory that behaves like ONNX Runtime does when a GPU
provider fails (raising, or silently running on CPU).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from services.renderer.backends.onnx_models import (
    CPU,
    CUDA,
    TENSORRT,
    ModelError,
    OnnxModel,
    ProviderPlan,
    Signature,
    TensorSpec,
    choose_provider,
    model_variant,
    open_model,
    plan_providers,
    provider_options,
)
from talkmesh.common.onnx import ExecutionConfig

ALL = [TENSORRT, CUDA, CPU]
OTHERS = ["AzureExecutionProvider", "OpenVINOExecutionProvider"]


def subsets(items: list[str]) -> list[list[str]]:
    return [list(c) for n in range(len(items) + 1) for c in itertools.combinations(items, n)]


@pytest.mark.parametrize("available", subsets(ALL), ids=lambda a: "+".join(p[:4] for p in a) or "none")
@pytest.mark.parametrize("fp16", [True, False])
def test_automatic_plan_for_every_combination(available: list[str], fp16: bool):
    plans = plan_providers([*OTHERS[:1], *available], ExecutionConfig(fp16=fp16))
    expected_order = [p for p in ALL if p in available or p == CPU]
    assert [p.provider for p in plans] == expected_order
    for plan in plans:
        assert plan.fp16 == (fp16 and plan.provider != CPU)
        assert plan.chain[0] == plan.provider
        # every GPU plan can still place unsupported nodes on the CPU provider if it exists
        if plan.provider != CPU and CPU in available:
            assert plan.chain[-1] == CPU
        if plan.provider == TENSORRT and CUDA in available:
            assert plan.chain[1] == CUDA
        assert "AzureExecutionProvider" not in plan.chain


@pytest.mark.parametrize("available", subsets(ALL), ids=lambda a: "+".join(p[:4] for p in a) or "none")
def test_probe_failures_fall_through_the_plan_for_every_combination(available: list[str]):
    plans = plan_providers(available, ExecutionConfig())
    order = [p.provider for p in plans]
    for failing in subsets(order):
        probes: dict[str, str | None] = {p: ("boom" if p in failing else None) for p in order}
        working = [p for p in order if p not in failing]
        if not working:
            with pytest.raises(ModelError, match="no execution provider could load the model"):
                choose_provider(plans, probes)
            continue
        choice = choose_provider(plans, probes)
        assert choice.provider == working[0]
        assert [p for p, _ in choice.fallbacks] == order[: order.index(working[0])]


def test_tensorrt_failure_falls_back_to_cuda_then_cpu():
    plans = plan_providers(ALL, ExecutionConfig())
    first = choose_provider(plans, {})
    assert first.provider == TENSORRT and first.plan.fp16 and first.plan.chain == (TENSORRT, CUDA, CPU)
    second = choose_provider(plans, {TENSORRT: "libnvinfer.so.10: cannot open shared object file"})
    assert second.provider == CUDA and second.plan.fp16 and second.plan.chain == (CUDA, CPU)
    assert second.fallbacks == ((TENSORRT, "libnvinfer.so.10: cannot open shared object file"),)
    third = choose_provider(plans, {TENSORRT: "x", CUDA: "CUDA driver too old"})
    assert third.provider == CPU and not third.plan.fp16 and third.plan.chain == (CPU,)
    assert [p for p, _ in third.fallbacks] == [TENSORRT, CUDA]


def test_configured_providers_override_order_and_drop_unavailable():
    plans = plan_providers(ALL, ExecutionConfig(providers=["cuda", "CPUExecutionProvider"]))
    assert [p.provider for p in plans] == [CUDA, CPU]
    pinned = plan_providers([CUDA, CPU], ExecutionConfig(providers=["tensorrt", "cuda"]))
    assert [p.provider for p in pinned] == [CUDA]  # no implicit CPU when pinned
    assert pinned[0].chain == (CUDA, CPU)
    with pytest.raises(ModelError, match=r"execution.providers \['TensorrtExecutionProvider'\]: none is in"):
        plan_providers([CPU], ExecutionConfig(providers=["trt"]))


def test_provider_options_tensorrt_fp16_engine_cache_and_batch_profile(tmp_path: Path):
    cfg = ExecutionConfig(trt_cache_dir=str(tmp_path / "trt"))
    plan = ProviderPlan(TENSORRT, True, (TENSORRT, CUDA, CPU))
    opts = dict(provider_options(plan, cfg, 16, {"mel": (1, 80, 16), "face": (6, 96, 96)}))
    trt = opts[TENSORRT]
    assert trt["trt_fp16_enable"] is True and trt["trt_engine_cache_enable"] is True
    assert trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert trt["trt_profile_min_shapes"] == "mel:1x1x80x16,face:1x6x96x96"
    assert trt["trt_profile_max_shapes"] == "mel:16x1x80x16,face:16x6x96x96"
    assert opts[CUDA]["device_id"] == 0 and opts[CPU] == {}


def test_fp16_variant_is_used_on_cuda_only(tmp_path: Path):
    model = tmp_path / "m.onnx"
    half = tmp_path / "m.fp16.onnx"
    model.touch()
    cuda16 = ProviderPlan(CUDA, True, (CUDA, CPU))
    assert model_variant(model, cuda16) == model  # no variant written
    half.touch()
    assert model_variant(model, cuda16) == half
    assert model_variant(model, ProviderPlan(CUDA, False, (CUDA, CPU))) == model
    assert model_variant(model, ProviderPlan(TENSORRT, True, (TENSORRT, CPU))) == model
    assert model_variant(model, ProviderPlan(CPU, False, (CPU,))) == model


# -- real sessions (CPU) ---------------------------------------------------------------------------

EXPECTED = Signature(
    inputs=(TensorSpec("x", (None, 2, 3)),),
    outputs=(TensorSpec("y", (None, 2, 3)),),
)


def write_model(path: Path, in_name: str = "x", shape: list[Any] | None = None) -> Path:
    """A tiny ``y = 2 * x`` model."""
    dims: list[str | int | None] = list(shape) if shape is not None else ["batch", 2, 3]
    x = helper.make_tensor_value_info(in_name, TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", [in_name, "two"], ["y"])], "g", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_open_model_on_cpu_and_run(tmp_path: Path):
    m = open_model("toy", write_model(tmp_path / "toy.onnx"), EXPECTED, ExecutionConfig())
    assert m.provider == CPU and not m.use_io_binding
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    np.testing.assert_array_equal(m.run({"x": x})[0], 2 * x)


def test_io_binding_path_gives_the_same_result(tmp_path: Path):
    m = open_model("toy", write_model(tmp_path / "toy.onnx"), EXPECTED, ExecutionConfig())
    bound = OnnxModel(m.name, m.session, m.signature, m.choice, m.path, use_io_binding=True, binding_device="cpu")
    x = np.random.default_rng(0).standard_normal((3, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(bound.run({"x": x})[0], m.run({"x": x})[0])


@pytest.mark.parametrize(
    ("in_name", "shape", "found"),
    [
        ("input", ["batch", 2, 3], "input[B,2,3] float"),
        ("x", ["batch", 2, 4], "x[B,2,4] float"),
        ("x", ["batch", 2], "x[B,2] float"),
    ],
)
def test_wrong_model_is_rejected_naming_both_signatures(tmp_path: Path, in_name: str, shape: list[Any], found: str):
    path = write_model(tmp_path / "bad.onnx", in_name, shape)
    with pytest.raises(ModelError) as err:
        open_model("toy", path, EXPECTED, ExecutionConfig())
    msg = str(err.value)
    assert "expected inputs (x[B,2,3] float) -> outputs (y[B,2,3] float)" in msg
    assert f"found inputs ({found})" in msg


def test_missing_file_is_reported(tmp_path: Path):
    with pytest.raises(ModelError, match=r"nope\.onnx\): model file does not exist"):
        open_model("toy", tmp_path / "nope.onnx", EXPECTED, ExecutionConfig())
    with pytest.raises(ModelError, match=r"is a directory, not a model file"):
        open_model("toy", tmp_path, EXPECTED, ExecutionConfig())
    zipped = tmp_path / "given.onnx"
    zipped.write_bytes(b"PK\x03\x04" + bytes(100))  # what torch.save writes: a zip
    with pytest.raises(ModelError, match=r"a PyTorch checkpoint, not ONNX: convert it"):
        open_model("toy", zipped, EXPECTED, ExecutionConfig())
    legacy = tmp_path / "old.onnx"  # torch.save before PyTorch 1.6 (the released Wav2Lip files): a pickle
    legacy.write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19." + bytes(100))
    with pytest.raises(ModelError, match=r"old\.onnx\): a PyTorch checkpoint, not ONNX: convert it"):
        open_model("toy", legacy, EXPECTED, ExecutionConfig())


def test_a_cut_short_external_data_file_is_named_before_onnx_runtime_loads_it(tmp_path: Path):
    """ONNX Runtime's own message (its source file and C++ signature first) was cut at 300
    characters before its reason; the renderer now says which file is short, and by how much."""
    from tests.common.test_gpu import model_with_weights

    path = model_with_weights(tmp_path / "ext.onnx", 1000, external=True)
    with (tmp_path / "ext.onnx.data").open("r+b") as f:
        f.truncate(3000)
    with pytest.raises(ModelError) as err:
        open_model("toy", path, Signature((TensorSpec("x", (1000,)),), (TensorSpec("y", (1000,)),)), ExecutionConfig())
    assert str(err.value) == (
        f"toy ({path}): model file {path} keeps its weights in ext.onnx.data beside it, which is cut short "
        "(3000 bytes; its graph reads 4000): copy the model's whole directory again"
    )


class FakeSession:
    """Stands in for an InferenceSession: reports which providers took the model."""

    def __init__(self, real: Any, active: list[str]) -> None:
        self.real, self.active = real, active

    def get_providers(self) -> list[str]:
        return self.active

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_open_model_probes_tensorrt_then_cuda_then_cpu(tmp_path: Path):
    import onnxruntime as ort

    path = write_model(tmp_path / "toy.onnx")
    (tmp_path / "toy.fp16.onnx").write_bytes(path.read_bytes())
    calls: list[tuple[str, list[str]]] = []

    def factory(file: str, providers: list[tuple[str, dict[str, Any]]], options: Any) -> Any:
        names = [p for p, _ in providers]
        calls.append((Path(file).name, names))
        if names[0] == TENSORRT:
            raise RuntimeError("TensorRT EP could not be loaded")
        real = ort.InferenceSession(file, sess_options=options, providers=[CPU])
        # ORT's behaviour when the CUDA EP fails to initialise: the session silently runs on CPU.
        return FakeSession(real, [CPU])

    cfg = ExecutionConfig(trt_cache_dir=str(tmp_path / "trt"))
    m = open_model("toy", path, EXPECTED, cfg, available=ALL, factory=factory, check=lambda p: None)
    assert [c[1][0] for c in calls] == [TENSORRT, CUDA, CPU]
    assert calls[1][0] == "toy.fp16.onnx" and calls[2][0] == "toy.onnx"
    assert m.provider == CPU and [p for p, _ in m.choice.fallbacks] == [TENSORRT, CUDA]
    assert "the session fell back to ['CPUExecutionProvider']" in m.choice.fallbacks[1][1]
    assert (tmp_path / "trt").is_dir()  # engine cache directory prepared for TensorRT


def test_open_model_keeps_a_working_cuda_session_with_io_binding(tmp_path: Path):
    import onnxruntime as ort

    path = write_model(tmp_path / "toy.onnx")

    def factory(file: str, providers: list[tuple[str, dict[str, Any]]], options: Any) -> Any:
        real = ort.InferenceSession(file, sess_options=options, providers=[CPU])
        return FakeSession(real, [providers[0][0], CPU])

    m = open_model(
        "toy", path, EXPECTED, ExecutionConfig(), available=[CUDA, CPU], factory=factory, check=lambda p: None
    )
    assert m.provider == CUDA and m.use_io_binding and m.choice.plan.fp16
    assert m.choice.fallbacks == ()


def test_a_pinned_renderer_without_gpu_providers_fails_at_start_up(tmp_path: Path):
    """The GPU overlays pin tensorrt,cuda: on a CPU-only ONNX Runtime the backend (and so the
    renderer's start-up, before it reports Ready) fails in one line naming the file."""
    from services.renderer.backends.wav2lip import Wav2LipBackend
    from services.renderer.config import ModelConfig, RendererConfig
    from talkmesh.common.telemetry import Telemetry

    path = write_model(tmp_path / "wav2lip.onnx")
    cfg = RendererConfig(wav2lip=ModelConfig(path=str(path)), execution=ExecutionConfig(providers=["tensorrt", "cuda"]))
    with pytest.raises(ModelError) as err:
        Wav2LipBackend(cfg, Telemetry("renderer"), available=[CPU])
    msg = str(err.value)
    assert "\n" not in msg
    pinned = "execution.providers ['TensorrtExecutionProvider', 'CUDAExecutionProvider']"
    assert msg.startswith(f"wav2lip ({path}): {pinned}: none is in this ONNX Runtime build")


def test_a_model_exported_with_a_fixed_batch_runs_any_batch_that_many_at_a_time(tmp_path: Path, caplog):
    """An export without a dynamic batch axis (torch.onnx.export's default) is taken: the model
    runs its fixed batch at a time, the last group padded, and the load says how to batch freely."""
    path = write_model(tmp_path / "fixed.onnx", "x", [1, 2, 3])
    with caplog.at_level("WARNING"):
        m = open_model("toy", path, EXPECTED, ExecutionConfig())
    assert m.fixed_batch == 1 and "batch axis is fixed at 1" in caplog.text
    x = np.random.default_rng(1).standard_normal((5, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(m.run({"x": x})[0], 2 * x)
    fixed3 = open_model("toy", write_model(tmp_path / "fixed3.onnx", "x", [3, 2, 3]), EXPECTED, ExecutionConfig())
    assert fixed3.fixed_batch == 3
    np.testing.assert_array_equal(fixed3.run({"x": x})[0], 2 * x)  # 3 + 2 (padded to 3, trimmed)
