"""Shared helpers of the model export tools: ONNX export with a dynamic batch axis, FP16 variants."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
import torch

OPSET = 17


def export_onnx(
    model: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    metadata: dict[str, str] | None = None,
) -> Path:
    """Exports ``model`` (eval mode) with axis 0 of every input and output dynamic ("batch")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    if metadata:
        proto = onnx.load(str(path))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return path


def fp16_variant_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.fp16.onnx`` (what the renderer loads on CUDA/TensorRT with fp16 on)."""
    return path.with_name(path.stem + ".fp16" + path.suffix)


def write_fp16_variant(path: Path) -> Path:
    """Writes the FP16 copy of ``path`` with float32 inputs and outputs kept (casts inside)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    half = convert_float_to_float16(model, keep_io_types=True)
    out = fp16_variant_path(path)
    onnx.save(half, str(out))
    return out
