"""``talkmesh doctor``: what this node (or pod) really offers talkmesh's GPU paths, measured.

Reports the NVIDIA driver and the CUDA version it supports (``nvidia-smi``, ``libcuda.so.1`` via
ctypes), the ONNX Runtime build and which execution providers can load (the same pre-flight as the
services), which provider a real session gets (a tiny model built in memory), whether a TensorRT
engine builds and is then reused from its cache, whether ``h264_nvenc`` opens (PyAV), frames per
second of the models at batch 1/8/32 (the configured model files when present, else an embedded
96x96 convolutional generator) and of the H.264 encoder at 512x512 and 1280x720 (NVENC when it
opens, else x264). On a machine without a GPU it says so plainly.

The models are written as ONNX protobuf by a small serializer here, so the command needs neither
the ``onnx`` package nor PyTorch (the test checks the files with ``onnx.checker``). Every part is
optional: a missing onnxruntime or PyAV is reported, not fatal.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

BATCHES = (1, 8, 32)
ENCODER_SIZES = {"512x512": (512, 512), "1280x720": (1280, 720)}

# ---------------------------------------------------------------------------------------------
# A minimal ONNX (protobuf) writer: ModelProto with Conv/ConvTranspose/Relu/Sigmoid/Mul graphs.


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # int64 fields: two's complement, as protobuf does
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(num: int, wire: int) -> bytes:
    return _varint(num << 3 | wire)


def _int(num: int, v: int) -> bytes:
    return _key(num, 0) + _varint(v)


def _bytes(num: int, v: bytes | str) -> bytes:
    data = v.encode() if isinstance(v, str) else v
    return _key(num, 2) + _varint(len(data)) + data


FLOAT = 1  # TensorProto.DataType


def _value_info(name: str, dims: Sequence[int | str]) -> bytes:
    shape = b"".join(_bytes(1, _bytes(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor_type = _int(1, FLOAT) + _bytes(2, shape)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def _tensor(name: str, array: np.ndarray) -> bytes:
    a = np.ascontiguousarray(array, dtype="<f4")
    return b"".join(_int(1, d) for d in a.shape) + _int(2, FLOAT) + _bytes(8, name) + _bytes(9, a.tobytes())


def _attr_ints(name: str, values: Sequence[int]) -> bytes:
    return _bytes(1, name) + b"".join(_int(8, v) for v in values) + _int(20, 7)  # AttributeProto.INTS


def _node(op: str, inputs: Sequence[str], outputs: Sequence[str], attrs: Sequence[bytes] = ()) -> bytes:
    body = b"".join(_bytes(1, i) for i in inputs) + b"".join(_bytes(2, o) for o in outputs)
    return body + _bytes(4, op) + b"".join(_bytes(5, a) for a in attrs)


def onnx_model(
    nodes: Sequence[bytes],
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    initializers: Sequence[bytes] = (),
    name: str = "doctor",
) -> bytes:
    """A serialized ONNX ModelProto (IR 8, default opset 17)."""
    graph = b"".join(_bytes(1, n) for n in nodes) + _bytes(2, name)
    graph += b"".join(_bytes(5, t) for t in initializers)
    graph += b"".join(_bytes(11, i) for i in inputs) + b"".join(_bytes(12, o) for o in outputs)
    opset = _bytes(1, "") + _int(2, 17)
    return _int(1, 8) + _bytes(2, "talkmesh-doctor") + _bytes(7, graph) + _bytes(8, opset)


def tiny_model() -> bytes:
    """``y = 2 * x``, x and y ``[batch, 4]`` float: enough to see which provider takes a session."""
    return onnx_model(
        [_node("Mul", ["x", "two"], ["y"])],
        [_value_info("x", ["batch", 4])],
        [_value_info("y", ["batch", 4])],
        [_tensor("two", np.array(2.0, np.float32))],
        "tiny",
    )


#: The embedded benchmark model: a 96x96 encoder-decoder of Wav2Lip's face size (about 0.4 GFLOP
#: per frame); random weights, fixed seed.
EMBEDDED_NAME = "embedded 96x96 conv generator"


def embedded_generator(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    nodes: list[bytes] = []
    inits: list[bytes] = []
    layers = [  # (op, in, out, kernel, stride, pad)
        ("Conv", 6, 32, 3, 1, 1), ("Conv", 32, 64, 3, 2, 1), ("Conv", 64, 128, 3, 2, 1),
        ("ConvTranspose", 128, 64, 4, 2, 1), ("ConvTranspose", 64, 32, 4, 2, 1), ("Conv", 32, 3, 3, 1, 1),
    ]  # fmt: skip
    x = "face"
    for i, (op, cin, cout, k, s, p) in enumerate(layers):
        shape = (cout, cin, k, k) if op == "Conv" else (cin, cout, k, k)
        w = rng.standard_normal(shape).astype(np.float32) * np.float32(np.sqrt(2.0 / (cin * k * k)))
        inits += [_tensor(f"w{i}", w), _tensor(f"b{i}", np.zeros(cout, np.float32))]
        attrs = [_attr_ints("kernel_shape", [k, k]), _attr_ints("strides", [s, s]), _attr_ints("pads", [p] * 4)]
        nodes.append(_node(op, [x, f"w{i}", f"b{i}"], [f"c{i}"], attrs))
        last = i == len(layers) - 1
        nodes.append(_node("Sigmoid" if last else "Relu", [f"c{i}"], ["frames" if last else f"a{i}"]))
        x = f"a{i}"
    return onnx_model(
        nodes, [_value_info("face", ["batch", 6, 96, 96])], [_value_info("frames", ["batch", 3, 96, 96])], inits,
        "generator",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Report


@dataclass
class Report:
    machine: dict[str, Any] = field(default_factory=dict)
    gpu: dict[str, Any] = field(default_factory=dict)
    onnxruntime: dict[str, Any] = field(default_factory=dict)
    tensorrt: dict[str, Any] = field(default_factory=dict)
    nvenc: dict[str, Any] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)
    encoder: dict[str, Any] = field(default_factory=dict)
    summary: list[str] = field(default_factory=list)
    # the checks that failed (a configured model missing or refused, a session that cannot be
    # made, a TensorRT engine that does not build): any makes the exit code 1
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _one_line(text: object, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_section() -> dict[str, Any]:
    return {
        "talkmesh": _version("talkmesh") or "unknown",
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count() or 0,
        "in_container": Path("/.dockerenv").exists() or bool(os.environ.get("KUBERNETES_SERVICE_HOST")),
    }


def nvidia_smi(run: Callable[..., Any] = subprocess.run) -> list[dict[str, str]] | str:
    """One dict per GPU from ``nvidia-smi``, or why there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return "nvidia-smi not found"
    fields = ["name", "driver_version", "memory.total", "memory.free", "compute_cap", "pci.bus_id"]
    try:
        out = run([exe, f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                  capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed: {_one_line(exc)}"
    gpus = []
    for line in str(out.stdout).strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) == len(fields):
            gpus.append(dict(zip([f.replace(".", "_") for f in fields], values, strict=True)))
    return gpus


def gpu_section() -> dict[str, Any]:
    from talkmesh.common.gpu import DRIVER_FLOOR
    from talkmesh.common.onnx import cuda_driver_version, format_cuda_version

    out: dict[str, Any] = {"driver_floor": dict(DRIVER_FLOOR)}
    v = cuda_driver_version()
    out["libcuda"] = (
        f"libcuda.so.1 loaded: the driver supports CUDA {format_cuda_version(v)}" if v is not None
        else "libcuda.so.1 not found (no NVIDIA driver, or the container runtime did not mount it)"
    )  # fmt: skip
    out["driver_cuda"] = format_cuda_version(v) if v is not None else None
    smi = nvidia_smi()
    out["gpus"] = smi if isinstance(smi, list) else []
    out["nvidia_smi"] = "ok" if isinstance(smi, list) else smi
    if isinstance(smi, list) and smi:
        major = int(smi[0]["driver_version"].split(".")[0])
        out["driver_version"] = smi[0]["driver_version"]
        out["driver_ok"] = {use: major >= floor for use, floor in DRIVER_FLOOR.items()}
    return out


def _write(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def onnxruntime_section(tmp: Path) -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"installed": False, "detail": "onnxruntime is not installed in this environment"}
    from talkmesh.common.onnx import GPU_PROVIDERS, ExecutionConfig, ModelError, open_session, provider_preflight

    dist = "onnxruntime-gpu" if _version("onnxruntime-gpu") else "onnxruntime"
    available = list(ort.get_available_providers())
    out: dict[str, Any] = {"installed": True, "version": ort.__version__, "package": dist, "available": available}
    out["preflight"] = {p: provider_preflight(p) or "loads" for p in GPU_PROVIDERS if p in available}
    model = _write(tmp, "tiny.onnx", tiny_model())
    cache = tmp / "trt-cache"
    try:
        s = open_session(model, ExecutionConfig(trt_cache_dir=str(cache)), name="doctor tiny model")
        out["session_provider"] = s.provider
        out["session_fallbacks"] = [f"{p}: {r}" for p, r in s.choice.fallbacks]
        x = np.ones((2, 4), np.float32)
        out["session_result_ok"] = bool(np.array_equal(s.run({"x": x})[0], 2 * x))
    except ModelError as exc:
        out["session_provider"] = None
        out["session_error"] = str(exc)
    return out


def tensorrt_section(tmp: Path, ort_info: dict[str, Any]) -> dict[str, Any]:
    from talkmesh.common.onnx import TENSORRT, ExecutionConfig, ModelError, open_session

    if not ort_info.get("installed") or TENSORRT not in ort_info.get("available", []):
        return {"tried": False, "detail": "this ONNX Runtime build has no TensorRT provider"}
    reason = ort_info.get("preflight", {}).get(TENSORRT)
    if reason != "loads":
        return {"tried": False, "detail": f"TensorRT cannot load: {reason}"}
    cache = tmp / "trt-engines"
    cfg = ExecutionConfig(providers=["tensorrt"], trt_cache_dir=str(cache))
    model = _write(tmp, "engine.onnx", embedded_generator())
    x = np.zeros((1, 6, 96, 96), np.float32)
    out: dict[str, Any] = {"tried": True, "cache_dir": str(cache)}
    try:
        t0 = time.perf_counter()
        first = open_session(model, cfg, name="doctor TensorRT", input_shapes={"face": (6, 96, 96)}, max_batch=8)
        first.run({"face": x})  # the engine is built on the first run
        out["build_seconds"] = round(time.perf_counter() - t0, 2)
        engines = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.suffix in (".engine", ".trt")}
        out["engine_files"] = len(engines)
        t1 = time.perf_counter()
        second = open_session(model, cfg, name="doctor TensorRT", input_shapes={"face": (6, 96, 96)}, max_batch=8)
        second.run({"face": x})
        out["reload_seconds"] = round(time.perf_counter() - t1, 2)
        after = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.suffix in (".engine", ".trt")}
        out["engine_built"] = bool(engines)
        out["engine_reused"] = bool(engines) and after == engines
    except ModelError as exc:
        out["error"] = str(exc)
    return out


def nvenc_section() -> dict[str, Any]:
    try:
        import av
    except ImportError:
        return {"pyav": None, "opens": False, "detail": "PyAV is not installed here (run doctor in the encoder image)"}
    from services.encoder.backends.nvenc import nvenc_open_error

    libavcodec = ".".join(str(v) for v in av.library_versions["libavcodec"])
    out: dict[str, Any] = {"pyav": av.__version__, "libavcodec": libavcodec}
    reason = nvenc_open_error(0)
    out["opens"] = reason is None
    if reason is not None:
        out["detail"] = reason
    return out


def _feeds(session: Any, batch: int) -> dict[str, np.ndarray] | None:
    feeds = {}
    rng = np.random.default_rng(0)
    for i in session.get_inputs():
        dims = list(i.shape)
        if dims and not isinstance(dims[0], int):
            dims[0] = batch
        elif dims and dims[0] != batch:
            return None  # a fixed batch size
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in dims]
        if i.type == "tensor(float)":
            feeds[i.name] = rng.standard_normal(dims).astype(np.float32)
        elif i.type == "tensor(float16)":
            feeds[i.name] = rng.standard_normal(dims).astype(np.float16)
        elif i.type == "tensor(int64)":
            feeds[i.name] = np.ones(dims, np.int64)
        else:
            return None
    return feeds


def measure_model(
    name: str,
    path: Path,
    batches: Sequence[int] = BATCHES,
    *,
    seconds: float = 1.0,
    max_run_seconds: float = 20.0,
    execution: Any = None,
    rules: ServiceRules | None = None,
) -> dict[str, Any]:
    """Frames per second of ``session.run`` at each batch size (after a warm-up run), on the provider
    the session factory picks with ``execution`` (an ExecutionConfig; default: automatic). A batch
    whose warm-up takes longer than ``max_run_seconds`` ends the series (larger batches are skipped).
    ``rules``: the services' settings a configured model must also agree with (ServiceRules)."""
    from talkmesh.common.onnx import ExecutionConfig, ModelError, open_session

    out: dict[str, Any] = {"name": name, "path": str(path), "fps": {}}
    try:
        s = open_session(path, execution or ExecutionConfig(), name=name, max_batch=max(batches))
        refused = _signature_refusal(name, s.session, path, rules or ServiceRules())
    except ModelError as exc:
        out["error"] = str(exc)
        return out
    if refused:  # the renderer would refuse this file at start: no speed to report
        out["error"] = refused
        return out
    out["provider"] = s.provider
    for b in batches:
        feeds = _feeds(s.session, b)
        if feeds is None:
            out["fps"][str(b)] = None
            continue
        try:
            t = time.perf_counter()
            s.run(feeds)
            warm = time.perf_counter() - t
            runs, start = 0, time.perf_counter()
            while runs < 2 or time.perf_counter() - start < seconds:
                s.run(feeds)
                runs += 1
            out["fps"][str(b)] = round(runs * b / (time.perf_counter() - start), 1)
        except Exception as exc:  # out of memory at a large batch, a bad shape guess, ...
            out["fps"][str(b)] = None
            out.setdefault("errors", {})[str(b)] = _one_line(exc)
            break
        if warm > max_run_seconds:
            out["stopped_after_batch"] = b
            break
    return out


WHISPER_ENCODER = "whisper encoder"
#: the services whose configs name model files (``--config`` is one of theirs)
MODEL_SERVICES = ("renderer", "audio_features")


@dataclass(frozen=True)
class ServiceRules:
    """What the services check a configured model against beside its signature: audio_features'
    ``musetalk.version`` (the release its Whisper encoder was exported for; None: no check) and
    the renderer's ``musetalk.vae_latent`` (``mean`` takes a VAE encoder without ``latents_std``)."""

    musetalk_version: str | None = None
    vae_latent: str = "sample"


def _signature_refusal(name: str, session: Any, path: Path, rules: ServiceRules) -> str:
    """Why the service would refuse a configured model (its checks at start, the same functions),
    or "" (fine, or a model no service checks: the embedded one, a ``--model`` file)."""
    if name == WHISPER_ENCODER:
        try:
            from services.audio_features.backends.onnx import check_encoder_session, encoder_release
            from services.audio_features.streaming import MUSETALK_VERSIONS
        except ImportError:  # a doctor without audio_features' code (no check to make)
            return ""
        try:
            check_encoder_session(session, path)
        except ValueError as exc:
            return str(exc)
        version = MUSETALK_VERSIONS.get(rules.musetalk_version or "")
        return version.refusal(path.name, encoder_release(session)) if version else ""
    try:
        from services.renderer.backends import musetalk, wav2lip
        from services.renderer.backends.onnx_models import ModelError, Signature, check_signature, found_signature
    except ImportError:  # a doctor without the renderer's code (no check to make)
        return ""
    expected: dict[str, Signature] = {"wav2lip": wav2lip.SIGNATURE}
    expected.update({f"musetalk {role}": sig for role, (_, sig) in musetalk.FILES.items()})
    if name not in expected:
        return ""
    found = found_signature(session)
    try:
        check_signature(name, expected[name], found)
    except ModelError as exc:
        if name != "musetalk vae_encoder":
            return str(exc)
        try:  # (the backend's own rule: an export from before latents_std)
            check_signature(name, musetalk.VAE_ENCODER_MEAN_ONLY, found)
        except ModelError:
            return str(exc)
        refusal = musetalk.mean_only_refusal(exc, rules.vae_latent)
        return "" if refusal is None else str(refusal)
    return ""


def config_service(config: Path | None, service: str | None = None) -> str | None:
    """Whose config ``config`` is: ``service`` (default ``$TALKMESH_SERVICE``) when it names one of
    MODEL_SERVICES, else the one whose keys the file's fit; a CLI error when that cannot be told.
    None without a file."""
    from talkmesh.cli import CliError
    from talkmesh.common.config import read_yaml, unknown_keys

    if config is None:
        return None
    service = service if service is not None else os.environ.get("TALKMESH_SERVICE", "")
    if service in MODEL_SERVICES:
        return service
    choices = " or ".join(f"TALKMESH_SERVICE={s}" for s in MODEL_SERVICES)
    if service:
        raise CliError(
            f"--config {config}: doctor reads the model paths of the {' and '.join(MODEL_SERVICES)} configs, "
            f"not {service}'s (TALKMESH_SERVICE={service}); set {choices}"
        )
    data = read_yaml(config)
    misfits = {s: unknown_keys(_config_class(s), data) for s in MODEL_SERVICES}
    fits = [s for s, unknown in misfits.items() if not unknown]
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise CliError(
            f"--config {config}: its keys ({', '.join(sorted(data)) or 'none'}) fit both the renderer's and "
            f"audio_features' config; say which it is with {choices}"
        )
    why = "; ".join(f"{s}: unknown key(s) {', '.join(unknown)}" for s, unknown in misfits.items())
    raise CliError(f"--config {config}: not a renderer or audio_features config ({why})")


def _config_class(service: str) -> Any:
    if service == "renderer":
        from services.renderer.config import RendererConfig

        return RendererConfig
    from services.audio_features.config import AudioFeaturesConfig

    return AudioFeaturesConfig


def _service_config(name: str, file: Path | None) -> Any:
    """The config of ``name`` (one of MODEL_SERVICES) as it would start: ``file``, then the
    environment; None without the service's code."""
    from talkmesh.common.config import load_config
    from talkmesh.common.registry import spec

    try:
        cls = _config_class(name)
    except ImportError:
        return None
    return load_config(cls, file, env_prefix=spec(name).env_prefix)


@dataclass(frozen=True)
class ModelConfigs:
    """The renderer's and audio_features' configs as they would start (file + environment), read
    once for all of doctor's checks; None for a service whose code is absent here."""

    renderer: Any
    audio_features: Any

    @classmethod
    def load(cls, config: Path | None = None, service: str | None = None) -> ModelConfigs:
        """``config`` is read for the service ``config_service`` says it belongs to."""
        own = config_service(config, service)
        return cls(*(_service_config(name, config if own == name else None) for name in MODEL_SERVICES))

    def models(self) -> list[tuple[str, Path]]:
        """The model files they name, whether they exist or not (a missing one is a failed check)."""
        found: list[tuple[str, Path]] = []
        r, a = self.renderer, self.audio_features
        with contextlib.suppress(ImportError):  # (the renderer's code without what its backends import)
            from services.renderer.backends.musetalk import FILES

            if r is not None and r.wav2lip.path:
                found.append(("wav2lip", Path(r.wav2lip.path).expanduser()))
            if r is not None and r.musetalk.path:
                root = Path(r.musetalk.path).expanduser()
                found += [(f"musetalk {role}", root / file) for role, (file, _) in FILES.items()]
        if a is not None and a.whisper_encoder.path:
            found.append((WHISPER_ENCODER, Path(a.whisper_encoder.path).expanduser()))
        return found

    @property
    def execution(self) -> Any:
        """The renderer's ``execution`` section: its providers and, above all, its TensorRT engine
        cache, so measuring the configured models reuses (or fills) the shared cache."""
        return None if self.renderer is None else self.renderer.execution

    def rules(self) -> ServiceRules:
        """What the configured models must also agree with; a service whose code is absent adds no rule."""
        return ServiceRules(
            musetalk_version=None if self.audio_features is None else self.audio_features.musetalk.version,
            vae_latent=ServiceRules.vae_latent if self.renderer is None else self.renderer.musetalk.vae_latent,
        )


def models_section(
    tmp: Path,
    ort_info: dict[str, Any],
    models: Sequence[tuple[str, Path]],
    seconds: float,
    execution: Any = None,
    rules: ServiceRules | None = None,
) -> list[dict[str, Any]]:
    """The configured models with the renderer's execution settings, else the embedded one (automatic
    providers, engine cache in ``tmp``)."""
    if not ort_info.get("installed"):
        return []
    if not models:
        from talkmesh.common.onnx import ExecutionConfig

        path = _write(tmp, "generator.onnx", embedded_generator())
        return [measure_model(EMBEDDED_NAME, path, seconds=seconds,
                              execution=ExecutionConfig(trt_cache_dir=str(tmp / "trt-embedded")))]  # fmt: skip
    return [
        measure_model(n, p, seconds=seconds, execution=execution, rules=rules) for n, p in models
    ]


def _test_frames(width: int, height: int, n: int = 8) -> list[np.ndarray]:
    """I420 planes of a moving gradient with some texture (not noise: encoders meet faces, not snow)."""
    y = np.add.outer(np.arange(height), np.arange(width)).astype(np.uint8)
    frames = []
    for k in range(n):
        luma = np.roll(y, 4 * k, axis=1)
        chroma = np.full((height // 2, width), 128, np.uint8)
        frames.append(np.concatenate([luma, chroma]))
    return frames


def encoder_section(nvenc_opens: bool, seconds: float) -> dict[str, Any]:
    try:
        import av
    except ImportError:
        return {"detail": "PyAV is not installed here (run doctor in the encoder image)"}
    from services.encoder.backends import NvencBackend, X264Backend
    from services.encoder.config import VideoConfig

    video = VideoConfig()
    backend = NvencBackend(video) if nvenc_opens else X264Backend(video)
    out: dict[str, Any] = {"encoder": backend.name, "fps": {}}
    fps = Fraction(25)
    for label, (w, h) in ENCODER_SIZES.items():
        settings = backend.settings(w, h, fps)
        try:
            ctx = av.CodecContext.create(settings.codec_name, "w")
            assert isinstance(ctx, av.video.codeccontext.VideoCodecContext)
            ctx.width, ctx.height, ctx.pix_fmt = w, h, settings.pix_fmt
            ctx.time_base = Fraction(1, 25)
            if settings.bit_rate:
                ctx.bit_rate = settings.bit_rate
            ctx.options = dict(settings.options)
            ctx.open()
            planes = _test_frames(w, h)
            n, start = 0, time.perf_counter()
            while n < 25 or time.perf_counter() - start < seconds:
                frame = av.VideoFrame.from_ndarray(planes[n % len(planes)], format="yuv420p")
                frame.pts = n
                ctx.encode(frame)
                n += 1
            ctx.encode(None)
            out["fps"][label] = round(n / (time.perf_counter() - start), 1)
        except (av.FFmpegError, ValueError) as exc:
            out["fps"][label] = None
            out.setdefault("errors", {})[label] = _one_line(exc)
    return out


def summarize(r: Report) -> list[str]:
    lines = []
    gpus = r.gpu.get("gpus") or []
    if r.gpu.get("driver_cuda") is None and not gpus:
        lines.append(
            "CPU only: no NVIDIA GPU or driver found here (libcuda.so.1 cannot be loaded, "
            f"{r.gpu.get('nvidia_smi')}). Everything below ran on the CPU."
        )
    else:
        names = ", ".join(g["name"] for g in gpus) or "unknown GPU"
        lines.append(f"GPU: {names}; driver {r.gpu.get('driver_version', '?')} (CUDA {r.gpu.get('driver_cuda')}).")
        for use, ok in (r.gpu.get("driver_ok") or {}).items():
            if not ok:
                lines.append(f"driver below the {use} floor (>= {r.gpu['driver_floor'][use]}): see docs/DEPLOY.md")
    o = r.onnxruntime
    if not o.get("installed"):
        lines.append("ONNX Runtime: not installed here.")
    else:
        lines.append(
            f"ONNX Runtime {o['version']} ({o['package']}) offers {', '.join(o['available'])}; "
            f"a real session runs on {o.get('session_provider') or 'nothing'}."
        )
        for p, why in o.get("preflight", {}).items():
            if why != "loads":
                lines.append(f"{p} cannot load: {why}.")
    t = r.tensorrt
    if t.get("tried"):
        if t.get("error"):
            lines.append(f"TensorRT: {t['error']}")
        else:
            lines.append(
                f"TensorRT: engine built in {t['build_seconds']} s; reused from the cache: "
                f"{'yes' if t.get('engine_reused') else 'NO'} (second start {t['reload_seconds']} s)."
            )
    else:
        lines.append(f"TensorRT: not tried ({t.get('detail')}).")
    n = r.nvenc
    if n.get("opens"):
        lines.append("h264_nvenc opens: the encoder will use NVENC.")
    else:
        lines.append(f"h264_nvenc does not open ({n.get('detail')}): the encoder uses x264 on the CPU.")
    for m in r.models:
        if m.get("error"):
            lines.append(f"{m['name']}: {m['error']}")
        else:
            fps = ", ".join(f"batch {b}: {v if v is not None else '-'}" for b, v in m["fps"].items())
            lines.append(f"{m['name']} on {m['provider']}: frames/s {fps}.")
    e = r.encoder
    if e.get("fps"):
        fps = ", ".join(f"{k}: {v if v is not None else '-'}" for k, v in e["fps"].items())
        lines.append(f"{e['encoder']} encoding: frames/s {fps}.")
    return lines


def run_doctor(
    *, models: Sequence[tuple[str, Path]] | None = None, config: Path | None = None, seconds: float = 1.0
) -> Report:
    configs = ModelConfigs.load(config)  # before anything is measured: a file doctor cannot place is an error
    r = Report(machine=machine_section(), gpu=gpu_section())
    with tempfile.TemporaryDirectory(prefix="talkmesh-doctor-") as d:
        tmp = Path(d)
        r.onnxruntime = onnxruntime_section(tmp)
        r.tensorrt = tensorrt_section(tmp, r.onnxruntime)
        r.nvenc = nvenc_section()
        chosen = list(models) if models is not None else configs.models()
        r.models = models_section(tmp, r.onnxruntime, chosen, seconds, configs.execution, configs.rules())
        r.encoder = encoder_section(bool(r.nvenc.get("opens")), seconds)
    r.summary = summarize(r)
    r.failures = failures(r)
    return r


def failures(r: Report) -> list[str]:
    """What doctor found broken (not what this machine lacks: no GPU, no NVENC are facts)."""
    out = [f"{m['name']}: {m['error']}" for m in r.models if m.get("error")]
    if r.onnxruntime.get("session_error"):
        out.append(f"ONNX Runtime session: {r.onnxruntime['session_error']}")
    if r.tensorrt.get("error"):
        out.append(f"TensorRT: {r.tensorrt['error']}")
    return out


def format_text(r: Report) -> str:
    out = ["talkmesh doctor", ""]
    out += [f"  {line}" for line in r.summary]
    if r.failures:
        out += ["", f"FAILED: {len(r.failures)} check(s):"] + [f"  {line}" for line in r.failures]
    out += ["", "details:"]

    def walk(prefix: str, value: Any) -> Iterator[str]:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for i, v in enumerate(value):
                yield from walk(f"{prefix}[{i}]", v)
        else:
            yield f"  {prefix}: {value}"

    for section in ("machine", "gpu", "onnxruntime", "tensorrt", "nvenc", "models", "encoder"):
        out += list(walk(section, getattr(r, section)))
    return "\n".join(out)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--model", action="append", default=None, metavar="PATH",
        help="measure this ONNX file (repeatable) instead of the configured / embedded models",
    )  # fmt: skip
    p.add_argument(
        "--config",
        help="the renderer's or audio_features' YAML config (for its model paths): which, its keys tell "
        "(or $TALKMESH_SERVICE, where they fit both)",
    )
    p.add_argument("--seconds", type=float, default=1.0, help="measuring time per batch size and encoder size")


def run(args: argparse.Namespace) -> int:
    models = [(Path(m).name, Path(m)) for m in args.model] if args.model else None
    report = run_doctor(models=models, config=Path(args.config) if args.config else None, seconds=args.seconds)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_text(report))
    return 1 if report.failures else 0

