"""Prometheus metrics and OpenTelemetry tracing, one ``Telemetry`` object per service instance.

No global registries: each service owns a CollectorRegistry and a tracer, so five services can run
in one test process and be scraped and traced separately. Tracing is configured by the standard
``OTEL_*`` variables (OTLP export when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_TRACES_EXPORTER``
is set, off otherwise; ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`` picks gRPC, the default, or
http/protobuf when opentelemetry-exporter-otlp-proto-http is installed: ``talkmesh[otlp-http]``);
tests pass an explicit TracerProvider with an in-memory exporter.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, NamedTuple

from opentelemetry import trace
from opentelemetry.trace import Span, Tracer, TracerProvider
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

import talkmesh
from talkmesh.v1 import common_pb2

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

# 1 ms .. 30 s, roughly x2 per step. Every threshold a rule in deploy/prometheus compares a
# histogram_quantile with must be one of these edges (the 2 s time-to-first-frame SLO: 2.0), else
# the quantile is interpolated inside a bucket and the alert fires or stays quiet by accident
# (tests/deploy/test_observability_config.py checks it).
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75,
    1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 20.0, 30.0,
)  # fmt: skip
# Real-time factor: 1.0 is the alert's edge; tts and the viseme renderer run hundreds of times
# faster than real time, so the buckets go on to 2000x (a p50 above the top edge would read as it).
RTF_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)


class Rejection(StrEnum):
    """Why a request was refused before work started: ``talkmesh_rejections_total{reason}``."""

    #: the replica is shutting down (every service's calls; the web edge's live sessions)
    DRAINING = "draining"
    #: a stage every call needs does not answer health checks (the gateway)
    DEPENDENCY = "dependency"
    #: the replica is full (server.max_concurrent_streams, ..._unary; the web edge's limits):
    #: what TalkmeshRejectingStreams alerts on
    OVERLOAD = "overload"
    #: the web edge: one client's share of its speaks or uploads is used up
    PER_CLIENT = "per_client"
    #: the web edge: one access token subject's live sessions (web.max_sessions_per_subject)
    PER_SUBJECT = "per_subject"
    #: the web edge: one address's live sessions (web.max_sessions_per_ip)
    PER_IP = "per_ip"
    #: the web edge: one address's open connections (web.max_connections_per_ip)
    CONNECTIONS_PER_IP = "connections_per_ip"


class LiveState(StrEnum):
    """``talkmesh_live_sessions{state}``: the gateway counts the live sessions it owns, the encoder
    those it encodes (a session is in both; each service exports it from its ``metrics``)."""

    #: a turn is playing (the encoder's: its frames make ``talkmesh_live_lead_frames``)
    SPEAKING = "speaking"
    IDLE = "idle"


class ReportedStage(NamedTuple):
    """A stage timing the encoder measures and reports in its last ``MediaChunk.stages`` (it
    pulls the renderer's frames, so only it sees them), and the gateway folds into a Speak's
    ``SpeakSummary`` and ``talkmesh_stage_duration_seconds``: one name for both sides."""

    service: str
    stage: str

    def timing(self, seconds: float) -> common_pb2.StageTiming:
        return common_pb2.StageTiming(service=self.service, stage=self.stage, seconds=seconds)


#: the renderer's first frame, from the first renderer input the encoder sent
RENDERER_FIRST_FRAME = ReportedStage("renderer", "first_frame")
#: the encoder's first fragment, from the renderer's first frame (fragmented containers only)
ENCODER_FIRST_FRAGMENT = ReportedStage("encoder", "first_fragment")


class LiveSessionState:
    """One live session's place in ``talkmesh_live_sessions{state}``: ``set(state)`` moves it there
    (counted once), ``set(None)`` takes it out (the session ended)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._gauge = telemetry.metrics.live_sessions
        self._service = telemetry.service
        self.state: LiveState | None = None

    def set(self, state: LiveState | None) -> None:
        if state == self.state:
            return
        if self.state is not None:
            self._gauge.labels(self._service, self.state).dec()
        if state is not None:
            self._gauge.labels(self._service, state).inc()
        self.state = state


class Series:
    """Series of one labelled metric that a service knows it records, before its first request:
    the metric labelled with the service's name and each combination of ``values`` (one collection
    per further label, in the metric's order). ``Telemetry.init_series`` creates them at 0."""

    def __init__(self, metric: Counter | Gauge | Histogram, *values: Iterable[str]) -> None:
        self.metric = metric
        self.values = tuple(tuple(str(v) for v in vs) for vs in values)

    def label_values(self) -> Iterator[tuple[str, ...]]:
        """The label values after ``service`` of each series."""
        return itertools.product(*self.values)


@dataclass
class Metrics:
    registry: CollectorRegistry
    stage_duration: Histogram
    time_to_first_audio: Histogram
    time_to_first_frame: Histogram
    streams_active: Gauge
    unary_active: Gauge
    streams_total: Counter
    rejections_total: Counter
    frames_total: Counter
    queue_depth: Gauge
    realtime_factor: Histogram
    batch_size: Histogram
    cache_requests_total: Counter
    backend_info: Gauge
    build_info: Gauge
    ready: Gauge
    skipped_frames_total: Counter
    stream_bytes_total: Counter
    live_sessions: Gauge
    live_interrupt_seconds: Histogram
    live_underruns_total: Counter
    live_late_ticks_total: Counter
    live_lead_frames: Gauge
    live_turns_total: Counter
    live_turn_start_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
        # process_* (resident memory, CPU seconds, open fds) and python_info on every service's
        # own registry: memory can be alerted on (TalkmeshMemoryNearLimit) without a node exporter.
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        m = cls(
            registry=reg,
            stage_duration=Histogram(
                "talkmesh_stage_duration_seconds",
                "Time spent in one stage for one request.",
                ["service", "stage"],
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            time_to_first_audio=Histogram(
                "talkmesh_time_to_first_audio_seconds",
                "Request received to first audio chunk produced.",
                ["service"],
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            time_to_first_frame=Histogram(
                "talkmesh_time_to_first_frame_seconds",
                "Request received to first video output (gateway: first fragment of a streamed"
                " container sent; whole-file MP4 requests are not counted).",
                ["service"],
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            # Streams only (a streamed request or answer: the media work the autoscalers scale on);
            # unary metadata calls (ListAvatars, GetAvatar, ListVoices...) in talkmesh_unary_active.
            streams_active=Gauge(
                "talkmesh_streams_active", "Streaming RPCs in flight (not unary calls).", ["service"], registry=reg
            ),
            unary_active=Gauge("talkmesh_unary_active", "Unary RPCs in flight.", ["service"], registry=reg),
            streams_total=Counter(
                "talkmesh_streams_total",
                "Finished RPCs by gRPC status code.",
                ["service", "method", "code"],
                registry=reg,
            ),
            rejections_total=Counter(
                "talkmesh_rejections_total",
                "Requests refused before work started, by reason.",
                ["service", "reason"],
                registry=reg,
            ),
            frames_total=Counter("talkmesh_frames_total", "Video frames produced.", ["service"], registry=reg),
            queue_depth=Gauge(
                "talkmesh_queue_depth",
                "Items waiting in a bounded queue.",
                ["service", "stage"],
                registry=reg,
            ),
            realtime_factor=Histogram(
                "talkmesh_realtime_factor",
                "Media seconds produced per wall-clock second, per request.",
                ["service"],
                buckets=RTF_BUCKETS,
                registry=reg,
            ),
            batch_size=Histogram(
                "talkmesh_batch_size",
                "Frames per model batch.",
                ["service", "model"],
                buckets=BATCH_BUCKETS,
                registry=reg,
            ),
            cache_requests_total=Counter(
                "talkmesh_cache_requests_total",
                "Cache look-ups by result (hit or miss).",
                ["service", "cache", "result"],
                registry=reg,
            ),
            backend_info=Gauge(
                "talkmesh_backend_info",
                "Backend in use (value 1): execution provider, encoder, TTS engine.",
                ["service", "kind", "name"],
                registry=reg,
            ),
            build_info=Gauge(
                "talkmesh_build_info",
                "talkmesh version (value 1).",
                ["service", "version"],
                registry=reg,
            ),
            # What the readiness probe sees, for the alert that every process of a service runs but
            # none is ready (Prometheus scrapes pods that are not ready too: talkmesh_build_info stays).
            ready=Gauge(
                "talkmesh_ready",
                "1 while the service reports ready (gRPC health \"\" SERVING; the web edge: /readyz "
                "200), else 0 (warming up, a stage it calls not answering, draining).",
                ["service"],
                registry=reg,
            ),
            skipped_frames_total=Counter(
                "talkmesh_skipped_frames_total",
                "Frames that skipped model inference (silence or frame skip).",
                ["service", "reason"],
                registry=reg,
            ),
            stream_bytes_total=Counter(
                "talkmesh_stream_bytes_total",
                "Serialized message bytes on the service's gRPC streams (received: in, sent: out).",
                ["service", "direction"],
                registry=reg,
            ),
            live_sessions=Gauge(
                "talkmesh_live_sessions",
                "Live sessions open, by state (speaking: a turn is playing; idle: none is); the gateway "
                "counts those it owns, the encoder those it encodes (a session is in both).",
                ["service", "state"],
                registry=reg,
            ),
            live_interrupt_seconds=Histogram(
                "talkmesh_live_interrupt_seconds",
                "Interrupt received to acknowledged (the cut applied).",
                ["service"],
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
            live_underruns_total=Counter(
                "talkmesh_live_underruns_total",
                "Speech frames that were not rendered in time (the previous frame was repeated).",
                ["service"],
                registry=reg,
            ),
            live_late_ticks_total=Counter(
                "talkmesh_live_late_ticks_total",
                "Live frames sent more than one frame interval after they were due.",
                ["service"],
                registry=reg,
            ),
            live_lead_frames=Gauge(
                "talkmesh_live_lead_frames",
                "Rendered speech frames waiting ahead of the clock, summed over the live sessions "
                "(0 while none speaks).",
                ["service"],
                registry=reg,
            ),
            live_turns_total=Counter(
                "talkmesh_live_turns_total",
                "Live turns ended, by how (completed, interrupted, failed, session_ended: the session "
                "ended first, by a drain, a timeout or the client leaving).",
                ["service", "reason"],
                registry=reg,
            ),
            live_turn_start_seconds=Histogram(
                "talkmesh_live_turn_start_seconds",
                "A live turn's first text or sound received to its first frame sent, for turns that "
                "found nothing playing or queued (a queued turn waits for those before it).",
                ["service"],
                buckets=LATENCY_BUCKETS,
                registry=reg,
            ),
        )
        return m


def tracer_provider_from_env(service: str) -> TracerProvider:
    """An SDK provider exporting OTLP when the standard OTEL_* variables ask for it, else no-op."""
    wants = os.environ.get("OTEL_TRACES_EXPORTER", "").lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    disabled = os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true"
    if disabled or wants == "none" or not (endpoint or wants in ("otlp", "console")):
        return trace.NoOpTracerProvider()
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME", f"talkmesh-{service}")})
    provider = SdkTracerProvider(resource=resource)
    exporter: SpanExporter
    if wants == "console":
        exporter = ConsoleSpanExporter()
        log.info("tracing: spans to the console")
    else:
        exporter = otlp_span_exporter()
        log.info("tracing: OTLP over %s to %s", otlp_protocol(), _endpoint_for_log())
        _quiet_export_errors()
    # a collector that is slow or gone costs at most the exporter's timeout per batch
    # (EXPORT_TIMEOUT_S, set on the exporter: the batch processor's own export timeout is unused
    # by this SDK), and Telemetry.shutdown waits for the last spans a bounded time
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


#: How long one export of spans may take unless OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT says otherwise
#: (the SDK's default is 10 s per try); also what ``Telemetry.shutdown`` waits for the last spans.
EXPORT_TIMEOUT_S = 2.0

#: Export failures logged at most once per this many seconds per logger (the SDK logs every batch)
EXPORT_ERROR_LOG_INTERVAL_S = 60.0

_EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.sdk.trace.export",
    "opentelemetry.sdk._shared_internal",
)


class _OncePer(logging.Filter):
    """Lets one warning or error through per ``interval`` seconds, saying how many were held back."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self._next = 0.0
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = time.monotonic()
        if now < self._next:
            self._held += 1
            return False
        if self._held:
            record.msg = f"{record.msg} ({self._held} more span export messages were not logged)"
        self._next, self._held = now + self.interval, 0
        return True


def _quiet_export_errors() -> None:
    """A missing collector is one log line a minute, not two per batch of spans."""
    for name in _EXPORT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OncePer) for f in logger.filters):
            logger.addFilter(_OncePer(EXPORT_ERROR_LOG_INTERVAL_S))


def _export_timeout() -> float | None:
    """EXPORT_TIMEOUT_S unless the standard variables set the exporter's timeout."""
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT") or os.environ.get("OTEL_EXPORTER_OTLP_TIMEOUT"):
        return None
    return EXPORT_TIMEOUT_S


def otlp_protocol() -> str:
    """The OTLP transport the standard variables ask for (traces' own first), "grpc" by default."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = os.environ.get(name, "").strip().lower()
        if value:
            return value
    return "grpc"


def otlp_span_exporter() -> SpanExporter:
    """OTLP over gRPC, or over HTTP (protobuf) when OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL says
    http/protobuf and its exporter is installed; a protocol that cannot be honoured is said in the
    log at start-up (the spans then go over gRPC, which an HTTP-only endpoint refuses)."""
    protocol = otlp_protocol()
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
        except ImportError:
            log.warning(
                "OTLP protocol http/protobuf asked for, but opentelemetry-exporter-otlp-proto-http is not "
                "installed (pip install 'talkmesh[otlp-http]'): exporting spans over gRPC instead, to %s",
                _endpoint_for_log(),
            )
        else:
            return HttpExporter(timeout=_export_timeout())  # type: ignore[no-any-return]
    elif protocol != "grpc":
        log.warning(
            "OTLP protocol %r is not supported (grpc or http/protobuf): exporting spans over gRPC instead, to %s",
            protocol,
            _endpoint_for_log(),
        )
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(timeout=_export_timeout())


def _endpoint_for_log() -> str:
    return (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or "the default endpoint (localhost:4317)"
    )


class Telemetry:
    """Metrics and tracer of one service instance."""

    def __init__(
        self,
        service: str,
        *,
        tracer_provider: TracerProvider | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.service = service
        self.metrics = Metrics.create(registry)
        self.tracer_provider = tracer_provider if tracer_provider is not None else trace.NoOpTracerProvider()
        self.tracer: Tracer = self.tracer_provider.get_tracer("talkmesh", talkmesh.__version__)
        self.metrics.build_info.labels(service, talkmesh.__version__).set(1)
        self.metrics.ready.labels(service).set(0)  # (the host sets it: ServiceHost, the web edge)
        self.metrics.streams_active.labels(service).set(0)
        self.metrics.unary_active.labels(service).set(0)

    @contextlib.contextmanager
    def stage(self, stage: str, *, traced: bool = True, **attributes: str | int | float | bool) -> Iterator[Span]:
        """Times a stage: a child span (unless ``traced`` is False: a stage repeated through a
        long stream, past its first few times) and an observation of
        talkmesh_stage_duration_seconds."""
        start = time.perf_counter()
        try:
            if not traced:
                yield trace.INVALID_SPAN
                return
            with self.tracer.start_as_current_span(f"{self.service}.{stage}", attributes=attributes) as span:
                yield span
        finally:
            self.metrics.stage_duration.labels(self.service, stage).observe(time.perf_counter() - start)

    def init_series(self, series: Iterable[Series]) -> None:
        """Creates each of ``series`` for this service at 0 (a counter or gauge at 0, a histogram
        with every bucket at 0): prometheus_client exports a labelled metric's series only once
        ``labels(...)`` was called, so until the first event a dashboard panel would show "No data"
        and an alert's rate() would miss that first event. Called at start-up with the label
        values the service knows in advance (``Service.known_series``)."""
        for s in series:
            for values in s.label_values():
                s.metric.labels(self.service, *values)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.metrics.stage_duration.labels(self.service, stage).observe(seconds)

    def set_backend(self, kind: str, name: str) -> None:
        self.metrics.backend_info.labels(self.service, kind, name).set(1)

    def cache(self, cache: str, hit: bool) -> None:
        self.metrics.cache_requests_total.labels(self.service, cache, "hit" if hit else "miss").inc()

    def queue_gauge(self, stage: str) -> Gauge:
        return self.metrics.queue_depth.labels(self.service, stage)  # type: ignore[no-any-return]

    def shutdown(self, timeout: float = EXPORT_TIMEOUT_S + 1.0) -> None:
        """Flushes the last spans, waiting at most ``timeout`` seconds (a collector that does not
        answer must not hold a draining process past its grace period)."""
        shutdown = getattr(self.tracer_provider, "shutdown", None)
        if not callable(shutdown):
            return
        done = threading.Thread(target=shutdown, name="telemetry-shutdown", daemon=True)
        done.start()
        done.join(timeout)
        if done.is_alive():
            log.warning("tracing: the last spans were not exported within %.1f s; exiting without them", timeout)
