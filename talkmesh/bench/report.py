"""Writing a run down: the machine, the git revision, markdown for BENCHMARKS.md, JSON and a plot."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from talkmesh.bench.results import BenchReport, Machine

BENCHMARKS_HEADER = (
    "# talkmesh benchmarks\n\nEvery section below is one run of `talkmesh bench`, appended by the tool itself.\n\n"
)


def machine() -> Machine:
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
    return Machine(cpu, os.cpu_count(), mem, platform.python_version(), platform.platform())


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def to_markdown(report: BenchReport) -> str:
    m = report.machine
    mesh = report.mesh
    lat = mesh.latency
    lines = [
        f"## {report.date} · backend `{report.backend}` · size `{report.size}` · rev `{report.git}`",
        "",
        f"- Machine: {m.cpu}, {m.cores} cores, {m.memory}, GPU: {m.gpu}, Python {m.python}",
        f"- Command: `{report.command}`",
        "- Five services as separate processes on loopback; client in the same process as the bench.",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    for t in report.targets:
        cmp = "≤" if t.better == "lower" else "≥"
        lines.append(
            f"| {t.name} | {cmp} {t.target:g} {t.unit} | {t.value:.1f} {t.unit} | {'yes' if t.met else '**no**'} |"
        )
    lines += [
        "",
        f"Latency over {lat.requests} sequential requests (texts of one sentence, client side):",
        "",
        "| | p50 | p95 | p99 |",
        "|---|---|---|---|",
        f"| time to first fragment (ms) | {lat.ttff_ms.p50:.1f} | {lat.ttff_ms.p95:.1f} | {lat.ttff_ms.p99:.1f} |",
        f"| time to first audio (ms) | {lat.ttfa_ms.p50:.1f} | {lat.ttfa_ms.p95:.1f} | {lat.ttfa_ms.p99:.1f} |",
        "",
        "Per-stage latency seen by the gateway (ms):",
        "",
        "| stage | p50 | p95 |",
        "|---|---|---|",
    ]
    for k, v in lat.stages_ms_p50.items():
        lines.append(f"| {k} | {v:.1f} | {lat.stages_ms_p95[k]:.1f} |")
    ss = mesh.single_stream
    lines += [
        "",
        f"One stream ({ss.audio_seconds:.1f} s paragraph, {ss.frames} frames): "
        f"**{ss.rtf_median:.2f}x real time** (median of 3).",
        "",
        "Concurrency sweep (the paragraph, all streams started together):",
        "",
        "| streams | per-stream x real time (min / median) | ttff median / max (ms) | aggregate audio s/s | frames/s |",
        "|---|---|---|---|---|",
    ]
    for r in mesh.concurrency:
        lines.append(
            f"| {r.streams} | {r.per_stream_rtf_min:.2f} / {r.per_stream_rtf_median:.2f} | "
            f"{r.ttff_ms_median:.0f} / {r.ttff_ms_max:.0f} | {r.aggregate_audio_seconds_per_second:.2f} "
            f"| {r.frames_per_second:.1f} |"
        )
    profiled = [r for r in mesh.concurrency if r.cpu_ms_per_frame]
    if profiled:
        services = list(profiled[0].cpu_ms_per_frame)
        lines += [
            "",
            "CPU per frame in each service process during the sweep (ms, from /proc/<pid>/stat):",
            "",
            "| streams | " + " | ".join(services) + " | total |",
            "|---|" + "---|" * (len(services) + 1),
        ]
        for r in profiled:
            c = r.cpu_ms_per_frame
            lines.append(
                f"| {r.streams} | " + " | ".join(f"{c[k]:.2f}" for k in services) + f" | {sum(c.values()):.2f} |"
            )
    wired = [r for r in mesh.concurrency if r.wire_bytes_per_audio_second]
    if wired:
        keys = sorted(wired[0].wire_bytes_per_audio_second)
        lines += [
            "",
            "Bytes on each service's gRPC streams per second of speech, i.e. KB/s of one stream at 1x real"
            " time (talkmesh_stream_bytes_total, counted by the server side of each hop). With renderer and"
            " encoder co-located, every hop but the renderer's crosses pods; the renderer's raw frames"
            " (renderer out) stay inside the media pod:",
            "",
            "| streams | " + " | ".join(keys) + " | crossing pods |",
            "|---|" + "---|" * (len(keys) + 1),
        ]
        for r in wired:
            w = r.wire_bytes_per_audio_second
            cross = sum(v for k, v in w.items() if not k.startswith("renderer "))
            lines.append(
                f"| {r.streams} | " + " | ".join(f"{w[k] / 1000:.1f}" for k in keys) + f" | {cross / 1000:.1f} |"
            )
    lines += _first_fragment_cpu_lines(report)
    rm = report.renderer_metrics
    if rm:
        lines += [
            "",
            f"Renderer after the mesh run: {rm.frames:.0f} frames, skipped model inference on "
            + ", ".join(f"{v:.0f} ({k})" for k, v in rm.skipped_frames.items())
            + (
                f"; batch-size histogram (cumulative buckets): {json.dumps(rm.batch_size_buckets)}"
                if rm.batch_size_buckets
                else ""
            ),
        ]
    fwd = (report.components or {}).get("wav2lip_forward_fps")
    if isinstance(fwd, dict) and fwd and "error" not in fwd:
        best = max(float(v) for v in fwd.values())
        four = mesh.row(4)
        lines += [
            "",
            "Raw ONNX Runtime forward of the Wav2Lip-architecture model (random weights): "
            + ", ".join(f"batch {k}: {float(v):.1f} frames/s" for k, v in fwd.items()),
        ]
        if four:
            lines.append(
                f"4 sessions through the whole mesh: {four.frames_per_second:.1f} frames/s = "
                f"{100 * four.frames_per_second / best:.0f}% of the best raw forward speed "
                "(silent frames skip the model, so this can exceed 100%)."
            )
    ip = report.inprocess
    if ip is not None:
        i4 = ip.concurrency[0]
        ratio = mesh.single_stream.rtf_median / ip.single_stream.rtf_median
        lines += [
            "",
            "In-process yardstick (same stages, no gRPC, one process):",
            "",
            f"- time to first fragment p50 {ip.latency.ttff_ms.p50:.1f} ms, p95 {ip.latency.ttff_ms.p95:.1f} ms"
            + (" (its requests alternated with the mesh's)" if report.mesh.yardstick_latency else ""),
            f"- one stream {ip.single_stream.rtf_median:.2f}x real time "
            f"(the mesh's single stream is {ratio:.2f}x that: separate processes use both cores, "
            "one process shares one GIL)",
            f"- 4 streams: aggregate {i4.aggregate_audio_seconds_per_second:.2f} audio s/s"
            + (
                f" (mesh throughput overhead {report.mesh_overhead_pct:.1f}%)"
                if report.mesh_overhead_pct is not None
                else ""
            ),
        ]
    if report.components:
        lines += [
            "",
            "Per-service micro-benchmarks (in-process):",
            "",
            "```json",
            json.dumps(report.components, indent=1, default=str)[:6000],
            "```",
        ]
    lines.append("")
    return "\n".join(lines)


def _first_fragment_cpu_lines(report: BenchReport) -> list[str]:
    mesh = report.mesh.first_fragment_cpu
    yardstick = report.inprocess.first_fragment_cpu if report.inprocess else None
    if mesh is None or yardstick is None:
        return []
    names = list(mesh.cpu_ms_p50_by_process)
    return [
        "",
        f"CPU spent on the way to the first fragment ({mesh.requests} requests each, alternated with the"
        " yardstick, each stopped at its first fragment; ms, medians; each process's CPU clock"
        " (clock_gettime, all its threads); the mesh's client is not counted, the yardstick's process is"
        " its own client):",
        "",
        "| | time to first fragment | CPU, all processes | " + " | ".join(names) + " |",
        "|---|---|---|" + "---|" * len(names),
        f"| mesh | {mesh.ttff_ms_p50:.1f} | {mesh.cpu_ms_p50:.1f} | "
        + " | ".join(f"{mesh.cpu_ms_p50_by_process[k]:.1f}" for k in names)
        + " |",
        f"| in-process | {yardstick.ttff_ms_p50:.1f} | {yardstick.cpu_ms_p50:.1f} |" + " |" * len(names),
    ]


def plot(report: BenchReport, path: Path) -> bool:
    """A PNG of the latency distribution and the sweep; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.hist(report.mesh.latency.ttff_samples_ms, bins=20, color="#4477aa")
    a.set_xlabel("time to first fragment (ms)")
    a.set_ylabel("requests")
    a.set_title("Latency distribution (mesh)")
    rows = report.mesh.concurrency
    b.plot([r.streams for r in rows], [r.per_stream_rtf_min for r in rows], "o-", label="per-stream min")
    b.plot([r.streams for r in rows], [r.per_stream_rtf_median for r in rows], "s--", label="per-stream median")
    b.axhline(1.0, color="red", lw=1, label="real time")
    b.set_xlabel("concurrent streams")
    b.set_ylabel("x real time")
    b.set_title("Concurrency sweep")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


@dataclass(frozen=True)
class Written:
    json_path: Path
    plot_path: Path | None
    markdown: str


def write_report(report: BenchReport, out_dir: Path, markdown_path: Path | None) -> Written:
    """JSON and PNG into ``out_dir``; the markdown section appended to ``markdown_path`` (if any)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    json_path = out_dir / f"bench-{stamp}-{report.backend}.json"
    json_path.write_text(report.to_json())
    png = out_dir / f"bench-{stamp}-{report.backend}.png"
    plotted = plot(report, png)
    md = to_markdown(report)
    if markdown_path is not None:
        if not markdown_path.exists():
            markdown_path.write_text(BENCHMARKS_HEADER)
        with markdown_path.open("a") as fh:
            fh.write(md + ("" if not plotted else f"\nPlot: `{png}`\n") + "\n")
    return Written(json_path, png if plotted else None, md)


def publish(text: str, data: object, out_dir: str, json_name: str, markdown_path: str) -> Path:
    """A mode's results: the Markdown printed and appended to ``markdown_path`` (if set), the
    dataclass ``data`` as JSON in ``out_dir`` (``{stamp}`` in ``json_name``: the time). The JSON path."""
    print(text)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / json_name.format(stamp=time.strftime("%Y%m%d-%H%M%S"))
    path.write_text(json.dumps(dataclasses.asdict(data), indent=2))  # type: ignore[call-overload]
    if markdown_path:
        with Path(markdown_path).open("a") as fh:
            fh.write("\n" + text)
    return path
