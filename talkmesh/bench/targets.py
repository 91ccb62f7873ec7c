"""The performance targets a run is checked against (README and BENCHMARKS.md quote them)."""

from __future__ import annotations

from dataclasses import dataclass

from talkmesh.bench.results import BenchReport, TargetCheck


@dataclass(frozen=True)
class Targets:
    ttff_p50_ms: float
    single_stream_rtf: float
    ttff_p95_ms: float | None = None
    concurrent_streams_at_1x: int | None = None
    mesh_overhead_pct: float | None = None
    #: the gateway's CPU per frame with 4 streams (it relays only compressed media)
    gateway_cpu_ms_per_frame: float | None = None
    #: mesh time to first fragment p50 over the in-process yardstick's p50, same run
    ttff_p50_over_inprocess: float | None = None


#: The procedural viseme renderer on a 2-core CPU.
VISEME = Targets(
    ttff_p50_ms=150.0,
    ttff_p95_ms=100.0,
    single_stream_rtf=6.0,
    concurrent_streams_at_1x=16,
    mesh_overhead_pct=10.0,
    gateway_cpu_ms_per_frame=0.2,
    ttff_p50_over_inprocess=1.25,
)
#: The Wav2Lip architecture (random weights) through ONNX Runtime on CPU.
WAV2LIP = Targets(ttff_p50_ms=300.0, single_stream_rtf=1.3)


def targets_for(backend: str) -> Targets:
    return WAV2LIP if backend == "wav2lip" else VISEME


def check_targets(report: BenchReport) -> list[TargetCheck]:
    """One row per target that applies to the report's backend and what was measured."""
    goals = targets_for(report.backend)
    mesh = report.mesh
    rows: list[TargetCheck] = []

    def row(name: str, target: float, value: float, higher_is_better: bool, unit: str) -> None:
        met = value >= target if higher_is_better else value <= target
        rows.append(TargetCheck(name, target, value, bool(met), unit, "higher" if higher_is_better else "lower"))

    row("time to first fragment p50", goals.ttff_p50_ms, mesh.latency.ttff_ms.p50, False, "ms")
    if goals.ttff_p95_ms is not None:
        row("time to first fragment p95", goals.ttff_p95_ms, mesh.latency.ttff_ms.p95, False, "ms")
    row("one stream, x real time", goals.single_stream_rtf, mesh.single_stream.rtf_median, True, "x")
    if goals.concurrent_streams_at_1x is not None:
        at1 = max((r.streams for r in mesh.concurrency if r.per_stream_rtf_min >= 1.0), default=0)
        row("streams each at >= 1x real time", goals.concurrent_streams_at_1x, at1, True, "streams")
    if goals.mesh_overhead_pct is not None and report.mesh_overhead_pct is not None:
        row(
            "mesh throughput overhead vs in-process (4 streams)",
            goals.mesh_overhead_pct,
            report.mesh_overhead_pct,
            False,
            "%",
        )
    four = mesh.row(4)
    if goals.gateway_cpu_ms_per_frame is not None and four is not None and "gateway" in four.cpu_ms_per_frame:
        row(
            "gateway CPU per frame (4 streams)",
            goals.gateway_cpu_ms_per_frame,
            four.cpu_ms_per_frame["gateway"],
            False,
            "ms",
        )
    if goals.ttff_p50_over_inprocess is not None and report.inprocess is not None:
        yardstick = report.inprocess.latency.ttff_ms.p50
        row(
            "time to first fragment p50 / in-process p50",
            goals.ttff_p50_over_inprocess,
            mesh.latency.ttff_ms.p50 / yardstick if yardstick > 0 else float("nan"),
            False,
            "x",
        )
    return rows
