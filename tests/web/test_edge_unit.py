"""The web edge against a fake gateway (no mesh): how POST /v1/speak relays the answer (streamed,
bounded in memory and in number), the upload switch, the origin rules and their config."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.web.config import WebConfig, WebSettings, normal_origin
from services.web.main import load_config
from services.web.server import WebHost, same_origin
from talkmesh.common.config import ConfigError, ServerConfig
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import gateway_pb2 as gpb
from talkmesh.v1 import types_pb2 as api

pytestmark = pytest.mark.timeout(60)

MIB = 1 << 20
APP = "https://app.example.com"
FMP4_MIME = 'video/mp4; codecs="avc1.42C01E, mp4a.40.2"'

Chunks = Callable[[gpb.SpeakRequest], AsyncIterator[gpb.SpeakChunk]]


class FakeCall:
    def __init__(self, chunks: AsyncIterator[gpb.SpeakChunk]) -> None:
        self.chunks = chunks
        self.cancelled = False

    def __aiter__(self) -> AsyncIterator[gpb.SpeakChunk]:
        return self.chunks

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeStub:
    def __init__(self, chunks: Chunks) -> None:
        self.chunks = chunks
        self.calls: list[FakeCall] = []

    def Speak(self, req: gpb.SpeakRequest, **_: Any) -> FakeCall:
        self.calls.append(FakeCall(self.chunks(req)))
        return self.calls[-1]


class FakeClient:
    def __init__(self, chunks: Chunks) -> None:
        self.stub = FakeStub(chunks)
        self.deleted: list[str] = []

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def find_avatar(self, name_or_id: str) -> tuple[str, str]:
        return name_or_id, ""

    async def delete_avatar(self, avatar_id: str, name: str = "") -> bool:
        self.deleted.append(avatar_id)
        return True

    async def close(self) -> None:
        pass


def media(data: bytes, *, init: bool = False, mime: str = "", frames: int = 0) -> gpb.SpeakChunk:
    return gpb.SpeakChunk(media=gpb.VideoChunk(data=data, init_segment=init, mime_type=mime, frames_encoded=frames))


def summary(frames: int) -> gpb.SpeakChunk:
    return gpb.SpeakChunk(
        end_of_stream=True,
        summary=gpb.SpeakSummary(frames=frames, audio_seconds=1.5, time_to_first_fragment_seconds=0.25),
    )


@contextlib.asynccontextmanager
async def edge(chunks: Chunks, **settings: Any) -> AsyncIterator[tuple[TestClient[Any, Any], FakeClient]]:
    config = dataclasses.replace(WebConfig(), web=dataclasses.replace(WebSettings(), **settings))
    host = WebHost(config, Telemetry("web"))
    fake = FakeClient(chunks)
    host.client = fake  # type: ignore[assignment]
    async with TestClient(TestServer(host.app())) as client:
        yield client, fake


async def test_a_fragmented_speak_streams_its_first_fragment_before_the_utterance_is_done() -> None:
    """output.container CONTAINER_FMP4: the init segment and the first fragment reach the browser
    while the gateway is still encoding (the old edge answered only once the stream had ended)."""
    more = asyncio.Event()

    async def chunks(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        assert req.output.container == api.CONTAINER_FMP4
        yield media(b"\0\0\0\x18ftypiso5" + b"i" * 12, init=True, mime=FMP4_MIME)
        yield media(b"moof-1" * 100, frames=1)
        await more.wait()  # the rest of the utterance is not encoded yet
        yield media(b"moof-2" * 100, frames=2)
        yield summary(2)

    async with edge(chunks) as (client, _):
        body = {"text": "Hello.", "output": {"container": "CONTAINER_FMP4"}}
        async with asyncio.timeout(10):
            r = await client.post("/v1/speak", json=body)
            assert r.status == 200 and r.headers["Content-Type"] == FMP4_MIME, "the codecs a SourceBuffer needs"
            assert r.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.headers
            assert "Accept-Ranges" not in r.headers
            assert float(r.headers["X-Talkmesh-First-Fragment-Ms"]) >= 0
            first = await r.content.readexactly(24 + 600)
        assert first[4:8] == b"ftyp" and first.endswith(b"moof-1")
        more.set()
        rest = await r.read()
        assert rest == b"moof-2" * 100


async def test_a_long_speak_is_never_whole_in_the_edges_memory() -> None:
    """30 MiB of MP4 (a long text's file) passes through the edge holding at most
    speak_buffer_bytes (1 MiB here) of it; the old edge gathered it all in a bytearray."""
    total = 30

    async def chunks(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        assert req.output.container == api.CONTAINER_MP4  # the default: one whole file
        for i in range(total):
            yield media(bytes([i]) * MIB, mime="video/mp4" if i == 0 else "", frames=750)
        yield summary(750)

    async with edge(chunks, speak_buffer_bytes=MIB) as (client, _):
        tracemalloc.start()
        try:
            r = await client.post("/v1/speak", json={"text": "A long text."})
            got = 0
            async for block in r.content.iter_chunked(256 * 1024):
                got += len(block)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert r.status == 200 and got == total * MIB
        assert r.headers["X-Talkmesh-Frames"] == "750" and "Content-Length" not in r.headers
        assert "Accept-Ranges" not in r.headers
        assert peak < 8 * MIB, f"the edge held {peak / MIB:.1f} MiB"


async def test_a_short_whole_mp4_keeps_its_length_and_summary_headers() -> None:
    async def chunks(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        yield media(b"\0\0\0\x18ftypisom" + b"m" * 1000, mime="video/mp4", frames=20)
        yield summary(20)

    async with edge(chunks) as (client, _):
        r = await client.post("/v1/speak", json={"text": "Hi."})
        assert r.status == 200 and r.headers["Content-Length"] == str(len(await r.read()))
        assert r.headers["X-Talkmesh-Frames"] == "20" and r.headers["X-Talkmesh-Audio-Seconds"] == "1.500"
        assert r.headers["X-Talkmesh-First-Fragment-Ms"] == "250.0" and "Accept-Ranges" not in r.headers


async def test_concurrent_speaks_are_bounded_with_a_retry_after() -> None:
    release = asyncio.Event()

    async def chunks(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        await release.wait()
        yield media(b"x" * 10, mime="video/mp4", frames=1)
        yield summary(1)

    async with edge(chunks, max_concurrent_speaks=1) as (client, fake):
        first = asyncio.create_task(client.post("/v1/speak", json={"text": "One."}))
        for _ in range(500):
            if fake.stub.calls:
                break
            await asyncio.sleep(0.01)
        r = await client.post("/v1/speak", json={"text": "Two."})
        body = await r.json()
        assert r.status == 429 and body["error"]["code"] == "RESOURCE_EXHAUSTED", body
        assert r.headers["Retry-After"] == "2" and body["error"]["retry_after_seconds"] == 2.0
        assert len(fake.stub.calls) == 1, "the refused one never reached the gateway"
        release.set()
        r1 = await first
        assert r1.status == 200 and await r1.read() == b"x" * 10
        r = await client.post("/v1/speak", json={"text": "Three."})
        assert r.status == 200, "the slot is free again"


async def test_speak_wants_json_and_a_browser_that_leaves_cancels_the_call() -> None:
    async def chunks(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        yield media(b"\0\0\0\x18ftypiso5", init=True, mime=FMP4_MIME)
        while True:
            yield media(b"f" * 65536, frames=1)
            await asyncio.sleep(0.01)

    async with edge(chunks) as (client, fake):
        # text/plain needs no CORS preflight: any site could make the mesh render with it
        r = await client.post("/v1/speak", data='{"text": "Hi."}', headers={"Content-Type": "text/plain"})
        body = await r.json()
        assert r.status == 415 and body["error"]["field"] == "Content-Type", body
        assert fake.stub.calls == []
        r = await client.post("/v1/speak", json={"text": "Hi.", "output": {"container": "CONTAINER_FMP4"}})
        assert r.status == 200
        await r.content.readexactly(65536)
        r.close()
        for _ in range(500):
            if fake.stub.calls[0].cancelled:
                break
            await asyncio.sleep(0.01)
        assert fake.stub.calls[0].cancelled, "the gateway call ends with the browser's request"


async def test_a_gateway_failure_before_the_answer_is_its_json_error_and_after_it_a_broken_body() -> None:
    def failure() -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(
            grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), "voice 'x' not found"
        )

    async def chunks(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        if req.text == "early":
            raise failure()
        yield media(b"\0\0\0\x18ftypiso5", init=True, mime=FMP4_MIME)
        yield media(b"f" * 1000, frames=1)
        raise failure()

    async with edge(chunks) as (client, _):
        r = await client.post("/v1/speak", json={"text": "early"})
        assert r.status == 404 and (await r.json())["error"]["code"] == "NOT_FOUND"
        r = await client.post("/v1/speak", json={"text": "late", "output": {"container": "CONTAINER_FMP4"}})
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
        r = await client.get("/healthz")
        assert r.status == 200, "the edge goes on"


async def test_uploads_can_be_switched_off() -> None:
    async def chunks(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        yield summary(0)

    async with edge(chunks, allow_uploads=False) as (client, fake):
        form = aiohttp.FormData()
        form.add_field("file", b"png", filename="a.png", content_type="image/png")
        r = await client.post("/v1/avatars", data=form)
        body = await r.json()
        assert r.status == 403 and body["error"] == {
            "code": "PERMISSION_DENIED",
            "message": "file: this web edge does not take avatar changes (web.allow_uploads)",
            "field": "file",
        }
        r = await client.delete("/v1/avatars/abc")
        assert r.status == 403 and (await r.json())["error"]["field"] == "avatar_id"
        assert fake.deleted == []
    async with edge(chunks) as (client, fake):
        r = await client.delete("/v1/avatars/abc")
        assert r.status == 200 and await r.json() == {"avatar_id": "abc", "name": "", "deleted": True}
        assert fake.deleted == ["abc"]


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True),
        ("http://127.0.0.1:8080", "127.0.0.1:8081", False),
        ("https://app.example.com", "app.example.com", True),
        ("https://app.example.com", "app.example.com:443", True),
        ("http://app.example.com", "app.example.com:8080", False),
        ("https://evil.example", "127.0.0.1:8080", False),
        ("http://[::1]:8080", "[::1]:8080", True),
        ("http://localhost:8080", "", False),
    ],
)
def test_same_origin_compares_host_and_port(origin: str, host: str, same: bool) -> None:
    assert same_origin(origin, host) is same


def test_allowed_origins_are_validated_and_read_from_the_environment() -> None:
    assert normal_origin("HTTPS://App.Example.com/") == "https://app.example.com"
    # a scheme's own port is written as browsers send the origin: without it
    assert normal_origin("https://a.example:443") == "https://a.example"
    assert normal_origin("http://a.example:80") == "http://a.example"
    assert normal_origin("https://a.example:8443") == "https://a.example:8443"
    assert normal_origin("http://a.example:443") == "http://a.example:443"
    for bad in ("app.example.com", "https://app.example.com/path", "ftp://x", "null", "https://u:p@x.example", "*"):
        with pytest.raises(ConfigError, match="allowed_origins"):
            WebSettings(allowed_origins=(bad,)).validate()
    config = load_config(env={"TALKMESH_WEB__WEB__ALLOWED_ORIGINS": "https://a.example, http://localhost:3000"})
    assert config.web.origins() == {"https://a.example", "http://localhost:3000"}
    with pytest.raises(ConfigError, match=r"web\.allowed_origins"):
        load_config(env={"TALKMESH_WEB__WEB__ALLOWED_ORIGINS": "https://a.example/app"})


async def test_a_browser_that_leaves_a_whole_mp4_speak_cancels_it_on_the_real_server() -> None:
    """The edge as `talkmesh serve web` runs it (its own AppRunner, not aiohttp's test server):
    a whole MP4 writes nothing before the end, yet a browser that goes away cancels the call at
    once and gives its download slot back."""
    finished = asyncio.Event()

    async def chunks(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        await asyncio.sleep(3)  # the whole file is encoded before its first chunk
        yield media(b"x" * 1000, mime="video/mp4", frames=10)
        yield summary(10)
        finished.set()

    plain = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=1.0)
    config = dataclasses.replace(WebConfig(), server=plain)
    host = WebHost(config, Telemetry("web"))
    await host.start()
    fake = FakeClient(chunks)
    real_client, host.client = host.client, fake  # type: ignore[assignment]
    try:
        async with aiohttp.ClientSession() as session:
            post = asyncio.create_task(session.post(f"{host.url}v1/speak", json={"text": "Hi."}))
            await asyncio.sleep(0.5)
            post.cancel()  # the browser goes away
            await asyncio.gather(post, return_exceptions=True)
            await asyncio.sleep(0.5)
        assert fake.stub.calls[0].cancelled and host.speaks.held == 0
        assert not finished.is_set()
    finally:
        host.client = real_client
        await host.stop()


async def test_on_loopback_only_the_edges_own_names_are_served() -> None:
    """DNS rebinding: a page whose name resolves to 127.0.0.1 sends its own name as Host (and as
    Origin, so it would pass as "same origin"); the edge on loopback refuses it."""

    async def nothing(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        yield summary(0)

    async with edge(nothing, allowed_origins=("https://app.example.com",)) as (client, _):
        for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "app.example.com"):
            assert (await client.get("/", headers={"Host": host})).status == 200, host
        rebound = {"Host": "evil.example:8080", "Origin": "http://evil.example:8080"}
        for method, path in (("GET", "/"), ("GET", "/v1/avatars"), ("POST", "/v1/speak")):
            r = await client.request(method, path, headers=rebound, json={"text": "hi"})
            assert r.status == 403, (method, path)
            assert (await r.json())["error"]["field"] == "host"
        assert (await client.get("/healthz", headers=rebound)).status == 200  # probes name no host


async def test_readiness_goes_with_the_gateways_and_comes_back_when_it_returns(caplog: Any) -> None:
    """The edge watches the gateway's readiness as every service watches its stages
    (talkmesh.common.health.DependencyWatch): its own watch, not only /readyz asking, finds the
    gateway not ready (its stages down), gone, and back on its address; one log line per change."""
    caplog.set_level(logging.INFO)
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from talkmesh.common.config import Endpoint

    async def gateway(port: int) -> tuple[grpc.aio.Server, Any, int]:
        servicer = health.aio.HealthServicer()
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        return server, servicer, port

    def gauge() -> float | None:  # talkmesh_ready, for the alert that no replica is ready
        return host.telemetry.metrics.registry.get_sample_value("talkmesh_ready", {"service": "web"})

    async def until(ready: bool) -> None:
        for _ in range(200):  # up to 10 s: the channel's reconnect backoff after the gateway is back
            if host.gateway_ready == ready:
                break
            await asyncio.sleep(0.05)
        assert host.gateway_ready == ready
        assert gauge() == (1 if ready else 0)
        async with aiohttp.ClientSession() as http, http.get(f"{host.url}readyz") as r:
            assert r.status == (200 if ready else 503), await r.text()

    server, servicer, port = await gateway(0)
    plain = ServerConfig(host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=0.5, dependency_check_seconds=0.1)
    host = WebHost(WebConfig(server=plain, gateway=Endpoint(f"127.0.0.1:{port}")), Telemetry("web"))
    await host.start()
    try:
        await until(True)
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # alive, its stages are not
        await until(False)
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await until(True)
        await server.stop(0)  # the gateway goes away ...
        await until(False)
        server, servicer, _ = await gateway(port)  # ... and comes back on its address
        await until(True)
        target = f"127.0.0.1:{port}"
        changes = [
            r.getMessage()
            for r in caplog.records
            if r.name == "talkmesh.common.health"
            or (r.name == "services.web.server" and r.getMessage().startswith("gateway "))
        ]
        assert changes == [
            f"gateway {target} is not ready (not answering health checks)",
            f"gateway {target} is ready",
            f"gateway {target} is not ready (not answering health checks)",
            f"gateway {target} is ready",
        ]
        host.key_refused = "UNAUTHENTICATED: no such key"  # (as _ask_key records a refusal)
        assert gauge() == 0
        host.key_refused = ""
        assert gauge() == 1
    finally:
        await host.stop()
        await server.stop(0)
    assert gauge() == 0, "a stopped (draining) edge is not ready"


async def test_readiness_probes_at_once_ask_the_gateway_about_the_key_once() -> None:
    """/readyz while the key is refused asks the gateway again, but probes that arrive together
    share one question (ListVoices), and a later probe asks anew."""
    host = WebHost(WebConfig(server=ServerConfig(port=0, metrics_port=-1)), Telemetry("web"))
    asked = 0

    class Refusing:
        async def list_voices(self, voice: str = "", *, timeout: float | None = None) -> list[Any]:
            nonlocal asked
            asked += 1
            await asyncio.sleep(0.05)
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAUTHENTICATED, None, None, details="no such key")

    host.client = Refusing()  # type: ignore[assignment]
    assert await asyncio.gather(*(host._check_key() for _ in range(5))) == [False] * 5
    assert asked == 1 and host.key_refused == "UNAUTHENTICATED: no such key"
    assert not await host._check_key()
    assert asked == 2
    assert not await host._check_key(max_age=60.0)  # fresh enough: not asked
    assert asked == 2


async def test_a_key_check_that_learnt_nothing_is_asked_again_at_once() -> None:
    """A ListVoices that failed for another reason (a stage down, a timeout) says nothing about
    the key: the next probe asks again instead of trusting the old answer for a minute."""
    host = WebHost(WebConfig(server=ServerConfig(port=0, metrics_port=-1)), Telemetry("web"))
    codes = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED]

    class Flaky:
        async def list_voices(self, voice: str = "", *, timeout: float | None = None) -> list[Any]:
            raise grpc.aio.AioRpcError(codes.pop(0), None, None, details="no")

    host.client = Flaky()  # type: ignore[assignment]
    assert await host._check_key(max_age=60.0)  # nothing learnt: not refused (as before the check)
    assert not await host._check_key(max_age=60.0), "asked again: the gateway now refuses the key"
    assert codes == [] and host.key_refused == "UNAUTHENTICATED: no"


async def test_probes_waiting_on_a_key_check_that_learnt_nothing_do_not_ask_again_in_turn() -> None:
    """Five probes at once while the gateway times out: one question (each takes its timeout),
    not five one after another; the next probe asks anew."""
    host = WebHost(WebConfig(server=ServerConfig(port=0, metrics_port=-1)), Telemetry("web"))
    asked = 0

    class Slow:
        async def list_voices(self, voice: str = "", *, timeout: float | None = None) -> list[Any]:
            nonlocal asked
            asked += 1
            await asyncio.sleep(0.05)
            raise grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, None, None, details="slow")

    host.client = Slow()  # type: ignore[assignment]
    assert await asyncio.gather(*(host._check_key() for _ in range(5))) == [True] * 5
    assert asked == 1
    await host._check_key()
    assert asked == 2


async def test_a_plain_get_of_a_websocket_route_says_it_is_one_after_the_token_and_origin_checks(
    tmp_path: Path,
) -> None:
    """A plain GET of /v1/live got aiohttp's ``400 "Bad Request"``; it says what the route is, and
    keeps its place after the origin and token checks: a page learns why its handshake was refused
    (close 1006 in the browser) with that GET and its token (docs/WEB.md "Why a handshake was
    refused")."""
    from services.web import tokens

    secret_file = tmp_path / "secrets"
    secret = b"s" * 40
    secret_file.write_text(secret.decode() + "\n")
    secret_file.chmod(0o600)
    full = tokens.mint(secret, ttl_seconds=600)
    speak_only = tokens.mint(secret, ttl_seconds=600, scopes=("speak",))

    async def nothing(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        yield summary(0)

    async with edge(nothing) as (client, _):  # (no tokens)
        for path in ("/v1/live", "/v1/live/watch?session_id=x"):
            r = await client.get(path)
            body = await r.json()
            assert r.status == 400, body
            err = body["error"]
            assert err["code"] == "INVALID_ARGUMENT" and err["field"] == "Upgrade", err
            assert "this is a WebSocket endpoint" in err["message"] and "new WebSocket(" in err["message"], err

    async with edge(nothing, token_secret_file=str(secret_file), allowed_origins=(APP,)) as (client, _):
        refusals = [
            ({}, 401, "access_token"),
            ({"Authorization": f"Bearer {speak_only}"}, 403, "access_token"),
            ({"Authorization": f"Bearer {full}", "Origin": "https://evil.example"}, 403, "origin"),
            ({"Authorization": f"Bearer {full}", "Origin": APP}, 400, "Upgrade"),
            ({"Authorization": f"Bearer {full}"}, 400, "Upgrade"),
        ]
        for headers, status, field in refusals:
            r = await client.get("/v1/live", headers=headers)
            body = await r.json()
            assert (r.status, body["error"]["field"]) == (status, field), (headers, body)
            if headers.get("Origin") == APP:  # a listed origin's page reads the answer (CORS)
                assert r.headers["Access-Control-Allow-Origin"] == APP


async def test_a_refused_origin_is_logged_once_naming_the_setting(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A developer whose page was refused (403 before the upgrade, close 1006 in the browser) finds
    the origin and the setting in the edge's log; once per origin, and only so many origins (a
    page of any site a visitor opens may try, with origins of its choosing)."""
    from services.web import server as edge_server

    monkeypatch.setattr(edge_server, "REFUSED_ORIGINS_LOGGED", 3)
    caplog.set_level(logging.INFO, logger="services.web.server")

    async def nothing(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        yield summary(0)

    preflight = {"Access-Control-Request-Method": "POST"}
    async with edge(nothing, allowed_origins=(APP,)) as (client, _):
        for _ in range(3):
            assert (await client.get("/v1/live", headers={"Origin": "http://localhost:3000"})).status == 403
        assert (await client.post("/v1/speak", json={"text": "hi"}, headers={"Origin": "null"})).status == 403
        assert (await client.options("/v1/speak", headers={"Origin": "http://a.example", **preflight})).status == 403
        assert (await client.get("/v1/live", headers={"Origin": APP})).status == 400  # listed: not refused
        for n in range(5):  # past the limit: one line says so, then nothing
            assert (await client.get("/v1/live", headers={"Origin": f"http://b{n}.example"})).status == 403
    lines = [r.getMessage() for r in caplog.records if "web.allowed_origins" in r.getMessage()]
    assert len(lines) == 4, lines
    for origin, line in zip(("'http://localhost:3000'", "'null'", "'http://a.example'"), lines, strict=False):
        assert f"origin {origin}" in line and "refused" in line, line
    assert "not logged" in lines[3], lines
    assert all(r.levelno == logging.WARNING for r in caplog.records if "web.allowed_origins" in r.getMessage())


async def test_the_start_up_line_says_which_origins_may_use_the_edge(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="services.web.server")
    plain = ServerConfig(
        host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=0.5, dependency_check_seconds=0,
        max_concurrent_streams=8,
    )
    for origins, said in (
        ((), "allowed origins: its own only (web.allowed_origins)"),
        (
            (APP, "http://localhost:3000"),
            f"allowed origins: its own, {APP}, http://localhost:3000 (web.allowed_origins)",
        ),
    ):
        caplog.clear()
        config = WebConfig(server=plain, web=WebSettings(allowed_origins=origins))
        host = WebHost(config, Telemetry("web"))
        await host.start()
        await host.stop()
        (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("web serving on")]
        assert said in line, line


@pytest.mark.parametrize(
    ("details", "said"),
    [
        # the gateway could not reach a stage: said as the stage's, not as the gateway unreachable
        ("tts: failed to connect to all addresses", "tts: failed to connect to all addresses"),
        ("failed to connect to all addresses; last error: UNKNOWN: Connection refused", "gateway: not reachable"),
        ("DNS resolution failed: errors resolving gateway:50051", "gateway: not reachable"),
    ],
)
def test_an_unreachable_gateway_is_told_apart_from_a_stage_it_could_not_reach(details: str, said: str) -> None:
    from services.web.errors import from_rpc_error

    exc = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), details)
    err = from_rpc_error(exc)
    assert (err.status, err.message) == (503, said)


async def test_an_unreachable_gateway_is_told_alike_on_the_socket_and_over_http() -> None:
    """The edge's own channel cannot reach the gateway: a live socket's final status says what an
    HTTP answer says ("gateway: not reachable", UNAVAILABLE), not gRPC's channel text
    ("connections to all backends failing; last error: UNKNOWN: <address> Failed to connect..."),
    which a page would show its visitor."""
    import json
    import socket

    from talkmesh.common.config import Endpoint

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    config = dataclasses.replace(
        WebConfig(),
        gateway=Endpoint(f"127.0.0.1:{closed}"),
        server=ServerConfig(port=0, metrics_port=-1, dependency_check_seconds=0),
    )
    host = WebHost(config, Telemetry("web"))
    await host.start()
    try:
        async with aiohttp.ClientSession(host.url) as http:
            async with http.get("/v1/voices") as r:
                answer = (await r.json())["error"]
            assert r.status == 503
            assert answer == {"code": "UNAVAILABLE", "message": "gateway: not reachable", "field": ""}
            async with http.ws_connect("/v1/live") as ws:
                await ws.send_str(json.dumps({"config": {}}))
                async with asyncio.timeout(30):
                    body = json.loads((await ws.receive()).data)
                    closing = await ws.receive()
            assert body == {"status": answer}, body
            assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1013
    finally:
        await host.stop(1.0)
