"""ONNX models of the neural renderer backends: signatures checked at load, on the shared session factory.

Provider planning, pre-flight of the GPU providers, TensorRT/CUDA options, the fp16 variant, I/O
binding and errors naming the file are :mod:`talkmesh.common.onnx` (one factory for the renderer,
audio_features and Piper TTS); this module adds what only the renderer needs: every model's inputs
and outputs are checked against the signature the backend expects (a wrong file is rejected at load
with both signatures in the message), and the TensorRT optimisation profile for batch 1..max_batch.
The GPU memory budget (weights, ``gpu.share``, arena) is :mod:`talkmesh.common.gpu`.

Verified here on CPU only (no GPU on the development machine): the TensorRT and CUDA branches are
covered by unit tests with a fake ONNX Runtime boundary (available providers, session class,
pre-flight), and the I/O binding path is exercised with the CPU device.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkmesh.common.onnx import (
    AUTO_ORDER,
    CPU,
    CUDA,
    GPU_PROVIDERS,
    TENSORRT,
    ExecutionConfig,
    ModelError,
    ModelFileError,
    ProviderCheck,
    ProviderChoice,
    ProviderPlan,
    SessionFactory,
    available_providers,
    choose_provider,
    model_variant,
    normalize_provider,
    open_session,
    plan_providers,
    provider_options,
    run_bound,
    trt_cache_dir,
)

__all__ = [
    "AUTO_ORDER", "CPU", "CUDA", "GPU_PROVIDERS", "TENSORRT", "ExecutionConfig", "ModelError", "ModelFileError",
    "OnnxModel",
    "ProviderCheck",
    "ProviderChoice", "ProviderPlan", "SessionFactory", "Signature", "TensorSpec", "available_providers",
    "check_signature", "choose_provider", "model_variant", "normalize_provider", "open_model", "plan_providers",
    "provider_options", "trt_cache_dir",
]  # fmt: skip

log = logging.getLogger("talkmesh.renderer.onnx")


# ---------------------------------------------------------------------------------------------
# Signatures


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...]  # None: dynamic (the batch axis)
    dtype: str = "tensor(float)"

    def describe(self) -> str:
        dims = ",".join("B" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}] {self.dtype.removeprefix('tensor(').removesuffix(')')}"


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def describe(self) -> str:
        ins = ", ".join(t.describe() for t in self.inputs)
        outs = ", ".join(t.describe() for t in self.outputs)
        return f"inputs ({ins}) -> outputs ({outs})"


def _found_spec(arg: Any) -> TensorSpec:
    dims = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(arg.name, dims, arg.type)


def found_signature(session: Any) -> Signature:
    """The inputs and outputs an ONNX Runtime session's file declares."""
    return Signature(
        tuple(_found_spec(a) for a in session.get_inputs()), tuple(_found_spec(a) for a in session.get_outputs())
    )


def check_signature(name: str, expected: Signature, found: Signature) -> int | None:
    """Raises ModelError naming both signatures unless ``found`` matches ``expected``; returns the
    batch size the file fixes (None: a dynamic batch axis).

    Names and dtypes must match exactly; a fixed expected dimension must match (a dynamic one in the
    file is accepted there). The expected dynamic batch axis may be fixed in the file (an export
    without ``dynamic_axes``), the same size for every input: the model then runs that many frames
    at a time (``OnnxModel.run`` splits and pads a batch).
    """

    def matches(e: TensorSpec, f: TensorSpec) -> bool:
        if e.name != f.name or e.dtype != f.dtype or len(e.shape) != len(f.shape):
            return False
        return all(ed is None or fd is None or ed == fd for ed, fd in zip(e.shape, f.shape, strict=True))

    def all_match(es: Sequence[TensorSpec], fs: Sequence[TensorSpec]) -> bool:
        by_name = {f.name: f for f in fs}
        return len(es) == len(fs) and all(e.name in by_name and matches(e, by_name[e.name]) for e in es)

    if not (all_match(expected.inputs, found.inputs) and all_match(expected.outputs, found.outputs)):
        raise ModelFileError(f"{name}: wrong model signature: expected {expected.describe()}, found {found.describe()}")
    by_name = {f.name: f for f in found.inputs}
    fixed = {by_name[e.name].shape[0] for e in expected.inputs if e.shape and e.shape[0] is None}
    if fixed == {None} or not fixed:
        return None
    if len(fixed) > 1:
        sizes = ", ".join(str(s) if s is not None else "dynamic" for s in sorted(fixed, key=str))
        raise ModelFileError(f"{name}: its inputs' batch axes disagree ({sizes}): export it with one batch axis")
    (size,) = fixed
    if size is None or size < 1:
        raise ModelFileError(f"{name}: its batch axis is fixed at {size}: export it with a dynamic batch axis")
    return size


# ---------------------------------------------------------------------------------------------
# Sessions


@dataclass
class OnnxModel:
    """An ONNX Runtime session with a checked signature; ``run`` takes and returns numpy arrays."""

    name: str
    session: Any  # onnxruntime.InferenceSession
    signature: Signature
    choice: ProviderChoice
    path: Path
    use_io_binding: bool = False
    binding_device: str = "cuda"
    device_id: int = 0
    #: the batch size the file fixes (an export without a dynamic batch axis); None: any
    fixed_batch: int | None = None
    _output_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._output_names = [o.name for o in self.signature.outputs]

    @property
    def provider(self) -> str:
        return self.choice.provider

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        size = self.fixed_batch
        n = len(next(iter(feeds.values()))) if feeds else 0
        if size is None or n == size or n == 0:
            return self._run(feeds)
        # a fixed batch axis: ``size`` frames at a time, the last group padded with its last frame
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, size):
            group = {k: v[start : start + size] for k, v in feeds.items()}
            short = size - len(next(iter(group.values())))
            if short:
                group = {k: np.concatenate([v, np.repeat(v[-1:], short, axis=0)]) for k, v in group.items()}
            parts.append([out[: size - short] for out in self._run(group)])
        return [np.concatenate(outs) for outs in zip(*parts, strict=True)]

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if not self.use_io_binding:
            return list(self.session.run(self._output_names, dict(feeds)))
        return run_bound(self.session, feeds, self._output_names, self.binding_device, self.device_id)


def open_model(
    name: str,
    path: Path,
    expected: Signature,
    config: ExecutionConfig,
    *,
    max_batch: int = 8,
    gpu_mem_limit: int = 0,
    available: Sequence[str] | None = None,
    factory: SessionFactory | None = None,
    check: ProviderCheck | None = None,
) -> OnnxModel:
    """Loads ``path`` through :func:`talkmesh.common.onnx.open_session` and checks its signature."""
    per_sample = {t.name: tuple(d or 1 for d in t.shape[1:]) for t in expected.inputs}
    s = open_session(
        path, config, name=name, max_batch=max_batch, input_shapes=per_sample, gpu_mem_limit=gpu_mem_limit,
        available=available, factory=factory, check=check,
    )  # fmt: skip
    sess = s.session
    fixed = check_signature(f"{name} ({s.path})", expected, found_signature(sess))
    if fixed is not None and fixed != max_batch:
        log.warning(
            "%s (%s): its batch axis is fixed at %d: frames run %d at a time (an export with a dynamic "
            "batch axis, e.g. python -m tools.import_wav2lip, batches as configured)", name, s.path, fixed, fixed
        )
    return OnnxModel(
        name=name, session=sess, signature=expected, choice=s.choice, path=s.path,
        use_io_binding=s.use_io_binding, device_id=s.device_id, fixed_batch=fixed,
    )  # fmt: skip
