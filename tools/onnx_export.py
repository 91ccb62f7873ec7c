"""Shared helpers of the model export tools: ONNX export with a dynamic batch axis, FP16 variants.

Models of any size. A protobuf message cannot exceed 2 GB, so a large model (MuseTalk's UNet is
~850 M parameters, 3.4 GB in fp32) cannot be one ``.onnx`` file, nor be loaded, edited and saved as
one in-memory proto. ``export_onnx`` therefore:

1. checks the free disk space first (the export needs the weights about twice: torch's loose
   files, then the consolidated file);
2. lets torch write into a private temporary directory next to the output (for a model over 2 GB
   torch writes the graph plus one loose file per weight there);
3. loads only the graph (``onnx.load(..., load_external_data=False)``), adds the metadata, and moves
   the weights - streamed tensor by tensor, never all in memory - into ONE ``<name>.onnx.data`` file
   beside ``<name>.onnx`` when the weights reach ``external_data_threshold`` bytes (default 2 GB, the
   protobuf limit); below it the model stays one self-contained file;
4. checks the result by path (``onnx.checker.check_model(path)`` follows the external data), and
   on ANY failure removes the temporary directory and every partial output file.

ONNX Runtime loads a model with external data by its path (the ``.data`` file must stay beside the
``.onnx``), on every execution provider: the renderer's ``open_model`` opens files by path.
Progress goes to ``progress`` (stderr by default): large exports take minutes.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import onnx
import torch
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

OPSET = 17
PROTOBUF_LIMIT = 2**31  # bytes: a protobuf message must stay below 2 GB
COPY_CHUNK = 64 * 1024 * 1024
DISK_MARGIN = 256 * 1024 * 1024

Progress = Callable[[str], None]


class ExportSpaceError(OSError):
    """Not enough free disk space for the export (nothing was written)."""


def stderr_progress(message: str) -> None:
    print(f"[export] {message}", file=sys.stderr, flush=True)


def data_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.data``: the one external-data file beside a large model."""
    return path.with_name(path.name + ".data")


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the module's parameters and buffers (what the ONNX initializers will hold)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def check_free_disk(directory: Path, needed: int) -> None:
    """Raises ``ExportSpaceError`` unless ``directory`` has ``needed`` bytes (+ a margin) free."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if free < needed + DISK_MARGIN:
        raise ExportSpaceError(
            f"{directory}: {free / 1e9:.2f} GB free, the export needs about {(needed + DISK_MARGIN) / 1e9:.2f} GB"
        )


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of ``graph``: initializers, tensor attributes, and those of subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def _weight_bytes(proto: onnx.ModelProto, source_dir: Path) -> int:
    total = 0
    for tensor in _tensors(proto.graph):
        if uses_external_data(tensor):
            info = ExternalDataInfo(tensor)
            total += info.length if info.length else (source_dir / info.location).stat().st_size - (info.offset or 0)
        else:
            total += len(tensor.raw_data)
    return total


def _point_at(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Marks ``tensor`` as stored in ``location`` at ``offset`` (its inline data already moved)."""
    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def externalize(
    proto: onnx.ModelProto, source_dir: Path, target: Path, progress: Progress, min_bytes: int = 1024
) -> int:
    """Moves the weights of ``proto`` (graph-only: external tensors are read from ``source_dir``,
    inline ones from the proto) into the one file ``target``, tensor by tensor, and points the proto
    at it. Tensors under ``min_bytes`` stay inline. Returns the bytes written."""
    written = 0
    total = max(1, _weight_bytes(proto, source_dir))
    next_report = 0.0
    with target.open("wb") as out:
        for tensor in _tensors(proto.graph):
            if uses_external_data(tensor):
                info = ExternalDataInfo(tensor)
                offset = out.tell()
                with (source_dir / info.location).open("rb") as src:
                    src.seek(info.offset or 0)
                    remaining = info.length if info.length else None
                    while remaining is None or remaining > 0:
                        chunk = src.read(COPY_CHUNK if remaining is None else min(COPY_CHUNK, remaining))
                        if not chunk:
                            break
                        out.write(chunk)
                        if remaining is not None:
                            remaining -= len(chunk)
                length = out.tell() - offset
            elif len(tensor.raw_data) >= min_bytes:
                offset = out.tell()
                out.write(tensor.raw_data)
                length = len(tensor.raw_data)
            else:
                continue
            _point_at(tensor, target.name, offset, length)
            written += length
            if written / total >= next_report:
                progress(f"weights {written / 1e9:.2f} / {total / 1e9:.2f} GB -> {target.name}")
                while next_report <= written / total:
                    next_report += 0.25
    return written


def _remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def export_onnx(
    model: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    metadata: dict[str, str] | None = None,
    *,
    external_data_threshold: int = PROTOBUF_LIMIT,
    progress: Progress = stderr_progress,
) -> Path:
    """Exports ``model`` (eval mode) with axis 0 of every input and output dynamic ("batch").

    Weights of ``external_data_threshold`` bytes or more go to ``data_path(path)`` (see the module
    docstring); the threshold is a parameter so that tests can take the large-model path cheaply.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    size = model_bytes(model)
    external = size >= external_data_threshold
    check_free_disk(path.parent, 2 * size if external else size)
    started = time.monotonic()
    progress(f"{path.name}: exporting {size / 1e9:.2f} GB of weights ({'external data' if external else 'one file'})")
    dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        staged = tmp / path.name
        with torch.no_grad():
            torch.onnx.export(
                model,
                args,
                str(staged),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
        progress(f"{path.name}: traced in {time.monotonic() - started:.0f} s")
        proto = onnx.load(str(staged), load_external_data=False)  # the graph only, never the weights
        for key, value in (metadata or {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        _remove(path, data_path(path))
        if external:
            externalize(proto, tmp, data_path(path), progress)
        else:
            onnx.load_external_data_for_model(proto, str(tmp))  # small: inline whatever torch put outside
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path))
    except BaseException:
        _remove(path, data_path(path))
        raise
    finally:
        _remove(tmp)
    progress(f"{path.name}: done in {time.monotonic() - started:.0f} s")
    return path


def fp16_variant_path(path: Path) -> Path:
    """``model.onnx`` -> ``model.fp16.onnx`` (what the renderer loads on CUDA/TensorRT with fp16 on)."""
    return path.with_name(path.stem + ".fp16" + path.suffix)


def write_fp16_variant(path: Path, progress: Progress = stderr_progress) -> Path:
    """Writes the FP16 copy of ``path`` with float32 inputs and outputs kept (casts inside).

    Built from the file path (shape inference by path works past 2 GB); a source with external data
    gets an FP16 copy with its own ``.data`` file, written tensor by tensor. Partial output is
    removed on failure."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = fp16_variant_path(path)
    external = data_path(path).exists()
    check_free_disk(path.parent, (data_path(path).stat().st_size if external else path.stat().st_size) // 2)
    started = time.monotonic()
    progress(f"{out.name}: converting {path.name} to fp16")
    try:
        _remove(out, data_path(out))
        half = convert_float_to_float16(str(path), keep_io_types=True)
        if external:
            externalize(half, path.parent, data_path(out), progress)
        onnx.save(half, str(out))
    except BaseException:
        _remove(out, data_path(out))
        raise
    progress(f"{out.name}: done in {time.monotonic() - started:.0f} s")
    return out
