"""Trace export from the standard OTEL_* variables: the OTLP protocol is honoured, or said."""

from __future__ import annotations

import builtins
import logging

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

from talkmesh.common.telemetry import otlp_span_exporter, tracer_provider_from_env

OTEL_VARIABLES = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_BSP_EXPORT_TIMEOUT",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def exporters(provider: object) -> list[object]:
    processors = provider._active_span_processor._span_processors  # type: ignore[attr-defined]
    return [p.span_exporter for p in processors]


def test_grpc_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    provider = tracer_provider_from_env("gateway")
    try:
        (exporter,) = exporters(provider)
        assert isinstance(exporter, GrpcExporter)
    finally:
        provider.shutdown()  # type: ignore[attr-defined]


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"])
def test_http_protobuf_is_honoured(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    http = pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv(variable, "http/protobuf")
    provider = tracer_provider_from_env("gateway")
    try:
        (exporter,) = exporters(provider)
        assert isinstance(exporter, http.OTLPSpanExporter)
        assert exporter._endpoint == "http://collector:4318/v1/traces"
    finally:
        provider.shutdown()  # type: ignore[attr-defined]


def test_http_protobuf_without_its_exporter_is_said(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_import = builtins.__import__

    def no_http_exporter(name: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("opentelemetry.exporter.otlp.proto.http"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_http_exporter)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    with caplog.at_level(logging.WARNING, logger="talkmesh.common.telemetry"):
        exporter = otlp_span_exporter()
    assert isinstance(exporter, GrpcExporter)
    (record,) = caplog.records
    assert "http/protobuf" in record.message and "opentelemetry-exporter-otlp-proto-http" in record.message
    assert "talkmesh[otlp-http]" in record.message and "http://collector:4318" in record.message


def test_an_unknown_protocol_is_said(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with caplog.at_level(logging.WARNING, logger="talkmesh.common.telemetry"):
        assert isinstance(otlp_span_exporter(), GrpcExporter)
    (record,) = caplog.records
    assert "'http/json' is not supported" in record.message


def test_a_collector_that_never_answers_holds_shutdown_for_seconds_not_tens(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A collector that accepts connections and never answers (a stuck one): the export gives up
    after EXPORT_TIMEOUT_S and the shutdown returns within its bound, where the SDK's defaults held
    a draining process for 10-30 s. Where spans go is said at start-up."""
    import socket
    import time

    from talkmesh.common.telemetry import EXPORT_TIMEOUT_S, Telemetry

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # accepted by the kernel, never read
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{hole.getsockname()[1]}")
        with caplog.at_level(logging.INFO, logger="talkmesh.common.telemetry"):
            provider = tracer_provider_from_env("gateway")
        assert f"OTLP over grpc to http://127.0.0.1:{hole.getsockname()[1]}" in caplog.text
        (exporter,) = exporters(provider)
        assert exporter._timeout == EXPORT_TIMEOUT_S  # type: ignore[attr-defined]
        telemetry = Telemetry("gateway", tracer_provider=provider)
        for i in range(50):
            with telemetry.stage(f"s{i}"):
                pass
        start = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="talkmesh.common.telemetry"):
            telemetry.shutdown(timeout=EXPORT_TIMEOUT_S * 4)
        assert time.monotonic() - start < EXPORT_TIMEOUT_S * 2.5
        # the exporter gave up by itself (its timeout), not the bounded wait of shutdown
        assert "were not exported within" not in caplog.text
    finally:
        hole.close()


def test_the_standard_timeout_variable_still_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "7")
    provider = tracer_provider_from_env("gateway")
    try:
        (exporter,) = exporters(provider)
        assert exporter._timeout == 7.0  # type: ignore[attr-defined]
    finally:
        provider.shutdown()  # type: ignore[attr-defined]


def test_export_failures_are_logged_once_a_minute() -> None:
    from talkmesh.common.telemetry import _OncePer

    gate = _OncePer(60.0)

    def record(level: int) -> logging.LogRecord:
        return logging.LogRecord("x", level, __file__, 1, "Failed to export traces", None, None)

    assert gate.filter(record(logging.ERROR))
    assert not any(gate.filter(record(logging.WARNING)) for _ in range(5))
    assert gate.filter(record(logging.INFO))  # below warnings: untouched
    gate._next = 0.0  # a minute later
    later = record(logging.ERROR)
    assert gate.filter(later) and "5 more" in later.getMessage()
