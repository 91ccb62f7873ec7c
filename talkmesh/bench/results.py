"""Typed results of `talkmesh bench`: what one request, a series, a sweep and a whole run measured.

Every figure is a field with its unit in the name; ``BenchReport.to_json()`` writes the JSON kept in
docs/benchmarks (the field names are the JSON keys).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from talkmesh.v1 import gateway_pb2 as gpb


@dataclass
class RequestResult:
    """One Speak call seen by the client."""

    ttff: float  # seconds from call start to the first media fragment
    total: float  # seconds from call start to the end of the stream
    audio_seconds: float
    frames: int
    summary: gpb.SpeakSummary

    @property
    def rtf(self) -> float:
        """Audio seconds produced per wall-clock second (x real time)."""
        return self.audio_seconds / self.total if self.total > 0 else 0.0


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p95: float
    p99: float


@dataclass
class LatencySummary:
    """A series of sequential requests."""

    requests: int
    ttff_ms: Percentiles
    ttfa_ms: Percentiles
    stages_ms_p50: dict[str, float]
    stages_ms_p95: dict[str, float]
    ttff_samples_ms: list[float]


@dataclass(frozen=True)
class SingleStream:
    """One long stream (the paragraph), median of a few runs."""

    audio_seconds: float
    rtf_median: float
    frames: int


@dataclass
class ConcurrencyRow:
    """N streams started together."""

    streams: int
    wall_seconds: float
    frames_per_second: float
    aggregate_audio_seconds_per_second: float
    per_stream_rtf_min: float
    per_stream_rtf_median: float
    ttff_ms_median: float
    ttff_ms_max: float
    frames: int
    #: CPU milliseconds per frame in each service process (empty when not profiled)
    cpu_ms_per_frame: dict[str, float] = field(default_factory=dict)
    #: bytes on each service's gRPC streams per second of speech delivered, by "service direction"
    #: (talkmesh_stream_bytes_total: a stream at 1x real time moves this many bytes per second;
    #: empty when not measured)
    wire_bytes_per_audio_second: dict[str, float] = field(default_factory=dict)


@dataclass
class FirstFragmentCpu:
    """CPU the processes spent between a request's call and its first fragment (each request
    stopped there), median over the series, with the time to that fragment."""

    requests: int
    ttff_ms_p50: float
    cpu_ms_p50: float
    #: median per process ("gateway", "encoder"... or "in-process")
    cpu_ms_p50_by_process: dict[str, float]


@dataclass
class SpeakerRun:
    """Latency series, single stream and concurrency rows of one way of speaking (mesh, in-process)."""

    label: str
    latency: LatencySummary
    single_stream: SingleStream
    concurrency: list[ConcurrencyRow]
    #: the yardstick's latency series, run alternated with this one (``paired_latency_series``)
    yardstick_latency: LatencySummary | None = None
    #: CPU spent up to the first fragment (``first_fragment_cpu``; None when not measured)
    first_fragment_cpu: FirstFragmentCpu | None = None

    def row(self, streams: int) -> ConcurrencyRow | None:
        return next((r for r in self.concurrency if r.streams == streams), None)


@dataclass(frozen=True)
class TargetCheck:
    """A performance target and whether the run met it."""

    name: str
    target: float
    value: float
    met: bool
    unit: str
    better: Literal["higher", "lower"]


@dataclass
class RendererMetrics:
    """What the renderer's own /metrics said after the mesh run."""

    #: model -> cumulative histogram bucket (``le``) -> count
    batch_size_buckets: dict[str, dict[str, float]] = field(default_factory=dict)
    #: reason -> frames that skipped model inference
    skipped_frames: dict[str, float] = field(default_factory=dict)
    frames: float = 0.0


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int | None
    memory: str
    python: str
    os: str
    gpu: str = "none"


@dataclass
class BenchReport:
    """One run of the default mode: the mesh, the in-process yardstick and the components."""

    machine: Machine
    command: str
    git: str
    date: str
    backend: str
    size: str
    mesh: SpeakerRun
    renderer_metrics: RendererMetrics | None = None
    inprocess: SpeakerRun | None = None
    #: aggregate throughput lost by the mesh against in-process at 4 streams (%)
    mesh_overhead_pct: float | None = None
    single_stream_overhead_pct: float | None = None
    #: each service's micro-benchmark, as that service reports it (``{"error": ...}`` if it failed)
    components: dict[str, Any] | None = None
    targets: list[TargetCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)
