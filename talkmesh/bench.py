"""`talkmesh bench`: time to first fragment, real-time factor and concurrency, mesh vs in-process.

Drives the five services as separate processes (started here, or an existing gateway with
``--target``), then the same stages in one process without gRPC, and the per-stage
micro-benchmarks each service ships. Writes JSON, a PNG plot, and appends a markdown section with
the machine, the command and the git revision to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talkmesh.v1 import gateway_pb2 as gpb

TEXTS = (
    "Hello there.",
    "Good morning, how can I help you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Please remember to bring your notebook to the next lesson.",
    "Your order has shipped and should arrive on Tuesday.",
    "Let's practise the vowel sounds together, slowly.",
    "Breathe in, and then say the word: banana.",
    "I am sorry, I did not quite catch that. Could you repeat it?",
    "Mountains rise above the valley where the river bends.",
    "Thank you for calling. Your call is important to us.",
)
PARAGRAPH = (
    "Welcome to the lesson. Today we practise the sounds p, b and m, which close the lips. "
    "Listen carefully, then repeat after me. Papa bought a big map. Mom made bread with butter. "
    "Well done! Now let's try a longer sentence, and remember to breathe between the phrases. "
    "When you are ready, press the button and speak clearly into the microphone."
)
TARGETS = {
    "ttff_p50_ms": 150.0,
    "ttff_p95_ms": 250.0,
    "single_stream_rtf": 6.0,
    "concurrent_streams_at_1x": 8,
    "mesh_overhead_pct": 10.0,
}
WAV2LIP_TARGETS = {"ttff_p50_ms": 300.0, "single_stream_rtf": 1.3}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="bench an already running gateway instead of starting a mesh")
    p.add_argument("--requests", type=int, default=30, help="sequential requests for the latency figures")
    p.add_argument("--concurrency", default="1,2,4,8,12,16", help="concurrency levels of the sweep")
    p.add_argument("--backend", default="viseme", choices=("viseme", "wav2lip"))
    p.add_argument("--size", default="512", help="output size preset: 360p, 512, 720p, ...")
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process yardstick")
    p.add_argument("--no-components", action="store_true", help="skip the per-service micro-benchmarks")
    p.add_argument("--quick", action="store_true", help="few requests, small sweep (smoke test)")
    p.add_argument("--out-dir", default="docs/benchmarks", help="where the JSON and the PNG plot go")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="file to append the results to ('' = none)")
    p.add_argument("--model-dir", default="", help="where the random-weight Wav2Lip model is kept")


@dataclass
class RequestResult:
    ttff: float  # client: call start to first media fragment
    total: float
    audio_seconds: float
    frames: int
    summary: gpb.SpeakSummary
    ok: bool = True
    error: str = ""

    @property
    def rtf(self) -> float:
        return self.audio_seconds / self.total if self.total > 0 else 0.0


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


Speak = Callable[[gpb.SpeakRequest], Awaitable[RequestResult]]


def _request(text: str, args: argparse.Namespace, i: int) -> gpb.SpeakRequest:
    from talkmesh.client import TalkmeshClient

    return TalkmeshClient.request(text, size=args.size, backend=args.backend, request_id=f"bench-{i}")


async def _consume(chunks: Any, start: float) -> RequestResult:
    ttff = 0.0
    summary = gpb.SpeakSummary()
    async for chunk in chunks:
        kind = chunk.WhichOneof("kind")
        if kind == "media" and not chunk.media.init_segment and chunk.media.data and not ttff:
            ttff = time.perf_counter() - start
        elif kind == "summary":
            summary = chunk.summary
    total = time.perf_counter() - start
    return RequestResult(ttff, total, summary.audio_seconds, summary.frames, summary)


def grpc_speaker(target: str) -> tuple[Speak, Callable[[], Awaitable[None]]]:
    from talkmesh.client import TalkmeshClient

    client = TalkmeshClient(target)

    async def speak(req: gpb.SpeakRequest) -> RequestResult:
        start = time.perf_counter()
        return await _consume(client.speak(req), start)

    return speak, client.close


async def inprocess_speaker(env: dict[str, str]) -> tuple[Speak, Callable[[], Awaitable[None]]]:
    """The same five stages in this process: servicers called directly, no gRPC, no network."""
    import importlib

    from services.encoder.render import LocalFrameSource
    from services.gateway.inprocess import InProcessDownstreams
    from services.gateway.main import load_config as gateway_config
    from services.gateway.server import GatewayServicer
    from talkmesh.common.inprocess import HandlerRecorder, InProcessContext
    from talkmesh.common.telemetry import Telemetry

    services: dict[str, Any] = {}
    for name in ("tts", "audio_features", "renderer", "encoder"):
        main = importlib.import_module(f"services.{name}.main")
        extra = {}
        if name == "encoder":  # the encoder pulls frames from the renderer's handler, in-process
            render = HandlerRecorder([services["renderer"]]).behavior("talkmesh.v1.Renderer/Render")
            extra["frame_source"] = LocalFrameSource(render)
        svc = main.create_service(main.load_config(None, env=env), Telemetry(name), **extra)
        await svc.start()
        services[name] = svc
    gcfg = gateway_config(None, env=env)
    servicer = GatewayServicer(gcfg, Telemetry("gateway"), InProcessDownstreams(services))

    async def speak(req: gpb.SpeakRequest) -> RequestResult:
        start = time.perf_counter()
        return await _consume(servicer.Speak(req, InProcessContext()), start)

    async def close() -> None:
        for svc in services.values():
            await svc.stop()

    return speak, close


async def latency_series(speak: Speak, args: argparse.Namespace, n: int) -> list[RequestResult]:
    out = []
    for i in range(n):
        out.append(await speak(_request(TEXTS[i % len(TEXTS)], args, i)))
    return out


async def concurrent(speak: Speak, args: argparse.Namespace, streams: int, text: str) -> dict[str, Any]:
    start = time.perf_counter()
    results = await asyncio.gather(*(speak(_request(text, args, i)) for i in range(streams)))
    wall = time.perf_counter() - start
    audio = sum(r.audio_seconds for r in results)
    rtfs = [r.rtf for r in results]
    return {
        "streams": streams,
        "wall_seconds": wall,
        "frames_per_second": sum(r.frames for r in results) / wall,
        "aggregate_audio_seconds_per_second": audio / wall,
        "per_stream_rtf_min": min(rtfs),
        "per_stream_rtf_median": statistics.median(rtfs),
        "ttff_ms_median": 1000 * statistics.median(r.ttff for r in results),
        "ttff_ms_max": 1000 * max(r.ttff for r in results),
        "frames": sum(r.frames for r in results),
    }


def summarize_latency(results: list[RequestResult]) -> dict[str, Any]:
    ttff = [r.ttff * 1000 for r in results]
    ttfa = [r.summary.time_to_first_audio_seconds * 1000 for r in results]
    stages: dict[str, list[float]] = {}
    for r in results:
        for st in r.summary.stages:
            stages.setdefault(st.stage, []).append(st.seconds * 1000)
    return {
        "requests": len(results),
        "ttff_ms": {"p50": pct(ttff, 0.5), "p95": pct(ttff, 0.95), "p99": pct(ttff, 0.99)},
        "ttfa_ms": {"p50": pct(ttfa, 0.5), "p95": pct(ttfa, 0.95), "p99": pct(ttfa, 0.99)},
        "stages_ms_p50": {k: pct(v, 0.5) for k, v in stages.items()},
        "stages_ms_p95": {k: pct(v, 0.95) for k, v in stages.items()},
        "ttff_samples_ms": ttff,
    }


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_speaker(
    speak: Speak,
    args: argparse.Namespace,
    label: str,
    sweep: bool,
    cpu: Callable[[], dict[str, float]] | None = None,
) -> dict[str, Any]:
    for i in range(2):  # warm-up: first connections, lazy allocations
        await speak(_request(TEXTS[i], args, 1000 + i))
    out: dict[str, Any] = {"label": label}
    print(f"[{label}] {args.requests} sequential requests ...", flush=True)
    out["latency"] = summarize_latency(await latency_series(speak, args, args.requests))
    single = [await speak(_request(PARAGRAPH, args, 2000 + i)) for i in range(3)]
    out["single_stream"] = {
        "audio_seconds": single[0].audio_seconds,
        "rtf_median": statistics.median(r.rtf for r in single),
        "frames": single[0].frames,
    }
    print(f"[{label}] one stream: {out['single_stream']['rtf_median']:.2f}x real time", flush=True)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    rows = []
    for c in levels if sweep else [4]:
        before = cpu() if cpu else {}
        row = await concurrent(speak, args, c, PARAGRAPH)
        if cpu and row["frames"]:
            after = cpu()
            row["cpu_ms_per_frame"] = {k: 1000 * (after[k] - before[k]) / row["frames"] for k in before}
        rows.append(row)
        print(
            f"[{label}] {c:>2} streams: per-stream rtf min {row['per_stream_rtf_min']:.2f}, "
            f"ttff median {row['ttff_ms_median']:.0f} ms",
            flush=True,
        )
        if sweep and row["per_stream_rtf_min"] < 1.0:
            break
    out["concurrency"] = rows
    return out


def mesh_env(args: argparse.Namespace, model_dir: Path) -> dict[str, str]:
    env = {"TALKMESH_GATEWAY__DEFAULT_RENDERER_BACKEND": args.backend}
    if args.backend == "wav2lip":
        from services.renderer.bench_models import write_random_wav2lip

        path = write_random_wav2lip(model_dir)
        env["TALKMESH_RENDERER__WAV2LIP__PATH"] = str(path)
        env["TALKMESH_RENDERER__BACKENDS"] = "viseme,wav2lip"
    return env


async def components(args: argparse.Namespace, model_path: Path | None, model_dir: Path) -> dict[str, Any]:
    """Each service's own micro-benchmark (in this process)."""
    out: dict[str, Any] = {}

    async def attempt(name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        print(f"[components] {name} ...", flush=True)
        try:
            out[name] = await fn()
        except Exception as exc:  # a missing optional piece must not lose the whole run
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}

    from services.tts.bench import run_benchmark as tts_bench

    await attempt("tts", lambda: tts_bench(runs=10 if args.quick else 50, paragraph_runs=2 if args.quick else 5))

    from services.audio_features.bench import run_bench as features_bench

    encoder_path = ""
    try:  # a random-weight Whisper-tiny encoder, when the model tools (PyTorch) are installed
        from tools.export_whisper_encoder import write_random_tiny

        encoder_path = str(await asyncio.to_thread(write_random_tiny, model_dir))
    except ImportError:
        pass
    await attempt(
        "audio_features",
        lambda: asyncio.to_thread(features_bench, seconds=3 if args.quick else 10, encoder_path=encoder_path or None),
    )
    from services.renderer.bench import run_bench as renderer_bench

    await attempt("renderer", lambda: asyncio.to_thread(renderer_bench, quick=args.quick))
    from services.encoder.bench import measure as encoder_bench

    await attempt("encoder", lambda: encoder_bench(("512",) if args.quick else ("360p", "512", "720p")))
    if model_path is not None:
        from services.renderer.bench_models import measure_forward

        await attempt(
            "wav2lip_forward_fps",
            lambda: asyncio.to_thread(measure_forward, model_path, (1, 8, 32), min_seconds=1 if args.quick else 3),
        )
    return out


def renderer_metrics(url: str) -> dict[str, Any]:
    """Batch sizes, skipped frames and frames from the renderer's own /metrics after the run."""
    import urllib.request

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, Any] = {"batch_size_buckets": {}, "skipped_frames": {}, "frames": 0.0}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("talkmesh_batch_size_bucket"):
            model = name.split('model="', 1)[1].split('"', 1)[0]
            le = name.split('le="', 1)[1].split('"', 1)[0]
            out["batch_size_buckets"].setdefault(model, {})[le] = float(value)
        elif name.startswith("talkmesh_skipped_frames_total"):
            reason = name.split('reason="', 1)[1].split('"', 1)[0]
            out["skipped_frames"][reason] = float(value)
        elif name.startswith("talkmesh_frames_total"):
            out["frames"] = float(value)
    return out


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "python": platform.python_version(),
        "os": platform.platform(),
        "gpu": "none",
    }


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    from talkmesh.launcher import Mesh

    if args.quick:
        args.requests = min(args.requests, 5)
        args.concurrency = "1,2"
    model_dir = Path(args.model_dir or Path(tempfile.gettempdir()) / "talkmesh-bench-models")
    env = mesh_env(args, model_dir)
    report: dict[str, Any] = {
        "machine": machine(),
        "command": "talkmesh bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        "git": git_revision(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "backend": args.backend,
        "size": args.size,
    }
    if args.target:
        speak, close = grpc_speaker(args.target)
        try:
            report["mesh"] = await run_speaker(speak, args, "mesh", sweep=True)
        finally:
            await close()
    else:
        with tempfile.TemporaryDirectory() as logs:
            async with Mesh(env=env, log_dir=Path(logs)) as mesh:
                speak, close = grpc_speaker(mesh.gateway)
                pids = {name: sp.proc.pid for name, sp in mesh.processes.items()}

                def cpu() -> dict[str, float]:
                    return {name: process_cpu_seconds(pid) for name, pid in pids.items()}

                try:
                    report["mesh"] = await run_speaker(speak, args, "mesh", sweep=True, cpu=cpu)
                finally:
                    await close()
                report["renderer_metrics"] = await asyncio.to_thread(renderer_metrics, mesh.metrics_url("renderer"))
    if not args.no_inprocess:
        merged = dict(os.environ)
        merged.update(env)
        speak, close = await inprocess_speaker(merged)
        try:
            report["inprocess"] = await run_speaker(speak, args, "in-process", sweep=False)
        finally:
            await close()
        mesh4 = next((r for r in report["mesh"]["concurrency"] if r["streams"] == 4), None)
        in4 = report["inprocess"]["concurrency"][0]
        if mesh4:
            m, i = mesh4["aggregate_audio_seconds_per_second"], in4["aggregate_audio_seconds_per_second"]
            report["mesh_overhead_pct"] = 100.0 * (i - m) / i if i > 0 else float("nan")
        report["single_stream_overhead_pct"] = 100.0 * (
            1 - report["mesh"]["single_stream"]["rtf_median"] / report["inprocess"]["single_stream"]["rtf_median"]
        )
    if not args.no_components:
        model_path = None
        if args.backend == "wav2lip":
            from services.renderer.bench_models import write_random_wav2lip

            model_path = write_random_wav2lip(model_dir)
        report["components"] = await components(args, model_path, model_dir)
    report["targets"] = check_targets(report, args.backend)
    return report


def check_targets(report: dict[str, Any], backend: str) -> list[dict[str, Any]]:
    mesh = report["mesh"]
    lat = mesh["latency"]["ttff_ms"]
    rows: list[dict[str, Any]] = []

    def row(name: str, target: float, value: float, higher_is_better: bool, unit: str) -> None:
        met = value >= target if higher_is_better else value <= target
        rows.append(
            {
                "name": name,
                "target": target,
                "value": value,
                "met": bool(met),
                "unit": unit,
                "better": "higher" if higher_is_better else "lower",
            }
        )

    if backend == "wav2lip":
        row("time to first fragment p50", WAV2LIP_TARGETS["ttff_p50_ms"], lat["p50"], False, "ms")
        row(
            "one stream, x real time",
            WAV2LIP_TARGETS["single_stream_rtf"],
            mesh["single_stream"]["rtf_median"],
            True,
            "x",
        )
        return rows
    row("time to first fragment p50", TARGETS["ttff_p50_ms"], lat["p50"], False, "ms")
    row("time to first fragment p95", TARGETS["ttff_p95_ms"], lat["p95"], False, "ms")
    row("one stream, x real time", TARGETS["single_stream_rtf"], mesh["single_stream"]["rtf_median"], True, "x")
    at1 = max((r["streams"] for r in mesh["concurrency"] if r["per_stream_rtf_min"] >= 1.0), default=0)
    row("streams each at >= 1x real time", TARGETS["concurrent_streams_at_1x"], at1, True, "streams")
    if "mesh_overhead_pct" in report:
        row(
            "mesh throughput overhead vs in-process (4 streams)",
            TARGETS["mesh_overhead_pct"],
            report["mesh_overhead_pct"],
            False,
            "%",
        )
    return rows


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    mesh = report["mesh"]
    lat = mesh["latency"]
    lines = [
        f"## {report['date']} · backend `{report['backend']}` · size `{report['size']}` · rev `{report['git']}`",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, GPU: {m['gpu']}, Python {m['python']}",
        f"- Command: `{report['command']}`",
        "- Five services as separate processes on loopback; client in the same process as the bench.",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    for t in report["targets"]:
        cmp = "≤" if t["better"] == "lower" else "≥"
        lines.append(
            f"| {t['name']} | {cmp} {t['target']:g} {t['unit']} | {t['value']:.1f} {t['unit']} | "
            f"{'yes' if t['met'] else '**no**'} |"
        )
    lines += [
        "",
        f"Latency over {lat['requests']} sequential requests (texts of one sentence, client side):",
        "",
        "| | p50 | p95 | p99 |",
        "|---|---|---|---|",
        f"| time to first fragment (ms) | {lat['ttff_ms']['p50']:.1f} | {lat['ttff_ms']['p95']:.1f} | "
        f"{lat['ttff_ms']['p99']:.1f} |",
        f"| time to first audio (ms) | {lat['ttfa_ms']['p50']:.1f} | {lat['ttfa_ms']['p95']:.1f} | "
        f"{lat['ttfa_ms']['p99']:.1f} |",
        "",
        "Per-stage latency seen by the gateway (ms):",
        "",
        "| stage | p50 | p95 |",
        "|---|---|---|",
    ]
    for k, v in lat["stages_ms_p50"].items():
        lines.append(f"| {k} | {v:.1f} | {lat['stages_ms_p95'][k]:.1f} |")
    ss = mesh["single_stream"]
    lines += [
        "",
        f"One stream ({ss['audio_seconds']:.1f} s paragraph, {ss['frames']} frames): "
        f"**{ss['rtf_median']:.2f}x real time** (median of 3).",
        "",
        "Concurrency sweep (the paragraph, all streams started together):",
        "",
        "| streams | per-stream x real time (min / median) | ttff median / max (ms) | aggregate audio s/s | frames/s |",
        "|---|---|---|---|---|",
    ]
    for r in mesh["concurrency"]:
        lines.append(
            f"| {r['streams']} | {r['per_stream_rtf_min']:.2f} / {r['per_stream_rtf_median']:.2f} | "
            f"{r['ttff_ms_median']:.0f} / {r['ttff_ms_max']:.0f} | {r['aggregate_audio_seconds_per_second']:.2f} "
            f"| {r['frames_per_second']:.1f} |"
        )
    profiled = [r for r in mesh["concurrency"] if r.get("cpu_ms_per_frame")]
    if profiled:
        services = list(profiled[0]["cpu_ms_per_frame"])
        lines += [
            "",
            "CPU per frame in each service process during the sweep (ms, from /proc/<pid>/stat):",
            "",
            "| streams | " + " | ".join(services) + " | total |",
            "|---|" + "---|" * (len(services) + 1),
        ]
        for r in profiled:
            c = r["cpu_ms_per_frame"]
            lines.append(
                f"| {r['streams']} | " + " | ".join(f"{c[k]:.2f}" for k in services) + f" | {sum(c.values()):.2f} |"
            )
    rm = report.get("renderer_metrics")
    if rm:
        lines += [
            "",
            f"Renderer after the mesh run: {rm['frames']:.0f} frames, skipped model inference on "
            + ", ".join(f"{v:.0f} ({k})" for k, v in rm["skipped_frames"].items())
            + (
                f"; batch-size histogram (cumulative buckets): {json.dumps(rm['batch_size_buckets'])}"
                if rm["batch_size_buckets"]
                else ""
            ),
        ]
    fwd = (report.get("components") or {}).get("wav2lip_forward_fps")
    if isinstance(fwd, dict) and fwd and "error" not in fwd:
        best = max(float(v) for v in fwd.values())
        four = next((r for r in mesh["concurrency"] if r["streams"] == 4), None)
        lines += [
            "",
            "Raw ONNX Runtime forward of the Wav2Lip-architecture model (random weights): "
            + ", ".join(f"batch {k}: {float(v):.1f} frames/s" for k, v in fwd.items()),
        ]
        if four:
            lines.append(
                f"4 sessions through the whole mesh: {four['frames_per_second']:.1f} frames/s = "
                f"{100 * four['frames_per_second'] / best:.0f}% of the best raw forward speed "
                "(silent frames skip the model, so this can exceed 100%)."
            )
    if "inprocess" in report:
        ip = report["inprocess"]
        i4 = ip["concurrency"][0]
        ratio = mesh["single_stream"]["rtf_median"] / ip["single_stream"]["rtf_median"]
        lines += [
            "",
            "In-process yardstick (same stages, no gRPC, one process):",
            "",
            f"- time to first fragment p50 {ip['latency']['ttff_ms']['p50']:.1f} ms, "
            f"p95 {ip['latency']['ttff_ms']['p95']:.1f} ms",
            f"- one stream {ip['single_stream']['rtf_median']:.2f}x real time "
            f"(the mesh's single stream is {ratio:.2f}x that: separate processes use both cores, "
            "one process shares one GIL)",
            f"- 4 streams: aggregate {i4['aggregate_audio_seconds_per_second']:.2f} audio s/s"
            + (
                f" (mesh throughput overhead {report['mesh_overhead_pct']:.1f}%)"
                if "mesh_overhead_pct" in report
                else ""
            ),
        ]
    comp = report.get("components")
    if comp:
        lines += [
            "",
            "Per-service micro-benchmarks (in-process):",
            "",
            "```json",
            json.dumps(comp, indent=1, default=str)[:6000],
            "```",
        ]
    lines.append("")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    samples = report["mesh"]["latency"]["ttff_samples_ms"]
    a.hist(samples, bins=20, color="#4477aa")
    a.set_xlabel("time to first fragment (ms)")
    a.set_ylabel("requests")
    a.set_title("Latency distribution (mesh)")
    rows = report["mesh"]["concurrency"]
    b.plot([r["streams"] for r in rows], [r["per_stream_rtf_min"] for r in rows], "o-", label="per-stream min")
    b.plot([r["streams"] for r in rows], [r["per_stream_rtf_median"] for r in rows], "s--", label="per-stream median")
    b.axhline(1.0, color="red", lw=1, label="real time")
    b.set_xlabel("concurrent streams")
    b.set_ylabel("x real time")
    b.set_title("Concurrency sweep")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING)
    report = asyncio.run(bench(args))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = out_dir / f"bench-{stamp}-{args.backend}.json"
    json_path.write_text(json.dumps(report, indent=1, default=str))
    png = out_dir / f"bench-{stamp}-{args.backend}.png"
    plotted = plot(report, png)
    md = to_markdown(report)
    if args.markdown:
        path = Path(args.markdown)
        if not path.exists():
            path.write_text(
                "# talkmesh benchmarks\n\nEvery section below is one run of `talkmesh bench`, appended "
                "by the tool itself.\n\n"
            )
        with path.open("a") as fh:
            fh.write(md + ("" if not plotted else f"\nPlot: `{png}`\n") + "\n")
    print(md)
    print(f"JSON: {json_path}" + (f"   plot: {png}" if plotted else ""))
    return 0
