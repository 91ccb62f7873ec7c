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
