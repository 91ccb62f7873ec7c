"""Reading the services' own figures: Prometheus /metrics text and per-process CPU time."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from talkmesh.bench.results import RendererMetrics


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu_clock_seconds(pid: int) -> float:
    """CPU seconds a process has run, all its threads (also those that ended), to the nanosecond:
    the kernel's CPU clock of that process (Linux: ``clock_gettime`` of the clock id
    ``(~pid << 3) | 2``, CPUCLOCK_SCHED). /proc/<pid>/stat counts in clock ticks (10 ms), too
    coarse for one request."""
    return time.clock_gettime((~pid << 3) | 2)


def parse_renderer_metrics(text: str) -> RendererMetrics:
    """Batch sizes, frames that skipped the model and frames produced, from /metrics text."""
    out = RendererMetrics()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "talkmesh_batch_size_bucket":
                buckets = out.batch_size_buckets.setdefault(sample.labels.get("model", ""), {})
                buckets[sample.labels["le"]] = sample.value
            elif sample.name == "talkmesh_skipped_frames_total":
                reason = sample.labels.get("reason", "")
                out.skipped_frames[reason] = out.skipped_frames.get(reason, 0.0) + sample.value
            elif sample.name == "talkmesh_frames_total":
                out.frames += sample.value
    return out


def parse_stream_bytes(text: str) -> dict[str, float]:
    """Bytes on the service's gRPC streams so far by direction ("in", "out"), from /metrics text."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "talkmesh_stream_bytes_total":
                d = sample.labels.get("direction", "")
                out[d] = out.get(d, 0.0) + sample.value
    return out


def stream_bytes(urls: dict[str, str], timeout: float = 10.0) -> dict[str, float]:
    """``parse_stream_bytes`` of each service's /metrics, keyed "<service> <direction>"."""
    import urllib.request

    out: dict[str, float] = {}
    for name, url in urls.items():
        with urllib.request.urlopen(url, timeout=timeout) as response:
            for direction, value in parse_stream_bytes(response.read().decode()).items():
                out[f"{name} {direction}"] = value
    return out


def renderer_metrics(url: str, timeout: float = 10.0) -> RendererMetrics:
    """``parse_renderer_metrics`` of the renderer's /metrics at ``url``."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return parse_renderer_metrics(response.read().decode())
