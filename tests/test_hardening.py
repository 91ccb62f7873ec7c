"""Regression tests of issue 19 (an hour of attacks on a running mesh), one or more per defect.

Each test reproduces the reported scenario against in-process services on port 0 and asserts the
status, the bound or the absence of side effects the issue asks for. The table in the hardening
report maps defects to these tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.renderer.avatars import default_avatar_bytes
from talkmesh.client import TalkmeshClient
from talkmesh.common.channel import create_channel
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import gateway_pb2 as gpb
from talkmesh.v1 import gateway_pb2_grpc, renderer_pb2_grpc
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import types_pb2 as api
from tests.mesh import InProcessMesh, inprocess_mesh

SENTENCE = "Good morning, and welcome back to the lesson. Please listen carefully first."


@pytest.fixture
async def mesh(tmp_path) -> AsyncIterator[InProcessMesh]:
    async with inprocess_mesh(tmp_path) as m:
        yield m


class OpenStream:
    """Request messages for a client stream that stays open (no half-close) until ``close``."""

    def __init__(self, *messages: object) -> None:
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        for m in messages:
            self.queue.put_nowait(m)

    def close(self) -> None:
        self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[object]:
        while (m := await self.queue.get()) is not None:
            yield m


async def _status_of_stream(call: object, within: float) -> tuple[grpc.StatusCode, str, float]:
    """Reads a response stream (or awaits a unary response) until its status; (code, details, seconds)."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(within):
            try:
                if hasattr(call, "read"):
                    while await call.read() is not grpc.aio.EOF:  # type: ignore[attr-defined]
                        pass
                else:
                    await call  # type: ignore[misc]
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or "", time.monotonic() - start
    except TimeoutError:
        call.cancel()  # type: ignore[attr-defined]
        pytest.fail(f"no status within {within} s: the call hangs")
    return grpc.StatusCode.OK, "", time.monotonic() - start


# -- defect 1: errors inside a client's request stream ----------------------------------------------


def _start() -> gpb.SpeakStreamRequest:
    return gpb.SpeakStreamRequest(start=TalkmeshClient.request(""))


@pytest.mark.parametrize(
    ("messages", "field"),
    [
        # streamed text over max_text_chars (5000), the stream left open
        ([_start()] + [gpb.SpeakStreamRequest(text="x" * 1000 + " ")] * 6, "text"),
        # a second start
        ([_start(), gpb.SpeakStreamRequest(text="Hello there. "), _start()], "start"),
        # an empty message (no kind)
        ([_start(), gpb.SpeakStreamRequest(text="Hello there. "), gpb.SpeakStreamRequest()], "text"),
    ],
    ids=["over-max-text-chars", "second-start", "empty-message"],
)
async def test_errors_in_a_speak_stream_get_a_status_within_2s(mesh, messages, field):
    requests = OpenStream(*messages)
    async with create_channel(mesh.gateway) as ch:
        call = gateway_pb2_grpc.GatewayStub(ch).SpeakStream(requests, timeout=600)
        code, details, _ = await _status_of_stream(call, 2.0)
    requests.close()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(f"{field}:") or f" {field}" in details, details
    await _no_stream_left(mesh)


@pytest.mark.parametrize(
    "messages",
    [
        [b"\xff\xff\xff\xff"],  # undecodable bytes
        [api.AvatarUpload(data=b"abc").SerializeToString()],  # data before meta
        [
            api.AvatarUpload(meta=api.AvatarMeta(filename="a.png")).SerializeToString(),
            api.AvatarUpload(meta=api.AvatarMeta(filename="a.png")).SerializeToString(),
        ],  # meta twice
        [api.AvatarUpload().SerializeToString()],  # empty message
    ],
    ids=["garbage", "data-first", "meta-twice", "empty"],
)
@pytest.mark.parametrize("service", ["gateway", "renderer"])
async def test_corrupt_register_avatar_gets_a_status_within_2s(mesh, messages, service):
    requests = OpenStream(*messages)
    package = "Gateway" if service == "gateway" else "Renderer"
    async with create_channel(mesh.hosts[service].address) as ch:
        method = ch.stream_unary(f"/talkmesh.v1.{package}/RegisterAvatar")
        call = method(requests, timeout=600)
        code, details, _ = await _status_of_stream(call, 2.0)
    requests.close()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    await _no_stream_left(mesh)


async def _no_stream_left(mesh: InProcessMesh, within: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline and any(mesh.active_streams().values()):
        await asyncio.sleep(0.02)
    assert mesh.active_streams() == dict.fromkeys(mesh.telemetry, 0.0)


# -- defect 5: quadratic viseme insertion --------------------------------------------------------


async def test_400k_descending_viseme_events_do_not_stall_health(mesh):
    spf = 16000 // 25
    n = 400_000
    events = [
        cpb.VisemeEvent(viseme=cpb.VISEME_OPEN, start_sample=(n - i) * spf, end_sample=(n - i + 1) * spf)
        for i in range(n)
    ]
    config = rpb.RenderConfig(request_id="r", fps=25, sample_rate=16000)
    msgs = [
        rpb.RenderRequest(request_id="r", config=config),
        rpb.RenderRequest(request_id="r", seq=1, visemes=rpb.VisemeTrack(events=events)),
    ]
    msgs += [
        rpb.RenderRequest(
            request_id="r",
            seq=2 + i,
            features=fpb.FeatureChunk(frame_index=i, activity=cpb.FrameActivity(rms_dbfs=-15, voiced=True)),
        )
        for i in range(5)
    ]
    assert len(msgs[1].SerializeToString()) < 8 * 1024 * 1024
    address = mesh.hosts["renderer"].address
    requests = OpenStream(*msgs)
    worst = 0.0
    async with create_channel(address) as ch, create_channel(address) as health_ch:
        health = health_pb2_grpc.HealthStub(health_ch)
        call = renderer_pb2_grpc.RendererStub(ch).Render(requests, timeout=60)
        reader = asyncio.create_task(call.read())
        try:
            for _ in range(20):
                t0 = time.monotonic()
                resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                worst = max(worst, time.monotonic() - t0)
                assert resp.status == health_pb2.HealthCheckResponse.SERVING
                await asyncio.sleep(0.05)
            first = await asyncio.wait_for(reader, 30)
            assert first is not grpc.aio.EOF and first.frame_index == 0
        finally:
            call.cancel()
            requests.close()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader
    assert worst < 1.0, f"health took {worst:.2f} s while the renderer took 400k events"


# -- defect 9: smaller ones ----------------------------------------------------------------------


async def test_tiny_fps_is_invalid_argument_naming_it(mesh):
    async with create_channel(mesh.hosts["audio_features"].address) as ch:
        method = ch.stream_stream(
            "/talkmesh.v1.AudioFeatures/Extract",
            request_serializer=fpb.FeatureRequest.SerializeToString,
            response_deserializer=fpb.FeatureChunk.FromString,
        )
        cfg = fpb.FeatureConfig(request_id="r", feature_type=fpb.FEATURE_TYPE_WAV2LIP_MEL, fps=1e-30)
        pcm = cpb.AudioChunk(pcm=b"\0\0" * 1600, sample_rate=16000, sample_offset=0)
        msgs = [fpb.FeatureRequest(config=cfg), fpb.FeatureRequest(seq=1, audio=pcm, end_of_stream=True)]
        code, details, _ = await _status_of_stream(method(iter(msgs), timeout=10), 5.0)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "fps" in details


LONG = "a" * 100_000


@pytest.mark.parametrize(
    ("rpc", "request_", "field"),
    [
        ("DeleteAvatar", api.DeleteAvatarRequest(avatar_id=LONG), "avatar_id"),
        ("Speak", gpb.SpeakRequest(text="Hi.", avatar_id=LONG), "avatar_id"),
        ("Speak", gpb.SpeakRequest(text="Hi.", session_id=LONG), "session_id"),
        ("Speak", gpb.SpeakRequest(text="Hi.", voice=LONG), "voice"),
        ("Speak", gpb.SpeakRequest(text="Hi.", request_id=LONG), "request_id"),
    ],
    ids=["delete-avatar-id", "speak-avatar-id", "speak-session-id", "speak-voice", "speak-request-id"],
)
async def test_100k_character_ids_are_invalid_argument_naming_the_field(mesh, tmp_path, rpc, request_, field):
    async with create_channel(mesh.gateway, max_message_bytes=8 * 1024 * 1024) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        call = getattr(stub, rpc)(request_, timeout=10)
        code, details, _ = await _status_of_stream(call, 5.0)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert field in details and len(details) < 300, details[:300]
    assert str(tmp_path) not in details


async def test_100k_character_avatar_name_and_filename_are_refused(mesh, tmp_path):
    for meta, field in (
        (api.AvatarMeta(name=LONG, filename="a.png"), "name"),
        (api.AvatarMeta(filename=LONG + ".png"), "filename"),
    ):
        async with create_channel(mesh.gateway) as ch:
            call = gateway_pb2_grpc.GatewayStub(ch).RegisterAvatar(
                iter([api.AvatarUpload(meta=meta), api.AvatarUpload(data=b"\x89PNG\r\n\x1a\n")]), timeout=10
            )
            code, details, _ = await _status_of_stream(call, 5.0)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert field in details and str(tmp_path) not in details and len(details) < 300, details[:300]


def _new_portrait() -> bytes:
    """The default portrait mirrored: a face the store does not know yet (ids are content hashes)."""
    import cv2
    import numpy as np

    data = default_avatar_bytes()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return bytes(cv2.imencode(".png", img[:, ::-1])[1].tobytes())


async def test_avatar_names_are_sanitised(mesh):
    dirty = "  evil\x1b[31m\nname\u202e\u200b/../x\x00  "
    meta = api.AvatarMeta(name=dirty, filename="face.png")
    async with create_channel(mesh.gateway) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        info = await stub.RegisterAvatar(
            iter([api.AvatarUpload(meta=meta), api.AvatarUpload(data=_new_portrait())]), timeout=60
        )
        listed = {a.id: a.name for a in (await stub.ListAvatars(api.ListAvatarsRequest(), timeout=10)).avatars}
    assert not info.cached
    assert info.name == listed[info.id] == "evil[31m name/../x"


async def test_queue_gauges_return_to_zero_after_cancellation(mesh):
    async with TalkmeshClient(mesh.gateway) as client:
        for _ in range(3):
            call = client.speak(SENTENCE * 4)
            async for chunk in call:
                if chunk.WhichOneof("kind") == "media" and not chunk.media.init_segment:
                    break
            call.cancel()
    await _no_stream_left(mesh)
    await asyncio.sleep(0.2)
    stale = {}
    for name, tel in mesh.telemetry.items():
        for metric in tel.metrics.registry.collect():
            if metric.name == "talkmesh_queue_depth":
                for s in metric.samples:
                    if s.value != 0:
                        stale[(name, s.labels.get("stage"))] = s.value
    assert stale == {}


async def test_a_speak_stream_cancelled_before_any_text_is_counted_cancelled_not_ok(mesh):
    """A client that opens SpeakStream and hangs up before sending text: the gateway's metrics
    (and log line) say CANCELLED, as for any other cancelled call, not OK."""
    reg = mesh.telemetry["gateway"].metrics.registry
    method = "/talkmesh.v1.Gateway/SpeakStream"

    def count(code: str) -> float:
        value = reg.get_sample_value("talkmesh_streams_total", {"service": "gateway", "method": method, "code": code})
        return value or 0.0

    async with create_channel(mesh.gateway) as channel:
        for _ in range(3):
            requests = OpenStream(_start())
            call = gateway_pb2_grpc.GatewayStub(channel).SpeakStream(requests.__aiter__())
            await call.initial_metadata()
            await asyncio.sleep(0.1)
            call.cancel()
    await _no_stream_left(mesh)
    assert (count("CANCELLED"), count("OK")) == (3, 0)


@pytest.mark.timeout(600)  # about 1-2 minutes on a loaded 2-core machine
async def test_client_cancellations_log_no_error_tracebacks(mesh, caplog):
    """400 cancelled calls, cancelled at every point: before anything, after the headers, after
    the init segment, after media fragments (each of the 15 kinds, 5 points x 3 lengths, about 27
    times; 1000 until stop 39 found nothing more). None is a server error."""
    caplog.set_level(logging.INFO)

    async def one(client: TalkmeshClient, i: int) -> None:
        call = client.speak(SENTENCE * (1 + i % 3))
        try:
            reads = i % 5
            if reads == 1:
                await call.initial_metadata()  # type: ignore[attr-defined]
            for _ in range(reads - 1):
                if await call.read() is grpc.aio.EOF:  # type: ignore[attr-defined]
                    break
            if reads == 0:
                await asyncio.sleep(0)
        except grpc.aio.AioRpcError as exc:  # overload while earlier batches wind down
            assert exc.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE), exc
        finally:
            call.cancel()  # type: ignore[attr-defined]

    async with TalkmeshClient(mesh.gateway) as client:
        for batch in range(0, 400, 25):
            await asyncio.gather(*(one(client, i) for i in range(batch, batch + 25)))
    await _no_stream_left(mesh, within=10.0)
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], f"{len(bad)} error records, first: {bad[0].getMessage()!r} {bad[0].exc_text}" if bad else ""


async def test_every_service_exports_process_metrics(mesh):
    for name, tel in mesh.telemetry.items():
        rss = tel.metrics.registry.get_sample_value("process_resident_memory_bytes")
        assert rss is not None and rss > 0, name
        assert tel.metrics.registry.get_sample_value("process_open_fds"), name


# -- defect 4: capacity and overload ---------------------------------------------------------------


def _total(mesh: InProcessMesh, service: str, name: str) -> float:
    reg = mesh.telemetry[service].metrics.registry
    return sum(
        s.value for m in reg.collect() if m.name == name.removesuffix("_total") for s in m.samples if s.name == name
    )


async def test_overload_is_resource_exhausted_within_100ms_and_starts_no_upstream_work(tmp_path):
    """~50 refused calls timed as `talkmesh bench overload` times them (the same function); the
    process mesh of the benchmark measures the target (BENCHMARKS.md, "Overload refusals"): here
    five services share this process's one event loop on a loaded machine, so the bound is generous."""
    from talkmesh.bench.overload import OverloadReport, refuse

    async with inprocess_mesh(tmp_path, max_streams={"encoder": 1}) as mesh, TalkmeshClient(mesh.gateway) as client:
        busy = client.speak(SENTENCE * 12)
        assert (await busy.read()).media.init_segment  # type: ignore[attr-defined]
        tts_before = _total(mesh, "tts", "talkmesh_streams_total")
        report = OverloadReport()
        await refuse(mesh.gateway, 50, report)
        # TTS never saw the refused requests: no synthesis was started for them
        assert _total(mesh, "tts", "talkmesh_streams_total") == tts_before
        busy.cancel()  # type: ignore[attr-defined]
        health = await _gateway_health(mesh)
    assert not report.unexpected, report.unexpected  # every call: RESOURCE_EXHAUSTED naming the encoder
    assert len(report.refusals) == 50
    assert health == health_pb2.HealthCheckResponse.SERVING
    print(f"\nrefusals in-process: p50 {report.ms(50):.0f} ms, p95 {report.ms(95):.0f} ms, max {report.ms(100):.0f} ms")
    assert report.ms(50) <= 100, f"median refusal took {report.ms(50):.0f} ms"
    assert report.ms(95) <= 300, f"p95 refusal took {report.ms(95):.0f} ms"


async def _gateway_health(mesh: InProcessMesh) -> int:
    async with create_channel(mesh.gateway) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return resp.status


# -- issue 19 "tests that keep it so": a cancel storm -----------------------------------------------


def _open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


async def test_cancel_storm_leaves_no_streams_tasks_or_fds(mesh):
    """Hundreds of Speak and SpeakStream calls cancelled at random points; afterwards every
    service has 0 streams in flight, no task of ours is left (conftest checks), fds at baseline."""
    async with TalkmeshClient(mesh.gateway) as client:
        warm = client.speak("Warm up.")
        async for _ in warm:
            pass
        baseline = _open_fds()

        async def pieces() -> AsyncIterator[str]:
            for word in SENTENCE.split():
                yield word + " "
                await asyncio.sleep(0.01)

        async def one(i: int) -> None:
            call = client.speak(SENTENCE) if i % 2 else client.speak_stream(pieces())
            try:
                for _ in range(i % 4):
                    if await call.read() is grpc.aio.EOF:  # type: ignore[attr-defined]
                        break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE), exc
            finally:
                call.cancel()  # type: ignore[attr-defined]

        for batch in range(0, 200, 25):
            await asyncio.gather(*(one(i) for i in range(batch, batch + 25)))
        await _no_stream_left(mesh, within=10.0)
        # closed by the stages as their streams end: soon on a quiet machine, later on a busy one
        # (the bound is on what stays open, not on how soon; a hang guard, not a timing)
        for _ in range(100):
            await asyncio.sleep(0.2)
            if (fds := _open_fds()) <= baseline + 5:
                break
    assert fds <= baseline + 5, f"{fds} fds open after the storm, {baseline} before"
