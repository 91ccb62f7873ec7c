"""The one ONNX Runtime session factory of talkmesh (renderer, audio_features and Piper TTS use it).

* **Provider planning** (:func:`plan_providers`, pure): ``execution.providers`` empty means automatic,
  TensorRT -> CUDA -> CPU, each only if the installed runtime offers it; a configured list is *pinned*:
  exactly those, in that order, with no implicit CPU fallback, so a GPU deployment that cannot get its
  GPU fails at start-up instead of running slowly. Short names (``tensorrt``, ``trt``, ``cuda``,
  ``cpu``) are accepted.
* **Pre-flight** (:func:`provider_preflight`): before a session is built for TensorRT or CUDA, the
  NVIDIA driver (``libcuda.so.1`` and the CUDA version it supports) and the shared libraries the
  provider links (:data:`PROVIDER_LIBRARIES`, the same list as ``provider_needs`` in
  deploy/gpu-stack.yaml) are checked with ``ctypes``; a provider that cannot load is skipped with the
  reason, without building a session (a failed TensorRT probe otherwise costs a full session build
  per model).
* **Probe**: a candidate "works" when the session was created and ``get_providers()[0]`` is that
  provider (ONNX Runtime silently builds a CPU session when a GPU provider fails to initialise).
* **Options**: TensorRT with FP16, engine and timing cache on disk and an optimisation profile for
  batch 1..max_batch; CUDA with ``gpu_mem_limit``, ``arena_extend_strategy`` and the cuDNN options;
  CUDA with fp16 loads the ``.fp16.onnx`` variant when the export tools wrote one.
* **Errors name the file**, in one line: a missing file, a pinned provider that cannot be obtained
  (with the reason: missing library, driver too old, session fell back), a model ONNX Runtime rejects.
* **I/O binding** (:meth:`OnnxSession.run`): on CUDA, inputs are copied to the device once and
  outputs allocated there and copied back together.

onnxruntime is imported lazily: this module is importable in a client-only install.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from talkmesh.common.config import ConfigError
from talkmesh.common.onnx_files import is_torch_file, model_file_problems
from talkmesh.common.paths import cache_dir

log = logging.getLogger("talkmesh.onnx")

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
AUTO_ORDER = (TENSORRT, CUDA, CPU)
GPU_PROVIDERS = (TENSORRT, CUDA)
#: short names accepted in config besides the full provider names
ALIASES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}
SHORT = {TENSORRT: "TensorRT", CUDA: "CUDA", CPU: "CPU"}

#: CUDA major version the GPU build of ONNX Runtime is built for (deploy/gpu-stack.yaml, cuda.major).
CUDA_MAJOR = 12
#: Shared libraries each GPU provider library links (deploy/gpu-stack.yaml, provider_needs; a test
#: keeps them equal). The driver's libcuda.so.1 is checked separately.
PROVIDER_LIBRARIES: dict[str, tuple[str, ...]] = {
    CUDA: (
        "libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12", "libcufft.so.11", "libcurand.so.10",
        "libcudnn.so.9",
    ),
    TENSORRT: ("libcudart.so.12", "libcublas.so.12", "libcudnn.so.9", "libnvinfer.so.10", "libnvonnxparser.so.10"),
}  # fmt: skip
ARENA_STRATEGIES = ("kNextPowerOfTwo", "kSameAsRequested")
CUDNN_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")


class ModelError(ValueError):
    """A model that cannot be used (missing file, wrong signature, no provider); names the file."""


class ModelFileError(ModelError):
    """The model file itself is the problem (missing, not ONNX, incomplete, refused by ONNX Runtime,
    another signature), not the execution settings: a service names the config key that gave it."""


def one_line(text: object, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


@dataclass(frozen=True)
class ExecutionConfig:
    """How a service runs its ONNX models (the ``execution`` section of renderer, audio_features, tts)."""

    # ONNX Runtime execution providers in order of preference; empty = automatic (TensorRT, then
    # CUDA, then CPU, from what the installed runtime offers and can load). A non-empty list is
    # pinned: start-up fails when none of them can be obtained.
    providers: list[str] = field(default_factory=list)
    # FP16 on GPU providers (TensorRT builds FP16 engines; CUDA loads x.fp16.onnx when present).
    fp16: bool = True
    # TensorRT engine and timing cache; "" means $XDG_CACHE_HOME/talkmesh/trt
    # (~/.cache/talkmesh/trt without XDG_CACHE_HOME).
    trt_cache_dir: str = ""
    # ONNX Runtime threads per session (0 = ONNX Runtime's default).
    intra_op_threads: int = 0
    device_id: int = 0
    # Cap of the CUDA provider's memory arena per session, MiB; 0 = derived from the GPU budget where
    # the service has one (renderer: gpu.share), else unlimited.
    gpu_mem_limit_mb: int = 0
    # kSameAsRequested grows the arena by what is asked (little waste; the right choice under a
    # limit); kNextPowerOfTwo rounds every extension up (fewer, larger allocations).
    arena_extend_strategy: str = "kSameAsRequested"
    # cuDNN convolution algorithm search: HEURISTIC (fast start-up), EXHAUSTIVE (benchmarks every
    # algorithm once per shape, slow first run), DEFAULT.
    cudnn_conv_algo_search: str = "HEURISTIC"
    # Let cuDNN use as much workspace as it wants (faster convolutions, more memory).
    cudnn_conv_use_max_workspace: bool = True
    # Run CUDA sessions through I/O binding (one copy in, one copy out per call).
    io_binding: bool = True

    def validate(self) -> None:
        for p in self.providers:
            if not p.strip():
                raise ConfigError.at("providers", "empty provider name")
        if self.intra_op_threads < 0:
            raise ConfigError.at("intra_op_threads", "must not be negative")
        if self.device_id < 0:
            raise ConfigError.at("device_id", "must not be negative")
        if self.gpu_mem_limit_mb < 0:
            raise ConfigError.at("gpu_mem_limit_mb", "must not be negative")
        if self.arena_extend_strategy not in ARENA_STRATEGIES:
            raise ConfigError.at(
                "arena_extend_strategy", f"{self.arena_extend_strategy!r} is not one of {ARENA_STRATEGIES}"
            )
        if self.cudnn_conv_algo_search not in CUDNN_SEARCH:
            raise ConfigError.at(
                "cudnn_conv_algo_search", f"{self.cudnn_conv_algo_search!r} is not one of {CUDNN_SEARCH}"
            )

    @property
    def pinned(self) -> bool:
        return bool(self.providers)


# ---------------------------------------------------------------------------------------------
# Provider planning (pure)


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
    restricted to what is available; no implicit CPU fallback. Raises ModelError when no configured
    provider is available.
    """
    avail = list(available)
    if config.providers:
        wanted = [normalize_provider(p) for p in config.providers]
        order = [p for p in dict.fromkeys(wanted) if p in avail]
        if not order:
            raise ModelError(
                f"execution.providers {wanted}: none is in this ONNX Runtime build (it has {avail}; "
                "GPU providers need the onnxruntime-gpu wheel, the `gpu` extra)"
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
    lazily (see :func:`open_session`). Raises ModelError when every candidate failed.
    """
    failed: list[tuple[str, str]] = []
    for plan in plans:
        if plan.provider not in probes:
            return ProviderChoice(plan, tuple(failed))
        reason = probes[plan.provider]
        if reason is None:
            return ProviderChoice(plan, tuple(failed))
        failed.append((plan.provider, reason))
    detail = "; ".join(f"{SHORT.get(p, p)}: {r}" for p, r in failed) or "no candidates"
    raise ModelError(f"no execution provider could load the model ({detail})")


def trt_cache_dir(config: ExecutionConfig) -> Path:
    return Path(config.trt_cache_dir).expanduser() if config.trt_cache_dir else cache_dir("trt")


def provider_options(
    plan: ProviderPlan,
    config: ExecutionConfig,
    max_batch: int,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    gpu_mem_limit: int = 0,
) -> list[tuple[str, dict[str, Any]]]:
    """ONNX Runtime ``providers=`` argument for ``plan``.

    TensorRT: FP16, engine + timing cache under ``trt_cache_dir``, and (given per-sample
    ``input_shapes``) an optimisation profile for batch 1..max_batch. CUDA: device, memory limit
    (``gpu_mem_limit`` bytes, 0 = none), arena growth and cuDNN options from ``config``.
    """
    out: list[tuple[str, dict[str, Any]]] = []
    for p in plan.chain:
        if p == TENSORRT:
            cache = str(trt_cache_dir(config))
            opts: dict[str, Any] = {
                "device_id": config.device_id,
                "trt_fp16_enable": plan.fp16,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": cache,
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": cache,
            }
            if input_shapes:

                def shapes(b: int) -> str:
                    return ",".join(f"{n}:{'x'.join(str(d) for d in (b, *s))}" for n, s in input_shapes.items())

                opts.update({
                    "trt_profile_min_shapes": shapes(1),
                    "trt_profile_opt_shapes": shapes(max_batch),
                    "trt_profile_max_shapes": shapes(max_batch),
                })  # fmt: skip
            out.append((TENSORRT, opts))
        elif p == CUDA:
            cuda: dict[str, Any] = {
                "device_id": config.device_id,
                "arena_extend_strategy": config.arena_extend_strategy,
                "cudnn_conv_algo_search": config.cudnn_conv_algo_search,
                "cudnn_conv_use_max_workspace": "1" if config.cudnn_conv_use_max_workspace else "0",
                "do_copy_in_default_stream": True,
            }
            if gpu_mem_limit > 0:
                cuda["gpu_mem_limit"] = int(gpu_mem_limit)
            out.append((CUDA, cuda))
        else:
            out.append((p, {}))
    return out


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
# Pre-flight: can a GPU provider load at all? (no session built)

#: provider -> None (can load) or the reason it cannot; injectable for tests
ProviderCheck = Callable[[str], "str | None"]


def _load(name: str) -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def cuda_driver_version() -> int | None:
    """The CUDA version the installed driver supports (``cuDriverGetVersion``, e.g. 12080), or None
    when there is no NVIDIA driver (``libcuda.so.1`` cannot be loaded)."""
    lib = _load("libcuda.so.1")
    if lib is None:
        return None
    version = ctypes.c_int(0)
    try:
        if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except AttributeError:
        return None
    return int(version.value)


def format_cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def missing_libraries(names: Sequence[str]) -> list[str]:
    """The ones of ``names`` the dynamic loader cannot load (``dlopen`` by soname)."""
    return [n for n in names if _load(n) is None]


def _preload_pip_libraries() -> None:
    """onnxruntime-gpu >= 1.21 can load CUDA/cuDNN from NVIDIA's pip wheels (site-packages/nvidia)."""
    try:
        import onnxruntime as ort

        preload = getattr(ort, "preload_dlls", None)
        if preload is not None:
            preload(cuda=True, cudnn=True, msvc=False)
    except Exception as exc:  # best effort: the library check below reports what is missing
        log.debug("onnxruntime.preload_dlls failed: %s", one_line(exc))


@functools.lru_cache(maxsize=8)
def provider_preflight(provider: str) -> str | None:
    """None when ``provider`` can load here, else the reason in one line (no session is built).

    CPU always loads. CUDA and TensorRT need the NVIDIA driver (``libcuda.so.1``) supporting CUDA
    :data:`CUDA_MAJOR`, and every library of :data:`PROVIDER_LIBRARIES`.
    """
    if provider not in GPU_PROVIDERS:
        return None
    driver = cuda_driver_version()
    if driver is None:
        return "no NVIDIA driver (libcuda.so.1 not found: no GPU, or the container runtime did not mount the driver)"
    if driver < CUDA_MAJOR * 1000:
        return (
            f"NVIDIA driver too old: it supports CUDA {format_cuda_version(driver)}, this ONNX Runtime needs "
            f"CUDA {CUDA_MAJOR} (see deploy/gpu-stack.yaml, driver_floor)"
        )
    _preload_pip_libraries()
    missing = missing_libraries(PROVIDER_LIBRARIES[provider])
    if missing:
        return f"missing librar{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)}"
    return None


# ---------------------------------------------------------------------------------------------
# Sessions

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


def run_bound(
    session: Any, feeds: Mapping[str, np.ndarray], output_names: Sequence[str], device: str, device_id: int = 0
) -> list[np.ndarray]:
    """One ``run`` through I/O binding: inputs bound from host memory, outputs allocated on ``device``."""
    binding = session.io_binding()
    for key, value in feeds.items():
        binding.bind_cpu_input(key, np.ascontiguousarray(value))
    for out in output_names:
        binding.bind_output(out, device, device_id)
    session.run_with_iobinding(binding)
    return list(binding.copy_outputs_to_cpu())


@dataclass
class OnnxSession:
    """A session on the provider it actually got; ``run`` takes and returns numpy arrays."""

    name: str
    session: Any  # onnxruntime.InferenceSession
    choice: ProviderChoice
    path: Path  # the file loaded (the .fp16 variant on CUDA with fp16)
    use_io_binding: bool = False
    device_id: int = 0

    @property
    def provider(self) -> str:
        return self.choice.provider

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None) -> list[np.ndarray]:
        names = list(output_names) if output_names is not None else self.output_names
        if self.use_io_binding:
            return run_bound(self.session, feeds, names, "cuda", self.device_id)
        return list(self.session.run(names, dict(feeds)))


def open_session(
    path: Path | str,
    config: ExecutionConfig,
    *,
    name: str = "",
    max_batch: int = 8,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    gpu_mem_limit: int = 0,
    available: Sequence[str] | None = None,
    factory: SessionFactory | None = None,
    check: ProviderCheck | None = None,
) -> OnnxSession:
    """Loads ``path`` with the best provider that really takes it.

    Candidates (:func:`plan_providers`) are tried in order: a GPU provider that fails its pre-flight
    (``check``, default :func:`provider_preflight`) is skipped without building a session; otherwise
    a session is built and kept if ``get_providers()[0]`` is the candidate. A fallback is logged in
    one warning line with every reason. Raises ModelError naming the file (one line) when the file
    is missing or no candidate works (the reasons of each, for pinned providers).
    """
    path = Path(os.path.expanduser(str(path)))
    label = f"{name} ({path})" if name else str(path)
    if path.is_dir():
        raise ModelFileError(f"{label}: is a directory, not a model file (give the .onnx file itself)")
    if not path.is_file():
        raise ModelFileError(f"{label}: model file does not exist")
    if is_torch_file(path):
        raise ModelFileError(f"{label}: a PyTorch checkpoint, not ONNX: convert it with its tool in tools/ (README)")
    # an empty file, or external data missing or cut short: said before ONNX Runtime's own message,
    # which names its source files first and gets cut before the reason
    if problems := model_file_problems(path):
        raise ModelFileError(f"{label}: {problems[0]}")
    avail = list(available) if available is not None else available_providers()
    make = factory or _default_factory
    preflight = check or provider_preflight
    try:
        plans = plan_providers(avail, config)
    except ModelError as exc:
        raise ModelError(f"{label}: {exc}") from None
    probes: dict[str, str | None] = {}
    sessions: dict[str, tuple[Any, Path]] = {}
    while True:
        try:
            choice = choose_provider(plans, probes)
        except ModelError as exc:
            pinned = f"pinned execution.providers {list(config.providers)}: " if config.pinned else ""
            raise ModelError(f"{label}: {pinned}{exc}") from None
        plan = choice.plan
        if plan.provider in probes:  # its probe already succeeded
            break
        reason = preflight(plan.provider)
        if reason is not None:
            probes[plan.provider] = f"skipped: {reason}"
            continue
        if plan.provider == TENSORRT:
            trt_cache_dir(config).mkdir(parents=True, exist_ok=True)
        file = model_variant(path, plan)
        try:
            options = provider_options(plan, config, max_batch, input_shapes, gpu_mem_limit)
            sess = make(str(file), options, session_options(config))
            active = list(sess.get_providers())
        except Exception as exc:  # ONNX Runtime raises several types; any failure: try the next
            if plan.provider == CPU:  # the model itself is unusable: no provider will do better
                raise ModelFileError(f"{label}: ONNX Runtime cannot load {file.name}: {one_line(exc)}") from None
            probes[plan.provider] = f"failed: {type(exc).__name__}: {one_line(exc)}"
            continue
        if not active or active[0] != plan.provider:
            probes[plan.provider] = f"failed: the session fell back to {active[:1]}"
            continue
        probes[plan.provider] = None
        sessions[plan.provider] = (sess, file)
    sess, file = sessions[choice.provider]
    got = SHORT.get(choice.provider, choice.provider)
    if choice.fallbacks:
        why = "; ".join(f"{SHORT.get(p, p)} {r}" for p, r in choice.fallbacks)
        log.warning("%s: running on %s (fp16=%s): %s", label, got, plan.fp16, why)
    else:
        log.info("%s: running on %s (fp16=%s)", label, got, plan.fp16)
    return OnnxSession(
        name=name or path.stem, session=sess, choice=choice, path=file,
        use_io_binding=config.io_binding and choice.provider == CUDA, device_id=config.device_id,
    )  # fmt: skip
