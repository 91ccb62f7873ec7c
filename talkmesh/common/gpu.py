"""GPU memory budget: how much of a (possibly time-sliced) GPU a pod may use, and what batch fits.

A pod's budget is ``gpu.share`` of the card's memory (time slices do not isolate memory: four pods
on one GPU each configure ``share: 0.25``). From it come

* ``gpu_mem_limit`` of the CUDA provider's arena: the budget minus the per-process CUDA context
  (driver context, cuBLAS/cuDNN handles and workspaces), :func:`arena_limit`;
* the largest batch: what is left of the budget (and of the memory actually free at start-up, which
  counts neighbours already loaded) after the context and the model weights (file size including
  external data, :func:`model_weight_bytes`; talkmesh.common.onnx_files finds it), divided by the
  activations per frame, times the arena's efficiency (``kNextPowerOfTwo`` rounds each extension
  up: count activations twice), :func:`batch_for_budget`.

TensorRT engines hold their weights and workspace outside ONNX Runtime's arena, so ``gpu_mem_limit``
alone does not cap a TensorRT session; the batch bound still counts them.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from talkmesh.common.config import ConfigError
from talkmesh.common.onnx_files import external_data_files

log = logging.getLogger("talkmesh.gpu")

#: Oldest NVIDIA driver branch per use (deploy/gpu-stack.yaml, driver_floor; a test keeps them equal):
#: inference with CUDA 12 + TensorRT 10, and the NVENC of PyAV's FFmpeg (NVENC SDK 13 headers).
DRIVER_FLOOR = {"inference": 535, "nvenc": 570}

MiB = 1024 * 1024
GiB = 1024 * MiB
#: CUDA context + cuBLAS/cuDNN handles and workspaces of one process, reserved before anything else.
#: An estimate (a few hundred MiB with CUDA 12 and lazy module loading), not measured here: no GPU on
#: the development machine; `talkmesh doctor` on a node shows the real free memory.
CUDA_CONTEXT_BYTES = 512 * MiB
#: Fraction of the budget kept free for fragmentation and transient allocations.
HEADROOM = 0.1


@dataclass(frozen=True)
class GpuConfig:
    """The ``gpu`` section: this pod's part of its GPU."""

    # Fraction of the GPU's memory this pod may use (time-slicing does not isolate memory: with N
    # pods per GPU set 1/N). Sets the ONNX Runtime arena limit and bounds the batch size.
    share: float = 1.0
    # The card's memory in MiB; 0 = read it from NVML / nvidia-smi at start-up.
    memory_mb: int = 0

    def validate(self) -> None:
        if not 0.0 < self.share <= 1.0:
            raise ConfigError.at("share", "must be in (0, 1]")
        if self.memory_mb < 0:
            raise ConfigError.at("memory_mb", "must not be negative")


@dataclass(frozen=True)
class GpuMemory:
    total: int
    free: int


def gpu_memory(device: int = 0) -> GpuMemory | None:
    """Total and free memory of GPU ``device`` from NVML (nvidia-ml-py) or ``nvidia-smi``; None if unknown."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(device))
            return GpuMemory(int(info.total), int(info.free))
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.total,memory.free", "--format=csv,noheader,nounits", f"--id={device}"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        total, free = (int(v) for v in out.stdout.strip().splitlines()[0].split(","))
        return GpuMemory(total * MiB, free * MiB)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def model_weight_bytes(paths: Iterable[Path]) -> int:
    """Bytes of model weights: each file plus its external data files (each counted once)."""
    seen: set[Path] = set()
    total = 0
    for p in paths:
        for f in (Path(p), *external_data_files(Path(p))):
            r = f.resolve()
            if r not in seen and r.is_file():
                seen.add(r)
                total += r.stat().st_size
    return total


def pod_budget(total_bytes: int, share: float) -> int:
    """This pod's bytes of a card with ``total_bytes`` of which it has ``share``."""
    return int(total_bytes * share)


def arena_limit(total_bytes: int, share: float) -> int:
    """``gpu_mem_limit`` for ONNX Runtime: the pod's budget minus the CUDA context (at least 256 MiB)."""
    return max(256 * MiB, pod_budget(total_bytes, share) - CUDA_CONTEXT_BYTES)


def batch_for_budget(
    budget_bytes: int,
    weight_bytes: int,
    per_frame_bytes: int,
    cap: int,
    *,
    free_bytes: int | None = None,
    arena_extend_strategy: str = "kSameAsRequested",
    fp16: bool = True,
) -> int:
    """Largest batch (in [1, cap], a multiple of 8 above 8) whose activations fit.

    ``budget_bytes``: the pod's budget (:func:`pod_budget`); ``free_bytes`` (memory free at start-up,
    before this pod loads anything) lowers it when neighbours already use more than their share.
    Weights are counted at half their file size when ``fp16`` (the files are FP32).
    """
    usable = budget_bytes if free_bytes is None else min(budget_bytes, free_bytes)
    weights = weight_bytes // 2 if fp16 else weight_bytes
    left = int(usable * (1.0 - HEADROOM)) - CUDA_CONTEXT_BYTES - weights
    per_frame = per_frame_bytes * (2 if arena_extend_strategy == "kNextPowerOfTwo" else 1)
    n = max(1, min(cap, left // max(1, per_frame)))
    if n > 8:
        n -= n % 8
    return n


@dataclass(frozen=True)
class GpuPlan:
    """What a service on a GPU uses: the arena limit passed to ONNX Runtime and the batch bound."""

    gpu_mem_limit: int  # bytes, 0 = no limit
    max_batch: int
    budget: int  # bytes, 0 = unknown card
    weights: int

    def describe(self) -> str:
        if not self.budget:
            return f"GPU memory unknown: batch {self.max_batch}, no arena limit"
        return (
            f"GPU budget {self.budget / GiB:.1f} GiB, weights {self.weights / GiB:.2f} GiB, "
            f"arena limit {self.gpu_mem_limit / GiB:.1f} GiB, batch up to {self.max_batch}"
        )


def plan_gpu(
    gpu: GpuConfig,
    *,
    weights: int,
    per_frame_bytes: int,
    cap: int,
    configured_limit_mb: int = 0,
    arena_extend_strategy: str = "kSameAsRequested",
    fp16: bool = True,
    memory: GpuMemory | None = None,
) -> GpuPlan:
    """The budget of this pod on its GPU (``memory`` as read by :func:`gpu_memory`; None = unknown:
    ``cap`` and no limit unless one is configured)."""
    total = gpu.memory_mb * MiB if gpu.memory_mb else (memory.total if memory else 0)
    free = memory.free if memory else None
    explicit = configured_limit_mb * MiB
    if not total:
        return GpuPlan(explicit, max(1, cap), 0, weights)
    budget = pod_budget(total, gpu.share)
    limit = explicit or arena_limit(total, gpu.share)
    if explicit:
        budget = min(budget, explicit + CUDA_CONTEXT_BYTES)
    batch = batch_for_budget(
        budget, weights, per_frame_bytes, cap, free_bytes=free, arena_extend_strategy=arena_extend_strategy, fp16=fp16
    )
    return GpuPlan(limit, batch, budget, weights)
