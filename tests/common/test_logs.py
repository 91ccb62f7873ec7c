"""JSON log lines: the request id, the trace they belong to, and a call's outcome as fields."""

from __future__ import annotations

import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from talkmesh.common.logs import JsonFormatter, request_id_var


def _line(record: logging.LogRecord) -> dict[str, object]:
    out: dict[str, object] = json.loads(JsonFormatter("gateway").format(record))
    return out


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("talkmesh.test", logging.INFO, __file__, 1, msg, None, None)
    record.__dict__.update(extra)
    return record


def test_a_line_inside_a_span_carries_its_trace_and_span_ids() -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("call") as span:
        line = _line(_record("inside", request_id="r-1"))
    ctx = span.get_span_context()
    assert line["trace_id"] == f"{ctx.trace_id:032x}" and line["span_id"] == f"{ctx.span_id:016x}"
    assert line["request_id"] == "r-1" and line["service"] == "gateway" and line["msg"] == "inside"
    outside = _line(_record("outside"))
    assert "trace_id" not in outside and "request_id" not in outside


async def test_each_calls_line_has_method_code_and_duration_as_fields(caplog) -> None:
    """The interceptor's one line per call: its method, status and seconds as JSON fields (a log
    pipeline filters on them without parsing the message), and its trace ids."""
    from talkmesh.common.channel import create_channel
    from talkmesh.common.telemetry import Telemetry
    from talkmesh.testing import serve
    from talkmesh.v1 import tts_pb2, tts_pb2_grpc
    from tests.common.test_server import ToyService

    caplog.set_level(logging.INFO, logger="talkmesh.common.interceptors")
    svc = ToyService(Telemetry("toy", tracer_provider=TracerProvider()))
    token = request_id_var.set("")
    try:
        async with serve(svc) as host, create_channel(host.address) as channel:
            stub = tts_pb2_grpc.TTSStub(channel)
            [c async for c in stub.Synthesize(tts_pb2.SynthesizeRequest(text="hi"))]
    finally:
        request_id_var.reset(token)
    (record,) = [r for r in caplog.records if "Synthesize OK in" in r.getMessage()]
    line = _line(record)
    assert line["method"] == "/talkmesh.v1.TTS/Synthesize" and line["code"] == "OK"
    assert isinstance(line["seconds"], float) and 0 <= line["seconds"] < 10
    assert len(str(line["trace_id"])) == 32 and len(str(line["span_id"])) == 16
