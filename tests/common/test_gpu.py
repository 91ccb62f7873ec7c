"""GPU memory budget (talkmesh.common.gpu): weights incl. external data, gpu.share, the arena."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from talkmesh.common.config import ConfigError
from talkmesh.common.gpu import (
    CUDA_CONTEXT_BYTES,
    GiB,
    GpuConfig,
    GpuMemory,
    MiB,
    arena_limit,
    batch_for_budget,
    external_data_files,
    model_weight_bytes,
    plan_gpu,
)


def model_with_weights(path: Path, n: int, *, external: bool) -> Path:
    """A real ONNX model (y = x + w), its weights inline or in ``<name>.data`` beside it, as
    tools/onnx_export.py writes a model over 2 GB."""
    w = numpy_helper.from_array(np.ones(n, np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])
    graph = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=0)  # fmt: skip
    else:
        onnx.save_model(model, str(path))
    return path


def test_weights_count_external_data_once(tmp_path: Path) -> None:
    inline = model_with_weights(tmp_path / "inline.onnx", 10_000, external=False)
    ext = model_with_weights(tmp_path / "ext.onnx", 250_000, external=True)
    assert external_data_files(inline) == []
    assert external_data_files(ext) == [(tmp_path / "ext.onnx.data").resolve()]
    data = (tmp_path / "ext.onnx.data").stat().st_size
    assert data == 250_000 * 4
    assert model_weight_bytes([ext]) == ext.stat().st_size + data
    assert model_weight_bytes([ext, ext, inline]) == ext.stat().st_size + data + inline.stat().st_size
    import onnxruntime as ort  # the file really is a model with external data

    assert ort.InferenceSession(str(ext), providers=["CPUExecutionProvider"]).get_inputs()[0].name == "x"


def test_external_data_outside_the_model_directory_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "secret00").write_bytes(b"x" * 100)
    d = tmp_path / "models"
    d.mkdir()
    path = model_with_weights(d / "m.onnx", 10, external=True)
    assert external_data_files(path) == [(d / "m.onnx.data").resolve()]
    path.write_bytes(path.read_bytes().replace(b"m.onnx.data", b"../secret00"))  # same length
    assert external_data_files(path) == []  # a location outside the model's directory is not followed


def test_arena_limit_is_the_share_minus_the_cuda_context() -> None:
    assert arena_limit(16 * GiB, 1.0) == 16 * GiB - CUDA_CONTEXT_BYTES
    assert arena_limit(24 * GiB, 0.25) == 6 * GiB - CUDA_CONTEXT_BYTES
    assert arena_limit(1 * GiB, 0.25) == 256 * MiB  # never below 256 MiB


def test_batch_counts_weights_share_and_arena() -> None:
    per_frame = 256 * MiB  # MuseTalk
    weights = 3700 * MiB  # UNet + VAE files (FP32): 1850 MiB at FP16
    full = batch_for_budget(24 * GiB, weights, per_frame, 64)
    # 24 GiB * 0.9 - 512 MiB - 1850 MiB = 19756 MiB -> 77 frames -> capped at 64
    assert full == 64
    quarter = batch_for_budget(6 * GiB, weights, per_frame, 64)
    # 6 GiB * 0.9 - 512 - 1850 = 3167 MiB -> 12 frames -> multiple of 8
    assert quarter == 8
    assert batch_for_budget(6 * GiB, weights, per_frame, 64, fp16=False) == 5  # FP32 weights: 1317 MiB left
    assert batch_for_budget(6 * GiB, weights, per_frame, 64, arena_extend_strategy="kNextPowerOfTwo") == 6
    # neighbours already use the card: what is free at start-up bounds the budget
    assert batch_for_budget(24 * GiB, weights, per_frame, 64, free_bytes=4 * GiB) == 5
    assert batch_for_budget(2 * GiB, weights, per_frame, 64) == 1  # never below 1


def test_four_pods_on_a_card_each_get_a_quarter() -> None:
    card = GpuMemory(total=16 * GiB, free=15 * GiB)
    one = plan_gpu(GpuConfig(share=1.0), weights=3700 * MiB, per_frame_bytes=256 * MiB, cap=64, memory=card)
    four = plan_gpu(GpuConfig(share=0.25), weights=3700 * MiB, per_frame_bytes=256 * MiB, cap=64, memory=card)
    assert one.gpu_mem_limit == 16 * GiB - CUDA_CONTEXT_BYTES and one.max_batch == 40
    assert four.gpu_mem_limit == 4 * GiB - CUDA_CONTEXT_BYTES and four.max_batch == 5
    # four pods' budgets fit the card, weights and context included
    assert 4 * four.budget <= card.total


def test_configured_card_size_and_limit_win() -> None:
    plan = plan_gpu(GpuConfig(share=0.5, memory_mb=48 * 1024), weights=0, per_frame_bytes=256 * MiB, cap=64,
                    configured_limit_mb=4096, memory=None)  # fmt: skip
    assert plan.gpu_mem_limit == 4 * GiB
    assert plan.budget == 4 * GiB + CUDA_CONTEXT_BYTES
    unknown = plan_gpu(GpuConfig(), weights=0, per_frame_bytes=MiB, cap=16, memory=None)
    assert unknown.gpu_mem_limit == 0 and unknown.max_batch == 16 and "unknown" in unknown.describe()


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_share_must_be_a_fraction(share: float) -> None:
    with pytest.raises(ConfigError, match="share"):
        GpuConfig(share=share).validate()


def test_renderer_reads_gpu_share_from_the_environment() -> None:
    from services.renderer.config import RendererConfig
    from talkmesh.common.config import load_config

    env = {"TALKMESH_RENDERER__GPU__SHARE": "0.25"}
    cfg = load_config(RendererConfig, None, env_prefix="TALKMESH_RENDERER", env=env)
    assert cfg.gpu.share == 0.25


def test_the_deploy_docs_table_is_what_the_code_computes() -> None:
    """docs/DEPLOY.md "GPU memory": MuseTalk's arena limit and batch per card size and share."""
    import re

    from services.renderer.backends.musetalk import MuseTalkBackend

    text = (Path(__file__).resolve().parents[2] / "docs" / "DEPLOY.md").read_text()
    rows = {int(m.group(1)): m.group(0) for m in re.finditer(r"^\| (\d+) GB .*$", text, re.M)}
    assert set(rows) == {16, 24, 48, 80}
    for card, row in rows.items():
        cells = row.split("|")[2:-1]
        for share, cell, cap in zip((1.0, 0.8, 0.2), cells, (64, 64, 16), strict=True):
            if cell.strip() == "—":
                continue
            plan = plan_gpu(GpuConfig(share=share), weights=3700 * MiB, per_frame_bytes=MuseTalkBackend.bytes_per_frame,
                            cap=cap, memory=GpuMemory(card * GiB, card * GiB))  # fmt: skip
            assert f"arena {plan.gpu_mem_limit / GiB:.1f} GiB, batch {plan.max_batch}" in cell, (card, share, cell)
