"""ServiceHost and the interceptors, on a toy TTS servicer served on port 0."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from talkmesh.common.channel import create_channel
from talkmesh.common.config import ServerConfig
from talkmesh.common.errors import InvalidArgument, Unavailable
from talkmesh.common.logs import request_id_var
from talkmesh.common.server import Service
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import common_pb2, tts_pb2, tts_pb2_grpc


class ToyServicer(tts_pb2_grpc.TTSServicer):
    def __init__(self) -> None:
        self.seen_request_ids: list[str] = []
        self.release = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def Synthesize(self, request, context):
        if not request.text:
            raise InvalidArgument("text", "must not be empty")
        if request.text == "boom":
            raise RuntimeError("kaboom")
        if request.text == "midway":  # a stage this one called broke its stream
            yield common_pb2.AudioChunk(seq=0)
            raise Unavailable("upstream: Stream removed (Socket closed)")
        self.seen_request_ids.append(request_id_var.get())
        self.started.set()
        try:
            for i in range(3):
                if request.text == "wait" and i > 0:
                    await self.release.wait()
                yield common_pb2.AudioChunk(seq=i, end_of_stream=i == 2)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def ListVoices(self, request, context):
        if request.voice == "wait":
            await self.release.wait()
        return tts_pb2.ListVoicesResponse(voices=[tts_pb2.Voice(id="toy")])


class ToyService(Service):
    name = "toy"

    def __init__(self, telemetry: Telemetry) -> None:
        super().__init__(telemetry)
        self.servicer = ToyServicer()

    def register(self, server):
        tts_pb2_grpc.add_TTSServicer_to_server(self.servicer, server)
        return ["talkmesh.v1.TTS"]


def _value(tel: Telemetry, name: str, labels: dict[str, str]) -> float:
    v = tel.metrics.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


async def _read_rest(call) -> list:
    out = []
    while (msg := await call.read()) is not grpc.aio.EOF:
        out.append(msg)
    return out


def _req(text: str) -> tts_pb2.SynthesizeRequest:
    return tts_pb2.SynthesizeRequest(text=text)


async def test_stream_ok_metrics_and_request_id():
    tel = Telemetry("toy")
    svc = ToyService(tel)
    async with serve(svc) as host:
        async with create_channel(host.address) as ch:
            stub = tts_pb2_grpc.TTSStub(ch)
            chunks = [c async for c in stub.Synthesize(_req("hi"), metadata=(("x-request-id", "abc123"),))]
    assert [c.seq for c in chunks] == [0, 1, 2]
    assert svc.servicer.seen_request_ids == ["abc123"]
    labels = {"service": "toy", "method": "/talkmesh.v1.TTS/Synthesize", "code": "OK"}
    assert _value(tel, "talkmesh_streams_total", labels) == 1
    assert _value(tel, "talkmesh_streams_active", {"service": "toy"}) == 0


async def test_errors_map_to_status_and_service_survives():
    tel = Telemetry("toy")
    async with serve(ToyService(tel)) as host:
        async with create_channel(host.address) as ch:
            stub = tts_pb2_grpc.TTSStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [c async for c in stub.Synthesize(_req(""))]
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details() == "text: must not be empty"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [c async for c in stub.Synthesize(_req("boom"))]
            assert err.value.code() == grpc.StatusCode.INTERNAL
            assert "kaboom" in err.value.details()
            assert len([c async for c in stub.Synthesize(_req("ok"))]) == 3
    m = "/talkmesh.v1.TTS/Synthesize"
    assert _value(tel, "talkmesh_streams_total", {"service": "toy", "method": m, "code": "INVALID_ARGUMENT"}) == 1
    assert _value(tel, "talkmesh_streams_total", {"service": "toy", "method": m, "code": "INTERNAL"}) == 1


async def test_a_call_that_fails_midway_logs_its_status_message(caplog):
    """An on-call engineer follows a failed Speak's request id through the logs: the line of the
    call that failed says why ("tts: Stream removed"), not only its code and time."""
    caplog.set_level(logging.INFO, logger="talkmesh.common.interceptors")
    async with serve(ToyService(Telemetry("toy"))) as host:
        async with create_channel(host.address) as ch:
            stub = tts_pb2_grpc.TTSStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [c async for c in stub.Synthesize(_req("midway"))]
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert len([c async for c in stub.Synthesize(_req("ok"))]) == 3
    lines = [r for r in caplog.records if "/talkmesh.v1.TTS/Synthesize" in r.getMessage()]
    failed = [r for r in lines if " UNAVAILABLE in " in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING
    assert failed[0].getMessage().endswith(": upstream: Stream removed (Socket closed)")
    assert failed[0].fields["message"] == "upstream: Stream removed (Socket closed)"  # type: ignore[attr-defined]
    ok = [r for r in lines if " OK in " in r.getMessage()]
    assert len(ok) == 1 and ok[0].getMessage().endswith(" s") and "message" not in ok[0].fields  # type: ignore[attr-defined]


async def test_admission_control_refuses_over_limit_but_health_answers():
    tel = Telemetry("toy")
    svc = ToyService(tel)
    cfg = ServerConfig(port=0, max_concurrent_streams=1)
    async with serve(svc, cfg) as host:
        async with create_channel(host.address) as ch:
            stub = tts_pb2_grpc.TTSStub(ch)
            first = stub.Synthesize(_req("wait"))
            await first.read()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [c async for c in stub.Synthesize(_req("hi"))]
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            health = health_pb2_grpc.HealthStub(ch)
            resp = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            svc.servicer.release.set()
            rest = await _read_rest(first)
            assert len(rest) == 2
    assert _value(tel, "talkmesh_rejections_total", {"service": "toy", "reason": "overload"}) == 1


async def test_unary_calls_have_a_limit_of_their_own_beside_the_streams():
    """A replica whose streams are all taken (the gateway with its 16 Speaks) still answers a
    cheap unary call (GET voices); unary calls are refused only by their own limit, which leaves
    the streams' room alone."""
    tel = Telemetry("toy")
    svc = ToyService(tel)
    cfg = ServerConfig(port=0, max_concurrent_streams=1, max_concurrent_unary=1)
    async with serve(svc, cfg) as host, create_channel(host.address) as ch:
        stub = tts_pb2_grpc.TTSStub(ch)
        stream = stub.Synthesize(_req("wait"))
        await stream.read()
        full = stub.Synthesize(_req("hi"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await full.read()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "server.max_concurrent_streams" in err.value.details()
        voices = await stub.ListVoices(tts_pb2.ListVoicesRequest(), timeout=5)
        assert [v.id for v in voices.voices] == ["toy"]
        held = asyncio.ensure_future(stub.ListVoices(tts_pb2.ListVoicesRequest(voice="wait")))
        while host.admission.unary_active < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListVoices(tts_pb2.ListVoicesRequest(), timeout=5)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert err.value.details().startswith("1 unary calls in flight (limit 1, server.max_concurrent_unary)")
        assert host.admission.active == 1, "the stream kept its slot"
        svc.servicer.release.set()
        assert (await held).voices and len(await _read_rest(stream)) == 2
        assert host.admission.active == host.admission.unary_active == 0


async def test_unary_calls_are_not_counted_as_streams_in_the_autoscalers_metric():
    """talkmesh_streams_active (the HPAs' custom metric) counts streams only: a burst of list
    calls must not scale media pods out. Unary calls in flight: talkmesh_unary_active."""
    tel = Telemetry("toy")
    svc = ToyService(tel)
    cfg = ServerConfig(port=0, max_concurrent_streams=4, max_concurrent_unary=8)
    async with serve(svc, cfg) as host, create_channel(host.address) as ch:
        stub = tts_pb2_grpc.TTSStub(ch)
        stream = stub.Synthesize(_req("wait"))
        await stream.read()
        held = [asyncio.ensure_future(stub.ListVoices(tts_pb2.ListVoicesRequest(voice="wait"))) for _ in range(3)]
        while host.admission.unary_active < 3:
            await asyncio.sleep(0.01)
        assert _value(tel, "talkmesh_streams_active", {"service": "toy"}) == 1
        assert _value(tel, "talkmesh_unary_active", {"service": "toy"}) == 3
        svc.servicer.release.set()
        for call in held:
            assert (await call).voices
        await _read_rest(stream)
        while host.admission.active or host.admission.unary_active:
            await asyncio.sleep(0.01)
    assert _value(tel, "talkmesh_streams_active", {"service": "toy"}) == 0
    assert _value(tel, "talkmesh_unary_active", {"service": "toy"}) == 0


async def test_cancel_is_recorded_as_cancelled_in_metrics_and_span():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tel = Telemetry("toy", tracer_provider=provider)
    svc = ToyService(tel)
    async with serve(svc) as host:
        async with create_channel(host.address) as ch:
            stub = tts_pb2_grpc.TTSStub(ch)
            call = stub.Synthesize(_req("wait"))
            await call.read()
            call.cancel()
            await asyncio.wait_for(svc.servicer.cancelled.wait(), 5)
            for _ in range(100):
                if _value(tel, "talkmesh_streams_active", {"service": "toy"}) == 0:
                    break
                await asyncio.sleep(0.01)
    labels = {"service": "toy", "method": "/talkmesh.v1.TTS/Synthesize", "code": "CANCELLED"}
    assert _value(tel, "talkmesh_streams_total", labels) == 1
    spans = [s for s in exporter.get_finished_spans() if s.name == "talkmesh.v1.TTS/Synthesize"]
    assert len(spans) == 1
    # a hang-up is the client's doing: not an error of the service's span (OpenTelemetry's gRPC
    # server conventions), but marked
    assert spans[0].status.status_code == StatusCode.UNSET
    assert spans[0].attributes["talkmesh.cancelled"] is True
    assert spans[0].attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]


async def test_spans_follow_the_grpc_server_conventions():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with serve(ToyService(Telemetry("toy", tracer_provider=provider))) as host:
        async with create_channel(host.address) as ch:
            stub = tts_pb2_grpc.TTSStub(ch)
            for text in ("ok", "", "boom"):
                with contextlib.suppress(grpc.aio.AioRpcError):
                    [c async for c in stub.Synthesize(_req(text))]
    spans = [s for s in exporter.get_finished_spans() if s.name == "talkmesh.v1.TTS/Synthesize"]
    assert [s.attributes["rpc.grpc.status_code"] for s in spans] == [0, 3, 13]  # OK, INVALID_ARGUMENT, INTERNAL
    assert all(s.attributes["rpc.service"] == "talkmesh.v1.TTS" for s in spans)
    assert all(s.attributes["rpc.method"] == "Synthesize" for s in spans)
    ok, mistake, fault = spans
    # only the server's fault is an error; the client's mistake keeps its message
    assert ok.status.status_code == StatusCode.UNSET and mistake.status.status_code == StatusCode.UNSET
    assert mistake.attributes["talkmesh.status_message"] == "text: must not be empty"
    assert fault.status.status_code == StatusCode.ERROR and "kaboom" in (fault.status.description or "")


async def test_drain_refuses_new_streams_and_finishes_in_flight():
    tel = Telemetry("toy")
    svc = ToyService(tel)
    async with serve(svc) as host:
        async with create_channel(host.address) as ch:
            stub = tts_pb2_grpc.TTSStub(ch)
            health = health_pb2_grpc.HealthStub(ch)
            live = await health.Check(health_pb2.HealthCheckRequest(service="liveness"))
            assert live.status == health_pb2.HealthCheckResponse.SERVING
            inflight = stub.Synthesize(_req("wait"))
            await inflight.read()
            stopping = asyncio.create_task(host.stop(grace=10))
            for _ in range(100):
                if host.admission.draining:
                    break
                await asyncio.sleep(0.01)
            ready = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert ready.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as err:
                [c async for c in stub.Synthesize(_req("hi"))]
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            svc.servicer.release.set()
            rest = await _read_rest(inflight)
            assert [c.seq for c in rest] == [1, 2]
            await stopping


class WarmingService(ToyService):
    """A toy service that warms up until told, and calls a stage (its health decides readiness)."""

    def __init__(self, telemetry: Telemetry, stage: grpc.aio.Channel) -> None:
        super().__init__(telemetry)
        self.stage = stage
        self.warming = asyncio.Event()
        self.warm = asyncio.Event()

    async def start(self) -> None:
        self.warming.set()
        await self.warm.wait()

    def dependencies(self):
        return {"stage": self.stage}


async def test_talkmesh_ready_follows_readiness_through_warm_up_a_stage_down_and_the_drain():
    """`talkmesh_ready` is 1 exactly while health "" says SERVING: 0 while warming up, 0 while a
    stage it calls does not answer (the pod runs, is scraped, and is not Ready: what
    TalkmeshNotReady alerts on when no replica of a service is ready), 1 again, 0 once draining."""
    from talkmesh.common.server import ServiceHost

    async def readiness() -> tuple[float | None, int]:
        gauge = tel.metrics.registry.get_sample_value("talkmesh_ready", {"service": "toy"})
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""))
        return gauge, answer.status

    async def until(serving: bool) -> None:
        want = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for _ in range(200):  # up to 10 s: two missed checks, or the channel's reconnect backoff
            if (await readiness())[1] == want:
                break
            await asyncio.sleep(0.05)
        assert await readiness() == (1 if serving else 0, want)

    tel = Telemetry("toy")
    assert tel.metrics.registry.get_sample_value("talkmesh_ready", {"service": "toy"}) == 0  # from the start
    async with contextlib.AsyncExitStack() as stack:
        stage_host = await stack.enter_async_context(serve(ToyService(Telemetry("stage"))))
        stage = await stack.enter_async_context(create_channel(stage_host.address))
        svc = WarmingService(tel, stage)
        host = ServiceHost(svc, ServerConfig(port=0, dependency_check_seconds=0.1, grace_seconds=1.0))
        starting = asyncio.create_task(host.start())
        stack.push_async_callback(host.stop)
        await svc.warming.wait()
        ch = await stack.enter_async_context(create_channel(f"127.0.0.1:{host.port}"))
        health = health_pb2_grpc.HealthStub(ch)
        await until(False)  # serving health checks, warming up
        svc.warm.set()
        await starting
        await until(True)
        await stage_host.health.set("liveness", health_pb2.HealthCheckResponse.NOT_SERVING)  # the stage is down
        await until(False)
        await stage_host.health.set("liveness", health_pb2.HealthCheckResponse.SERVING)  # ... and back
        await until(True)
        await host.stop(grace=0)
        assert tel.metrics.registry.get_sample_value("talkmesh_ready", {"service": "toy"}) == 0


async def test_metrics_endpoint_serves_the_service_registry():
    import urllib.request

    tel = Telemetry("toy")
    async with serve(ToyService(tel), metrics=True) as host:
        assert host.metrics_port > 0
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{host.metrics_port}/metrics").read().decode()
        )
    assert 'talkmesh_build_info{service="toy"' in body
    assert 'talkmesh_streams_active{service="toy"} 0.0' in body


async def test_keepalive_policy_of_clients_is_what_servers_accept():
    """Clients ping no faster than servers allow: otherwise a quiet connection is closed with
    GOAWAY "too_many_pings" and the next call fails (found by a 10-minute soak)."""
    from talkmesh.common import channel

    client = dict(channel.channel_options())
    server = dict(channel.server_keepalive_options())
    assert client["grpc.keepalive_time_ms"] >= server["grpc.http2.min_recv_ping_interval_without_data_ms"]
    assert channel.PUBLIC_CLIENT_KEEPALIVE_MS >= server["grpc.http2.min_recv_ping_interval_without_data_ms"]
    assert server["grpc.http2.max_ping_strikes"] == 0
    assert client["grpc.keepalive_permit_without_calls"] == 1


def test_the_ready_line_is_json_with_json_logs_and_the_launcher_reads_both():
    """Every container printed a plain `READY ...` line among its JSON log lines (an SRE's trial:
    it breaks strict JSON log parsers)."""
    import json

    from talkmesh.common.server import parse_ready_line, ready_line

    plain = ready_line("gateway", "127.0.0.1:43200", 43210)
    assert plain == "READY gateway 127.0.0.1:43200 metrics=43210" == parse_ready_line(plain)
    line = ready_line("gateway", "127.0.0.1:43200", 43210, json_line=True)
    record = json.loads(line)
    assert record["level"] == "INFO" and record["service"] == "gateway" and record["msg"] == plain
    assert parse_ready_line(line) == plain
    for other in ('{"msg": "serving"}', '{"msg": 3}', "[1, 2]", "{not json", "ready gateway"):
        assert parse_ready_line(other) is None, other


def test_a_stage_back_after_a_long_outage_is_tried_again_within_seconds():
    """gRPC's reconnect backoff grows to 120 s by default: a renderer back after 6 minutes was
    refused by the gateway as "not answering health checks" for ~50 s more (an SRE's trial; the
    measurement is in BENCHMARKS.md, stop 39). Every channel of the mesh caps it."""
    from talkmesh.common import channel

    for options in (channel.channel_options(), channel.channel_options(bdp_probe=False, large_window=True)):
        assert dict(options)["grpc.max_reconnect_backoff_ms"] == channel.MAX_RECONNECT_BACKOFF_MS <= 5_000


async def test_a_quiet_open_stream_survives_keepalive_pings_and_the_next_call_works():
    """An open stream that sends nothing for several client ping intervals; then a new call."""
    from talkmesh.common.channel import CLIENT_KEEPALIVE_MS

    svc = ToyService(Telemetry("toy"))
    async with serve(svc) as host, create_channel(host.address) as ch:
        stub = tts_pb2_grpc.TTSStub(ch)
        quiet = stub.Synthesize(tts_pb2.SynthesizeRequest(text="wait"))
        assert (await quiet.read()).seq == 0
        await asyncio.sleep(4 * CLIENT_KEEPALIVE_MS / 1000)  # ~4 pings, no data either way
        other = [m async for m in stub.Synthesize(tts_pb2.SynthesizeRequest(text="hi"), timeout=5)]
        assert [m.seq for m in other] == [0, 1, 2]
        svc.servicer.release.set()
        assert [m.seq async for m in quiet] == [1, 2]


async def test_a_busy_port_is_one_line_naming_it():
    from talkmesh.common.server import BindError, ServiceHost

    first = ToyService(Telemetry("toy"))
    async with serve(first, metrics=True) as host:
        busy = ServiceHost(ToyService(Telemetry("toy")), ServerConfig(port=host.port, metrics_port=-1))
        with pytest.raises(BindError) as err:
            await busy.start()
        assert str(err.value) == f"toy: gRPC port 127.0.0.1:{host.port} is already in use (another talkmesh mesh?)"
        busy_metrics = ServiceHost(ToyService(Telemetry("toy")), ServerConfig(port=0, metrics_port=host.metrics_port))
        with pytest.raises(BindError, match=f"metrics port 127.0.0.1:{host.metrics_port} is already in use"):
            await busy_metrics.start()
        assert busy_metrics.server is None  # nothing left listening after a failed start


async def test_a_hung_dependency_is_down_after_two_timeouts_not_two_timeouts_plus_intervals():
    """A stage that accepts connections but never answers (a SIGSTOPped process holding its
    socket): with checks every second and a one-second timeout, two misses take ~2 s (checks
    keep their cadence while they time out), not ~3 s."""
    import socket

    from talkmesh.common.aio import cancel_and_wait
    from talkmesh.common.health import DependencyWatch

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # the kernel completes connections; nobody ever reads them
        changes: list[list[str]] = []
        noticed = asyncio.Event()

        async def on_change(down: list[str]) -> None:
            changes.append(down)
            noticed.set()

        async with grpc.aio.insecure_channel(f"127.0.0.1:{hung.getsockname()[1]}") as ch:
            watch = DependencyWatch({"renderer": ch}, on_change, interval=1.0, timeout=1.0, failures=2)
            loop = asyncio.get_running_loop()
            started = loop.time()
            task = asyncio.create_task(watch.run())
            try:
                async with asyncio.timeout(10):
                    await noticed.wait()
                took = loop.time() - started
            finally:
                await cancel_and_wait(task)
    assert changes == [["renderer"]]
    assert took < 2.7, f"a hung stage was noticed after {took:.2f} s"


async def test_every_status_carries_the_calls_request_id_in_its_trailers():
    """x-request-id comes back in the trailing metadata, on success and on failure: the client's
    own, or the one the server chose (which is the one in the server's log lines)."""
    svc = ToyService(Telemetry("toy"))
    async with serve(svc) as host, create_channel(host.address) as ch:
        stub = tts_pb2_grpc.TTSStub(ch)
        call = stub.Synthesize(_req("ok"), metadata=(("x-request-id", "mine-1"),))
        assert len([c async for c in call]) == 3
        assert dict(await call.trailing_metadata())["x-request-id"] == "mine-1"
        failed = stub.Synthesize(_req(""))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [c async for c in failed]
        chosen = dict(err.value.trailing_metadata())["x-request-id"]
        assert len(chosen) == 32
        ok = stub.Synthesize(_req("ok"))
        [c async for c in ok]
        assert dict(await ok.trailing_metadata())["x-request-id"] not in ("", chosen)
        host.admission.unavailable = "renderer: not answering health checks"  # refused before the handler
        refused = stub.Synthesize(_req("ok"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [c async for c in refused]
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(dict(err.value.trailing_metadata()).get("x-request-id", "")) == 32, err.value.trailing_metadata()
        host.admission.unavailable = ""
    assert svc.servicer.seen_request_ids[0] == "mine-1"


async def test_a_new_channel_is_not_failed_by_an_older_ones_refused_connection_to_the_same_address():
    # CI once failed a TTS test with "connection refused" from a server that was listening: an
    # earlier test's channel to a dead server on the same (reused) port was in reconnect backoff,
    # and gRPC's global pool shared that connection attempt with the new channel.
    async with serve(ToyService(Telemetry("toy"))) as first:
        port = first.port
        stale = create_channel(first.address)
        assert len(await _read_rest(tts_pb2_grpc.TTSStub(stale).Synthesize(_req("hi")))) == 3
    try:
        for _ in range(2):  # the dead address is now in reconnect backoff for `stale`
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await tts_pb2_grpc.TTSStub(stale).Synthesize(_req("hi"), timeout=2).read()
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        cfg = ServerConfig(port=port, metrics_port=-1, grace_seconds=2.0)
        async with serve(ToyService(Telemetry("toy")), cfg) as second:
            async with create_channel(second.address) as fresh:
                chunks = await _read_rest(tts_pb2_grpc.TTSStub(fresh).Synthesize(_req("hi"), timeout=5))
            assert [c.seq for c in chunks] == [0, 1, 2]
    finally:
        await stale.close()



class WaitingServicer(ToyServicer):
    async def SynthesizeStream(self, request_iterator, context):
        self.started.set()
        await asyncio.Event().wait()  # (cancelled before it reads its requests)
        yield common_pb2.AudioChunk()


async def test_a_stream_cancelled_before_reading_leaves_no_unawaited_receiver(recwarn):
    """A request stream the handler never read (the client hung up first): gRPC's receiver was
    made anyway, as the checked requests asked for it at once, and its garbage collection warned
    "coroutine '_MessageReceiver._async_message_receiver' was never awaited" in the logs."""
    import gc

    svc = ToyService(Telemetry("toy"))
    svc.servicer = WaitingServicer()
    async with serve(svc) as host:
        async with create_channel(host.address) as ch:
            stub = tts_pb2_grpc.TTSStub(ch)
            for _ in range(3):
                svc.servicer.started.clear()
                call = stub.SynthesizeStream(iter([tts_pb2.TextPiece(text="x")]))
                await svc.servicer.started.wait()
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call.read()
            await _no_active_streams(host)
    gc.collect()
    unawaited = [str(w.message) for w in recwarn.list if "never awaited" in str(w.message)]
    assert unawaited == []


async def _no_active_streams(host) -> None:
    async with asyncio.timeout(10):  # hang guard
        while host.telemetry.metrics.registry.get_sample_value("talkmesh_streams_active", {"service": "toy"}):
            await asyncio.sleep(0.01)


def test_a_small_message_limit_keeps_the_servers_window_at_its_floor() -> None:
    """Servers keep their stream window fixed (BDP probing off): 2 x a 64 KiB message limit would
    have been 128 KiB per round trip for a far client's upload."""
    from talkmesh.common.channel import MIN_LOOKAHEAD_BYTES, transport_options

    def window(limit: int) -> object:
        return dict(transport_options(limit, large_window=True))["grpc.http2.lookahead_bytes"]

    assert window(64 * 1024) == MIN_LOOKAHEAD_BYTES == 16 * 1024 * 1024
    assert window(32 * 1024 * 1024) == 64 * 1024 * 1024  # (the renderer's: unchanged)
