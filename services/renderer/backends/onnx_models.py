"""ONNX Runtime sessions for the neural renderer backends.

* Execution provider choice (TensorRT -> CUDA -> CPU, or the configured list) is a pure function of
  the runtime's available providers, the config and the probe results (:func:`plan_providers`,
  :func:`choose_provider`); :func:`open_model` probes the candidates in order by creating a session
  and checking the provider really took the model (ONNX Runtime silently falls back to CPU when a
  GPU provider fails to initialise).
* TensorRT runs with FP16 and an engine cache on disk; CUDA loads the ``.fp16.onnx`` variant written
  by the import tools when fp16 is on, and runs through I/O binding; CPU runs the FP32 model.
* Every model's inputs and outputs are checked against the signature the backend expects; a wrong
  file is rejected at load with both signatures in the message.

Verified here on CPU only (no GPU on the development machine): the TensorRT and CUDA branches are
covered by unit tests of the selection logic and of the provider options, and the I/O binding path
is exercised with the CPU device.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.renderer.config import ExecutionConfig

log = logging.getLogger("talkmesh.renderer.onnx")

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
AUTO_ORDER = (TENSORRT, CUDA, CPU)
GPU_PROVIDERS = (TENSORRT, CUDA)
#: short names accepted in config besides the full provider names
ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}


class ModelError(ValueError):
    """A model file that cannot be used (missing, unreadable or with the wrong signature)."""


# ---------------------------------------------------------------------------------------------
# Provider selection (pure)


@dataclass(frozen=True)
class ProviderPlan:
    """One candidate: the provider to try, whether it runs FP16, and the session's provider list."""

    provider: str
    fp16: bool
    # Providers passed to the session, most preferred first (TensorRT falls back per node to CUDA).
    chain: tuple[str, ...]


def normalize_provider(name: str) -> str:
    return ALIASES.get(name.strip().lower(), name.strip())


def plan_providers(available: Sequence[str], config: ExecutionConfig) -> list[ProviderPlan]:
    """Candidates in the order to try them.

    Automatic (``config.providers`` empty): TensorRT, CUDA, CPU, each only if ``available`` lists it
    (CPU is always a candidate: every runtime build has it). Configured: exactly that order,
    restricted to what is available; no implicit CPU fallback, so a pinned GPU deployment fails
    loudly instead of running slowly. Raises ModelError when no configured provider is available.
    """
    avail = list(available)
    if config.providers:
        wanted = [normalize_provider(p) for p in config.providers]
        order = [p for p in dict.fromkeys(wanted) if p in avail]
        if not order:
            raise ModelError(
                f"execution.providers: none of {wanted} is available in this ONNX Runtime (available: {avail})"
            )
    else:
        order = [p for p in AUTO_ORDER if p in avail or p == CPU]
    plans = []
    for i, p in enumerate(order):
        fp16 = config.fp16 and p in GPU_PROVIDERS
        rest = [q for q in order[i + 1 :] if q in GPU_PROVIDERS or q == CPU]
        if p == TENSORRT and CUDA in avail and CUDA not in rest:
            rest.insert(0, CUDA)
        chain = tuple(dict.fromkeys([p, *rest, *([CPU] if p != CPU and CPU in avail else [])]))
        plans.append(ProviderPlan(p, fp16, chain))
    return plans


@dataclass(frozen=True)
class ProviderChoice:
    plan: ProviderPlan
    # (provider, reason) of every candidate that failed before the chosen one.
    fallbacks: tuple[tuple[str, str], ...] = ()

    @property
    def provider(self) -> str:
        return self.plan.provider


def choose_provider(plans: Sequence[ProviderPlan], probes: Mapping[str, str | None]) -> ProviderChoice:
    """The first plan whose probe succeeded (``probes[p] is None``); failed probes map to a reason.

    A candidate that was never probed ends the walk: it is the one to try next, so callers probe
    lazily (see :func:`open_model`). Raises ModelError when every candidate failed.
    """
    failed: list[tuple[str, str]] = []
    for plan in plans:
        if plan.provider not in probes:
            return ProviderChoice(plan, tuple(failed))
        reason = probes[plan.provider]
        if reason is None:
            return ProviderChoice(plan, tuple(failed))
        failed.append((plan.provider, reason))
    detail = "; ".join(f"{p}: {r}" for p, r in failed) or "no candidates"
    raise ModelError(f"no execution provider could load the model ({detail})")


def provider_options(
    plan: ProviderPlan, config: ExecutionConfig, max_batch: int, input_shapes: Mapping[str, Sequence[int]]
) -> list[tuple[str, dict[str, Any]]]:
    """ONNX Runtime ``providers=`` argument for ``plan``.

    TensorRT: FP16, engine + timing cache under ``trt_cache_dir``, an optimisation profile for batch
    1..max_batch (``input_shapes`` are per-sample shapes). CUDA: heuristic cuDNN search (no
    exhaustive benchmark at start-up), arena grown as requested.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    for p in plan.chain:
        if p == TENSORRT:
            cache = str(trt_cache_dir(config))

            def shapes(b: int) -> str:
                return ",".join(f"{n}:{'x'.join(str(d) for d in (b, *s))}" for n, s in input_shapes.items())

            out.append((TENSORRT, {
                "trt_fp16_enable": plan.fp16,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": cache,
                "trt_profile_min_shapes": shapes(1),
                "trt_profile_opt_shapes": shapes(max_batch),
                "trt_profile_max_shapes": shapes(max_batch),
            }))  # fmt: skip
        elif p == CUDA:
            out.append((CUDA, {"device_id": 0, "cudnn_conv_algo_search": "HEURISTIC",
                               "arena_extend_strategy": "kSameAsRequested"}))  # fmt: skip
        else:
            out.append((p, {}))
    return out


def trt_cache_dir(config: ExecutionConfig) -> Path:
    base = config.trt_cache_dir or os.path.join("~", ".cache", "talkmesh", "trt")
    return Path(os.path.expanduser(base))


def model_variant(path: Path, plan: ProviderPlan) -> Path:
    """The file to load: ``x.fp16.onnx`` for CUDA with fp16 when the tools wrote one, else ``path``.

    TensorRT builds its FP16 engine from the FP32 model (``trt_fp16_enable``), so it keeps ``path``.
    """
    if plan.provider == CUDA and plan.fp16:
        half = path.with_name(path.stem + ".fp16" + path.suffix)
        if half.exists():
            return half
    return path


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


def check_signature(name: str, expected: Signature, found: Signature) -> None:
    """Raises ModelError naming both signatures unless ``found`` matches ``expected``.

    Names and dtypes must match exactly; a fixed expected dimension must match (a dynamic one in the
    file is accepted there); the expected dynamic batch axis must be dynamic or 1 in the file.
    """

    def matches(e: TensorSpec, f: TensorSpec) -> bool:
        if e.name != f.name or e.dtype != f.dtype or len(e.shape) != len(f.shape):
            return False
        return all(ed is None or fd is None or ed == fd for ed, fd in zip(e.shape, f.shape, strict=True))

    def all_match(es: Sequence[TensorSpec], fs: Sequence[TensorSpec]) -> bool:
        by_name = {f.name: f for f in fs}
        return len(es) == len(fs) and all(e.name in by_name and matches(e, by_name[e.name]) for e in es)

    if not (all_match(expected.inputs, found.inputs) and all_match(expected.outputs, found.outputs)):
        raise ModelError(f"{name}: wrong model signature: expected {expected.describe()}, found {found.describe()}")


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
    _output_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._output_names = [o.name for o in self.signature.outputs]

    @property
    def provider(self) -> str:
        return self.choice.provider

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if not self.use_io_binding:
            return list(self.session.run(self._output_names, dict(feeds)))
        # Inputs copied to the device once, outputs allocated on it and copied back together.
        binding = self.session.io_binding()
        for key, value in feeds.items():
            binding.bind_cpu_input(key, np.ascontiguousarray(value))
        for out in self._output_names:
            binding.bind_output(out, self.binding_device)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())


#: (path, provider options, session options) -> session; injectable for tests
SessionFactory = Callable[[str, list[tuple[str, dict[str, Any]]], Any], Any]


def _default_factory(path: str, providers: list[tuple[str, dict[str, Any]]], options: Any) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(path, sess_options=options, providers=providers)


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def session_options(config: ExecutionConfig) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if config.intra_op_threads > 0:
        opts.intra_op_num_threads = config.intra_op_threads
    opts.inter_op_num_threads = 1
    return opts


def open_model(
    name: str,
    path: Path,
    expected: Signature,
    config: ExecutionConfig,
    *,
    max_batch: int = 8,
    available: Sequence[str] | None = None,
    factory: SessionFactory | None = None,
) -> OnnxModel:
    """Loads ``path`` with the best working provider and checks its signature.

    Candidates are probed lazily in plan order; a provider "works" when the session was created
    and lists it first among its active providers. The choice is logged.
    """
    if not path.is_file():
        raise ModelError(f"{name}: model file {str(path)!r} does not exist")
    avail = list(available) if available is not None else available_providers()
    make = factory or _default_factory
    plans = plan_providers(avail, config)
    per_sample = {t.name: tuple(d or 1 for d in t.shape[1:]) for t in expected.inputs}
    probes: dict[str, str | None] = {}
    sessions: dict[str, Any] = {}
    while True:
        choice = choose_provider(plans, probes)
        plan = choice.plan
        if plan.provider in probes:  # the probe already succeeded
            break
        if plan.provider == TENSORRT:
            trt_cache_dir(config).mkdir(parents=True, exist_ok=True)
        file = model_variant(path, plan)
        try:
            sess = make(str(file), provider_options(plan, config, max_batch, per_sample), session_options(config))
            active = list(sess.get_providers())
            if not active or active[0] != plan.provider:
                raise RuntimeError(f"session runs on {active[:1]} instead")
        except Exception as exc:  # any failure: try the next provider
            probes[plan.provider] = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("%s: %s unavailable (%s); trying the next provider", name, plan.provider, exc)
            continue
        probes[plan.provider] = None
        sessions[plan.provider] = (sess, file)
    sess, file = sessions[choice.provider]
    found = Signature(
        tuple(_found_spec(a) for a in sess.get_inputs()), tuple(_found_spec(a) for a in sess.get_outputs())
    )
    check_signature(f"{name} ({file})", expected, found)
    log.info(
        "%s: loaded %s on %s (fp16=%s, fallbacks=%s)",
        name, file, choice.provider, choice.plan.fp16, list(choice.fallbacks) or "none",
    )  # fmt: skip
    return OnnxModel(
        name=name, session=sess, signature=expected, choice=choice, path=file,
        use_io_binding=choice.provider == CUDA,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Batch size


def max_batch_for_memory(free_bytes: int | None, per_frame_bytes: int, cap: int, reserve: float = 0.3) -> int:
    """Largest batch whose activations fit ``(1 - reserve) * free_bytes``, in [1, cap].

    ``free_bytes is None`` (no GPU or unknown): ``cap``. Rounded down to a multiple of 8 above 8
    (tensor-core friendly shapes).
    """
    if free_bytes is None:
        return max(1, cap)
    budget = int(free_bytes * (1.0 - reserve))
    n = max(1, min(cap, budget // max(1, per_frame_bytes)))
    if n > 8:
        n -= n % 8
    return n


def gpu_free_bytes(device: int = 0) -> int | None:
    """Free memory of GPU ``device`` from NVML (nvidia-ml-py) or ``nvidia-smi``; None if unknown."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(device))
            return int(info.free)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # NVML missing or no driver: try nvidia-smi
        pass
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=memory.free", "--format=csv,noheader,nounits", f"--id={device}"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return int(out.stdout.strip().splitlines()[0]) * 1024 * 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def effective_max_batch(
    provider: str,
    per_frame_bytes: int,
    cpu_max: int,
    gpu_max: int,
    free_bytes: Callable[[], int | None] = gpu_free_bytes,
) -> int:
    """Batch bound for a model on ``provider``: ``cpu_max`` on CPU, memory-adapted on a GPU."""
    if provider in GPU_PROVIDERS:
        return max_batch_for_memory(free_bytes(), per_frame_bytes, gpu_max)
    return max(1, cpu_max)
