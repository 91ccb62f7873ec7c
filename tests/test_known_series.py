"""The series each service exports at 0 from start-up (``Service.known_series``, the interceptor's,
the web edge's): its own only, with label values the code defines (the enums its call sites use)."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from enum import StrEnum
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from talkmesh.common import registry
from talkmesh.common.config import ServerConfig
from talkmesh.common.interceptors import OK, Direction
from talkmesh.common.server import grpc_methods
from talkmesh.common.telemetry import Rejection, Series, Telemetry
from talkmesh.testing import serve

GRPC_SERVICES = [s.name for s in registry.SERVICES if s.protocol == "grpc"]
#: set once at construction, as before (not zero series of a labelled metric)
ALWAYS = {"talkmesh_build_info", "talkmesh_streams_active", "talkmesh_unary_active", "talkmesh_ready"}


def _label_enum(service: str, name: str) -> set[str]:
    """The values of ``services.<service>.metrics.<name>`` (none when the service has no such enum)."""
    try:
        module = importlib.import_module(f"services.{service}.metrics")
    except ModuleNotFoundError:
        return set()
    enum: type[StrEnum] | None = getattr(module, name, None)
    return {str(v) for v in enum} if enum is not None else set()


def _zero_samples(reg: CollectorRegistry) -> Iterator[tuple[str, dict[str, str], float]]:
    for family in reg.collect():
        for s in family.samples:
            # (``*_created``: the time a series was made; `talkmesh serve` turns them off)
            if s.name.startswith("talkmesh_") and s.name not in ALWAYS and not s.name.endswith("_created"):
                yield s.name, dict(s.labels), s.value


def _check_labels(service: str, samples: list[tuple[str, dict[str, str], float]], methods: set[str]) -> None:
    """Every label value is one the code defines, and the service's own."""
    allowed: dict[tuple[str, str], set[str]] = {
        ("talkmesh_stage_duration_seconds", "stage"): _label_enum(service, "Stage"),
        ("talkmesh_queue_depth", "stage"): _label_enum(service, "Queue"),
        ("talkmesh_skipped_frames_total", "reason"): _label_enum(service, "SkipReason"),
        ("talkmesh_live_sessions", "state"): _label_enum(service, "LiveState"),
        ("talkmesh_live_turns_total", "reason"): _label_enum(service, "TurnEnd"),
        ("talkmesh_rejections_total", "reason"): {str(r) for r in Rejection},
        ("talkmesh_streams_total", "method"): methods,
        ("talkmesh_streams_total", "code"): {OK},
        ("talkmesh_stream_bytes_total", "direction"): {str(d) for d in Direction},
    }
    assert samples, service
    for name, sample_labels, value in samples:
        labels = dict(sample_labels)
        assert value == 0, (name, labels)
        assert labels.pop("service") == service, (name, labels)
        labels.pop("le", None)  # a histogram's buckets
        family = next((f for (f, _) in allowed if name.startswith(f)), name)
        for label, value_ in labels.items():
            assert value_ in allowed[(family, label)], f"{service}: {name}{{{label}={value_!r}}} is not the code's"


@pytest.mark.parametrize("name", GRPC_SERVICES)
async def test_a_service_starts_with_its_own_known_series_at_zero(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = registry.spec(name)
    main = importlib.import_module(spec.main_module)
    tel = Telemetry(name)
    service = main.create_service(main.load_config(None, env={}), tel)

    async def no_warm_up() -> None:  # (models, engines: not what is checked here)
        pass

    monkeypatch.setattr(service, "start", no_warm_up)
    assert not list(_zero_samples(tel.metrics.registry))  # nothing labelled yet: the host makes them
    async with serve(service, ServerConfig(port=0, metrics_port=-1, dependency_check_seconds=0)):
        samples = list(_zero_samples(tel.metrics.registry))
    methods = set(grpc_methods(spec.grpc_service_names()))
    _check_labels(name, samples, methods)
    families = {n for n, _, _ in samples}
    # every gRPC service: its methods finished OK, refusals, bytes in and out
    assert {lb["method"] for n, lb, _ in samples if n == "talkmesh_streams_total"} == methods
    reasons = {lb["reason"] for n, lb, _ in samples if n == "talkmesh_rejections_total"}
    assert reasons == {"draining", "overload"} | ({"dependency"} if name == "gateway" else set())
    assert {lb["direction"] for n, lb, _ in samples if n == "talkmesh_stream_bytes_total"} == {"in", "out"}
    # its own series only: the renderer's skipped frames, the live clock's (encoder) and sessions
    # (the gateway's it owns, the encoder's it encodes)
    assert ("talkmesh_skipped_frames_total" in families) == (name == "renderer")
    assert ("talkmesh_live_sessions" in families) == (name in ("gateway", "encoder"))
    assert ("talkmesh_live_late_ticks_total" in families) == (name == "encoder")
    stages = {lb["stage"] for n, lb, _ in samples if n == "talkmesh_stage_duration_seconds_count"}
    assert stages == _label_enum(name, "Stage")


async def test_the_web_edge_starts_with_its_routes_and_refusals_at_zero() -> None:
    from services.web.main import create_service, load_config
    from services.web.server import REJECTIONS

    tel = Telemetry("web")
    host = create_service(load_config(None, env={}), tel)
    app = host.app()
    tel.init_series(host.known_series(app))
    samples = list(_zero_samples(tel.metrics.registry))
    routes = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    methods = {
        f"{m} {r}" for m, r in routes if m != "HEAD" and r not in ("/healthz", "/readyz", "/metrics", "/static")
    }
    assert {"POST /v1/speak", "GET /v1/live", "GET /v1/voices"} <= methods
    _check_labels("web", [(n, lb, v) for n, lb, v in samples if "stage" not in lb], methods)
    assert {lb["method"] for n, lb, _ in samples if n == "talkmesh_streams_total"} == methods
    stages = {lb["stage"] for n, lb, _ in samples if n == "talkmesh_stage_duration_seconds_count"}
    assert stages == {f"http {m.partition(' ')[2]}" for m in methods}
    reasons = {lb["reason"] for n, lb, _ in samples if n == "talkmesh_rejections_total"}
    assert reasons == {str(r) for r in REJECTIONS} and reasons <= {str(r) for r in Rejection}


def test_init_series_makes_every_combination_at_zero_for_this_service_only() -> None:
    tel = Telemetry("renderer")
    m = tel.metrics
    series: list[Series] = [
        Series(m.rejections_total, ("overload", "draining")),
        Series(m.stream_bytes_total, ("in", "out")),
        Series(m.frames_total),
        Series(m.live_interrupt_seconds),
    ]
    tel.init_series(series)
    reg: Any = m.registry
    for reason in ("overload", "draining"):
        assert reg.get_sample_value("talkmesh_rejections_total", {"service": "renderer", "reason": reason}) == 0
    assert reg.get_sample_value("talkmesh_frames_total", {"service": "renderer"}) == 0
    buckets = [
        s for f in reg.collect() for s in f.samples if s.name == "talkmesh_live_interrupt_seconds_bucket"
    ]
    assert buckets and all(s.value == 0 and s.labels["service"] == "renderer" for s in buckets)
    # a series already counting keeps its count
    m.frames_total.labels("renderer").inc(3)
    tel.init_series(series)
    assert reg.get_sample_value("talkmesh_frames_total", {"service": "renderer"}) == 3
    with pytest.raises(ValueError):  # one collection of values per label after `service`
        tel.init_series([Series(m.rejections_total)])
