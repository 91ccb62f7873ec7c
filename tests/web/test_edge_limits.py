"""The web edge facing visitors who take more than their share (a security review against a running
mesh): its limits fit in the gateway, per user and per client address; one token has one spelling;
Watch is its owner's; slow readers and half-sent headers are cut off; a deeply nested body is a
JSON error; answers name no software version or internal address, and carry the page's CSP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from services.web import server as edge_server
from services.web import tokens
from services.web.config import WebConfig, WebSettings
from services.web.live import BadMessage, parse_client_message
from services.web.main import load_config
from services.web.server import WebHost
from talkmesh.common.config import Endpoint, ServerConfig
from talkmesh.common.registry import WEB_OTHER_CALLS, spec
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import gateway_pb2 as gpb
from tests.mesh import inprocess_mesh
from tests.web.test_api import _recv_json
from tests.web.test_edge_unit import FMP4_MIME, edge, media, summary

pytestmark = pytest.mark.timeout(120)

SECRET = b"k" * 40
DEEP = "[" * 30000


def _secret_file(tmp_path: Path) -> str:
    path = tmp_path / "secrets"
    path.write_text(SECRET.decode() + "\n")
    return str(path)


def _spellings(token: str) -> list[str]:
    """Every base64url spelling of the token's signature (its last character's unused bits)."""
    head, _, signature = token.rpartition(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    out = []
    for c in alphabet:
        other = signature[:-1] + c
        if base64.urlsafe_b64decode(other + "=" * (-len(other) % 4)) == base64.urlsafe_b64decode(
            signature + "=" * (-len(signature) % 4)
        ):
            out.append(f"{head}.{other}")
    return out


async def _nothing(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
    yield summary(0)


async def _held(client: Any, path: str, **kwargs: Any) -> aiohttp.ClientWebSocketResponse:
    """A live socket that sends no config: it stays open (and counted) until closed."""
    ws = await client.ws_connect(path, **kwargs)
    await asyncio.sleep(0.05)
    return ws  # type: ignore[no-any-return]


async def _refusal(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    status = (await _recv_json(ws))["status"]
    assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
    return status  # type: ignore[no-any-return]


# -- 1. the edge's limits fit in the gateway; per client address ------------------------------------
def test_a_default_edge_asks_no_more_of_the_gateway_than_it_admits(caplog: pytest.LogCaptureFixture) -> None:
    """64 live sockets + 4 speaks against a gateway of 16: one visitor's sessions (4 subjects x 4)
    filled the gateway, and everyone's /v1/live, /v1/speak and /v1/voices failed."""
    config = load_config(None, env={})
    gateway = spec("gateway").max_streams
    assert config.server.max_concurrent_streams + config.web.max_concurrent_speaks < gateway
    # (the start-up line says the sum, and warns when it is over what a gateway admits)
    caplog.set_level(logging.INFO)
    big = dataclasses.replace(config, server=dataclasses.replace(config.server, max_concurrent_streams=64))
    WebHost(big, Telemetry("web"))._log_gateway_budget()
    assert any(r.levelno == logging.WARNING and "68 gateway calls" in r.getMessage() for r in caplog.records)


def test_the_smallest_message_limit_takes_the_largest_audio_message_the_gateway_takes() -> None:
    """web.max_ws_message_bytes may not be set below one audio message of the gateway's largest
    (1 s at 48 kHz, its PCM base64 in a JSON audio message)."""
    from services.web.config import MIN_WS_MESSAGE_BYTES
    from talkmesh.common.config import ConfigError

    pcm = bytes(2 * 48000)
    largest = json.dumps({"audio": {"turn_id": "t" * 64, "sample_rate": 48000, "pcm": base64.b64encode(pcm).decode()}})
    assert parse_client_message(largest) is not None
    assert len(largest.encode()) <= MIN_WS_MESSAGE_BYTES
    WebSettings(max_ws_message_bytes=MIN_WS_MESSAGE_BYTES).validate()
    with pytest.raises(ConfigError, match=r"max_ws_message_bytes.*1 s of 48 kHz audio"):
        WebSettings(max_ws_message_bytes=len(largest.encode()) - 1).validate()


def test_the_client_address_is_read_from_x_forwarded_for_of_trusted_proxies_only() -> None:
    proxies = WebSettings(trusted_proxies=("10.0.0.0/8", "127.0.0.1")).proxies()
    client_address = edge_server.client_address
    assert client_address("203.0.113.9", ["1.2.3.4"], proxies) == "203.0.113.9", "anyone can send the header"
    assert client_address("10.1.2.3", ["1.2.3.4"], ()) == "10.1.2.3", "no proxy trusted"
    assert client_address("10.1.2.3", ["6.6.6.6, 1.2.3.4"], proxies) == "1.2.3.4", "the last untrusted hop"
    assert client_address("10.1.2.3", ["1.2.3.4, 10.9.9.9", "127.0.0.1"], proxies) == "1.2.3.4"
    assert client_address("10.1.2.3", ["junk"], proxies) == "10.1.2.3"
    assert client_address("10.1.2.3", [], proxies) == "10.1.2.3"


def test_a_trusted_proxy_is_nobody_in_particular_and_hops_are_addresses_without_ports() -> None:
    """The k8s base trusts the private ranges: a request from an intranet visitor (10.x), from a
    node (an L4 balancer with externalTrafficPolicy Cluster) or without X-Forwarded-For resolved to
    the ingress pod's own address, and all its visitors shared 4 sessions and 2 speaks."""
    proxies = WebSettings(trusted_proxies=("10.0.0.0/8", "192.168.0.0/16", "127.0.0.1", "fd00::/8")).proxies()
    client_address, limit_key = edge_server.client_address, edge_server.limit_key

    def key(peer: str, *xff: str) -> str:
        return limit_key(client_address(peer, list(xff), proxies), proxies)

    assert key("10.1.2.3") == "", "no X-Forwarded-For: the proxy is nobody in particular"
    assert key("10.1.2.3", "192.168.4.4, 10.9.9.9") == "", "every hop trusted (an intranet visitor)"
    assert key("10.1.2.3", "unknown") == "", "a hop that is not an address"
    assert key("10.1.2.3", "1.2.3.4, _hidden") == ""
    assert key("::ffff:10.1.2.3", "203.0.113.9") == "203.0.113.9", "an IPv4-mapped peer is the IPv4 proxy"
    assert key("10.1.2.3", "::ffff:10.9.9.9, 203.0.113.9") == "203.0.113.9"
    assert key("10.1.2.3", "203.0.113.9, ::ffff:10.9.9.9") == "203.0.113.9", "a mapped hop is trusted"
    assert client_address("10.1.2.3", ["203.0.113.9:4711"], proxies) == "203.0.113.9", "ip:port"
    assert client_address("10.1.2.3", ["[2001:db8::7]:4711"], proxies) == "2001:db8::7", "[v6]:port"
    assert client_address("10.1.2.3", ["[2001:db8::7]"], proxies) == "2001:db8::7"
    assert key("10.1.2.3", "203.0.113.9, 10.9.9.9:80") == "203.0.113.9", "a trusted hop with a port"
    assert key("10.1.2.3", "2001:db8:1:2::7") == key("10.1.2.3", "2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert key("10.1.2.3", "2001:db8:1:3::7") != key("10.1.2.3", "2001:db8:1:2::7")
    assert key("203.0.113.9") == "203.0.113.9", "an untrusted peer is its own address"
    assert key("127.0.0.2") == key("::1") == key("") == "", "loopback, or no address"


async def test_per_address_limits_see_hops_with_ports_and_ipv6_clients_by_their_64() -> None:
    async with (
        edge(_nothing, trusted_proxies=("127.0.0.1",), max_sessions_per_ip=1) as (client, _),
        contextlib.AsyncExitStack() as stack,
    ):
        for first, second in (("198.51.100.7:5000", "198.51.100.7:5001"), ("2001:db8::1", "[2001:db8::2]:443")):
            ws = await _held(client, "/v1/live", headers={"X-Forwarded-For": first})
            stack.push_async_callback(ws.close)
            assert not ws.closed
            async with client.ws_connect("/v1/live", headers={"X-Forwarded-For": second}) as ws:
                status = await _refusal(ws)
                assert "web.max_sessions_per_ip" in status["message"], second


async def test_live_sessions_per_client_address() -> None:
    """web.max_sessions_per_ip: one address (behind a trusted proxy: X-Forwarded-For) opens at most
    that many live sockets, whatever its tokens; another address still gets in."""
    async with (
        edge(_nothing, trusted_proxies=("127.0.0.1",), max_sessions_per_ip=2) as (client, _),
        contextlib.AsyncExitStack() as stack,
    ):
        one = {"X-Forwarded-For": "203.0.113.5"}
        for _ in range(2):
            ws = await _held(client, "/v1/live", headers=one)
            stack.push_async_callback(ws.close)
        async with client.ws_connect("/v1/live", headers=one) as ws:
            status = await _refusal(ws)
            assert status["code"] == "RESOURCE_EXHAUSTED" and "web.max_sessions_per_ip" in status["message"]
            assert ws.close_code == 1013
        other = await _held(client, "/v1/live", headers={"X-Forwarded-For": "198.51.100.7"})
        assert not other.closed, "another address gets in"
        await other.close()


async def test_without_a_trusted_proxy_x_forwarded_for_is_not_believed() -> None:
    async with edge(_nothing, max_sessions_per_ip=1) as (client, _), contextlib.AsyncExitStack() as stack:
        # the connection is loopback (the machine's own user: no per-address limit), whatever the header says
        for n in range(3):
            ws = await _held(client, "/v1/live", headers={"X-Forwarded-For": "203.0.113.5"})
            stack.push_async_callback(ws.close)
            assert not ws.closed, n


# -- 2. one token, one spelling ----------------------------------------------------------------------
def test_a_token_has_one_spelling() -> None:
    token = tokens.mint(SECRET, ttl_seconds=600)
    spellings = _spellings(token)
    assert len(spellings) == 4 and token in spellings  # 43 characters for 32 bytes: 2 unused bits
    access = tokens.check(token, [SECRET], max_ttl_seconds=3600)
    for other in spellings:
        if other != token:
            with pytest.raises(tokens.TokenError, match="canonical"):
                tokens.check(other, [SECRET], max_ttl_seconds=3600)
    # without a sub it is counted by its payload (or its jti), never by its text
    again = tokens.check(token, [SECRET], max_ttl_seconds=3600)
    assert access.identity == again.identity and access.identity.startswith("payload:")
    other_token = tokens.mint(SECRET, ttl_seconds=601)
    assert tokens.check(other_token, [SECRET], max_ttl_seconds=3600).identity != access.identity


async def test_the_spellings_of_one_token_share_its_session_limit(tmp_path: Path) -> None:
    token = tokens.mint(SECRET, ttl_seconds=600)  # no sub: counted as itself
    async with (
        edge(_nothing, token_secret_file=_secret_file(tmp_path), max_sessions_per_subject=1) as (client, _),
        contextlib.AsyncExitStack() as stack,
    ):
        ws = await _held(client, "/v1/live", params={"access_token": token})
        stack.push_async_callback(ws.close)
        for other in _spellings(token):
            if other == token:
                continue
            r = await client.get("/v1/voices", headers={"Authorization": f"Bearer {other}"})
            assert r.status == 401 and "canonical" in (await r.json())["error"]["message"]
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await client.ws_connect("/v1/live", params={"access_token": other})
        async with client.ws_connect("/v1/live", params={"access_token": token}) as again:
            refusal = await _refusal(again)
            # (the back-off WEB.md tells clients to honour: the edge's own refusals carry it too)
            assert (refusal["code"], refusal["retry_after_seconds"]) == ("RESOURCE_EXHAUSTED", 1.0), refusal


async def test_subjects_that_share_their_first_128_characters_are_two_users(tmp_path: Path) -> None:
    """The subject was cut to 128 characters and that was the owner of a session (Watch) and the
    per-user key: two users with one long prefix (an e-mail under a long tenant path) were one."""
    alice, bob = "t/" + "x" * 126 + "alice", "t/" + "x" * 126 + "bob"
    async with (
        edge(_nothing, token_secret_file=_secret_file(tmp_path), max_sessions_per_subject=1) as (client, _),
        contextlib.AsyncExitStack() as stack,
    ):
        for subject in (alice, bob):
            token = tokens.mint(SECRET, ttl_seconds=600, subject=subject)
            ws = await _held(client, "/v1/live", params={"access_token": token})
            stack.push_async_callback(ws.close)
            with pytest.raises(TimeoutError):  # (a refused one gets its final status at once)
                await asyncio.wait_for(ws.receive(), 0.5)
            assert not ws.closed, "each user has a session of their own"
    minted = [tokens.mint(SECRET, ttl_seconds=600, subject=s) for s in (alice, bob)]
    checked = [tokens.check(t, [SECRET], max_ttl_seconds=3600) for t in minted]
    assert checked[0].subject == checked[1].subject, "cut for spans and logs"
    assert checked[0].owner != checked[1].owner


# -- 3. Watch is the session owner's -----------------------------------------------------------------
async def test_watch_is_refused_to_anyone_but_the_sessions_owner(tmp_path: Path) -> None:
    """Every call goes out with the edge's one key, so the gateway's owner check passes for any
    visitor: the edge keeps who opened each session, and answers anyone else as for an unknown id."""
    env = {"TALKMESH_WEB__WEB__TOKEN_SECRET_FILE": _secret_file(tmp_path)}
    victim = tokens.mint(SECRET, ttl_seconds=600, subject="victim")
    victim_watch = tokens.mint(SECRET, ttl_seconds=600, subject="victim", scopes=("watch",))
    attacker = tokens.mint(SECRET, ttl_seconds=600, subject="attacker", scopes=("watch",))
    anonymous = tokens.mint(SECRET, ttl_seconds=600)  # (no sub: its own identity)
    async with (
        inprocess_mesh(tmp_path, web=True, env=env) as mesh,
        aiohttp.ClientSession(mesh.web_url) as http,
        http.ws_connect("/v1/live", params={"access_token": victim}) as live,
    ):
        await live.send_str(json.dumps({"config": {}}))
        session_id = (await _recv_json(live))["started"]["session_id"]

        async def watch(token: str, sid: str) -> tuple[dict[str, Any], int | None]:
            async with http.ws_connect("/v1/live/watch", params={"access_token": token, "session_id": sid}) as ws:
                first = await _recv_json(ws)
                if "status" not in first:
                    return first, None
                assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE
                return first, ws.close_code

        for token in (attacker, anonymous):
            (theirs, code), (unknown, unknown_code) = await watch(token, session_id), await watch(token, "x" * 40)
            assert "started" not in theirs, "another user's session is not shown"
            assert theirs["status"]["code"] == "NOT_FOUND" and code == unknown_code == 1008
            assert theirs["status"]["field"] == unknown["status"]["field"] == "session_id"
            assert theirs["status"]["message"].replace(session_id, "ID") == unknown["status"]["message"].replace(
                "x" * 40, "ID"
            ), "the same answer as for an id that does not exist"
        own, _ = await watch(victim_watch, session_id)  # the owner, with another token of theirs
        assert own["started"]["session_id"] == session_id
    assert not mesh.hosts["web"]._session_owners, "forgotten when the session ends"


async def test_a_backends_session_is_watched_by_a_visitor_its_token_names(tmp_path: Path) -> None:
    """An LLM agent's backend drives the session over gRPC and the visitor's page watches it: the
    edge refused every watch of a session it had not opened for the same user (NOT_FOUND). A
    token whose `sessions` claim names the session may watch it; others still may not."""
    from talkmesh.client import TalkmeshClient

    env = {"TALKMESH_WEB__WEB__TOKEN_SECRET_FILE": _secret_file(tmp_path)}
    async with (
        inprocess_mesh(tmp_path, web=True, env=env) as mesh,
        TalkmeshClient(mesh.gateway) as backend,
        backend.live() as session,
        aiohttp.ClientSession(mesh.web_url) as http,
    ):
        sid = session.session_id

        async def watch(token: str) -> dict[str, Any]:
            async with http.ws_connect("/v1/live/watch", params={"access_token": token, "session_id": sid}) as ws:
                return await _recv_json(ws)

        granted = tokens.mint(SECRET, ttl_seconds=600, subject="visitor", scopes=("watch",), sessions=(sid,))
        assert (await watch(granted))["started"]["session_id"] == sid
        other = tokens.mint(SECRET, ttl_seconds=600, subject="visitor", scopes=("watch",), sessions=("x" * 40,))
        assert (await watch(other))["status"]["code"] == "NOT_FOUND"
        no_watch = tokens.mint(SECRET, ttl_seconds=600, subject="visitor", scopes=("live",), sessions=(sid,))
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await watch(no_watch)
        assert refused.value.status == 403


# -- 4. speaks: a share per client, and slow readers ----------------------------------------------------
async def test_concurrent_speaks_have_a_share_per_client() -> None:
    release = asyncio.Event()

    async def chunks(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        await release.wait()
        yield media(b"x" * 10, mime="video/mp4", frames=1)
        yield summary(1)

    async with edge(chunks, trusted_proxies=("127.0.0.1",), max_speaks_per_client=1) as (client, fake):
        one = {"X-Forwarded-For": "203.0.113.5"}
        first = asyncio.create_task(client.post("/v1/speak", json={"text": "One."}, headers=one))
        for _ in range(500):
            if fake.stub.calls:
                break
            await asyncio.sleep(0.01)
        r = await client.post("/v1/speak", json={"text": "Two."}, headers=one)
        body = await r.json()
        assert r.status == 429 and "web.max_speaks_per_client" in body["error"]["message"], body
        assert r.headers["Retry-After"] == "2"
        other = asyncio.create_task(
            client.post("/v1/speak", json={"text": "Three."}, headers={"X-Forwarded-For": "198.51.100.7"})
        )
        for _ in range(500):
            if len(fake.stub.calls) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(fake.stub.calls) == 2, "another client still gets a slot"
        release.set()
        assert (await first).status == 200 and (await other).status == 200
        r = await client.post("/v1/speak", json={"text": "Four."}, headers=one)
        assert r.status == 200, "the share is free again"


@contextlib.asynccontextmanager
async def real_edge(**settings: Any) -> AsyncIterator[WebHost]:
    """The edge as `talkmesh serve web` runs it (its own AppRunner), with no gateway behind it."""
    server = dict(host="127.0.0.1", port=0, metrics_port=-1, grace_seconds=0.5, dependency_check_seconds=0)
    server.update(settings.pop("server", {}))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    config = WebConfig(
        server=ServerConfig(**server),  # type: ignore[arg-type]
        gateway=Endpoint(f"127.0.0.1:{dead}"),
        web=dataclasses.replace(WebSettings(), **settings),
    )
    host = WebHost(config, Telemetry("web"))
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


async def test_a_client_that_stops_reading_its_speak_is_cut_off() -> None:
    """`curl -N --limit-rate 1k`: four of them held every speak slot for up to 300 s."""

    async def endless(req: gpb.SpeakRequest) -> AsyncIterator[gpb.SpeakChunk]:
        yield media(b"\0\0\0\x18ftypiso5", init=True, mime=FMP4_MIME)
        while True:
            yield media(b"f" * 65536, frames=1)
            await asyncio.sleep(0)

    async with real_edge(server={"write_timeout_seconds": 1.0}) as host:
        from tests.web.test_edge_unit import FakeClient

        real, host.client = host.client, FakeClient(endless)  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", host.port))
            body = json.dumps({"text": "Hi.", "output": {"container": "CONTAINER_FMP4"}}).encode()
            head = (
                f"POST /v1/speak HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            await loop.sock_sendall(sock, head + body)  # ... and reads nothing
            for _ in range(100):
                if host.speaks.held:
                    break
                await asyncio.sleep(0.05)
            assert host.speaks.held == 1
            for _ in range(300):  # (the kernel's buffers fill first, then 1 s of no progress)
                if not host.speaks.held:
                    break
                await asyncio.sleep(0.05)
            assert host.speaks.held == 0, "the slot is given back"
            assert host.client.stub.calls[0].cancelled  # type: ignore[union-attr]
        finally:
            sock.close()
            host.client = real


# -- 5. slowloris --------------------------------------------------------------------------------------
async def test_slow_headers_and_too_many_connections_are_closed() -> None:
    """1000 connections each sending half a header stayed open 95 s and more (aiohttp's default:
    an hour); the edge closes them after web.read_timeout_seconds (15 s by default; 1 s here)."""
    assert WebSettings().read_timeout_seconds == 15.0
    async with real_edge(read_timeout_seconds=1.0, max_connections_per_ip=3) as host:
        # half a header: closed after web.read_timeout_seconds
        reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        await writer.drain()
        async with asyncio.timeout(5):
            assert await reader.read() == b"", "closed by the edge"
        writer.close()
        async with aiohttp.ClientSession() as http, http.get(f"{host.url}healthz") as r:
            assert r.status == 200, "the loopback client (a proxy on this host) is not limited per address"


class _Transport:
    def __init__(self, address: str) -> None:
        self.peer, self.aborted = (address, 4711), False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def abort(self) -> None:
        self.aborted = True


def test_connections_per_address_exempt_loopback_and_proxies_and_count_ipv6_by_its_64() -> None:
    """web.max_connections_per_ip: a client address opens at most that many at once, the next is
    closed; loopback (a proxy on this host not in trusted_proxies: the site would have had 32
    connections) and trusted proxies are not limited."""
    config = dataclasses.replace(
        WebConfig(), web=dataclasses.replace(WebSettings(), max_connections_per_ip=2, trusted_proxies=("10.0.0.0/8",))
    )
    host = WebHost(config, Telemetry("web"))
    server = type("Server", (), {"connection_made": lambda *a: None, "connection_lost": lambda *a: None})()
    host._count_connections(server)

    def opened(*addresses: str) -> list[bool]:
        out = []
        for address in addresses:
            transport = _Transport(address)
            server.connection_made(object(), transport)
            out.append(not transport.aborted)
        return out

    assert opened("203.0.113.9", "::ffff:203.0.113.9", "203.0.113.9") == [True, True, False]
    assert opened("2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8:0:1::1") == [True, True, False, True]
    assert all(opened(*["127.0.0.1"] * 5, *["::1"] * 5, *["10.1.2.3"] * 5, *["::ffff:10.1.2.3"] * 5))
    handler = object()
    server.connection_made(handler, _Transport("198.51.100.1"))
    assert opened("198.51.100.1", "198.51.100.1") == [True, False]
    server.connection_lost(handler, None)
    assert opened("198.51.100.1") == [True], "a closed connection counts no more"


# -- 6. deeply nested JSON -----------------------------------------------------------------------------
async def test_deeply_nested_json_is_a_json_error_and_a_final_status() -> None:
    async with edge(_nothing) as (client, _):
        for body in (DEEP, '{"text": ' + DEEP):
            r = await client.post("/v1/speak", data=body, headers={"Content-Type": "application/json"})
            answer = await r.json()
            assert r.status == 400 and answer["error"]["code"] == "INVALID_ARGUMENT", answer
            assert "too deeply nested" in answer["error"]["message"] and answer["error"]["field"] == "body"
        async with client.ws_connect("/v1/live") as ws:
            await ws.send_str(DEEP)
            status = await _refusal(ws)
            assert status["code"] == "INVALID_ARGUMENT" and "too deeply nested" in status["message"], status
            assert ws.close_code == 1008
    with pytest.raises(BadMessage, match="too deeply nested"):
        parse_client_message('{"text": ' + DEEP)


# -- 7. what answers tell ---------------------------------------------------------------------------------
async def test_answers_carry_no_versions_or_addresses_and_the_page_its_csp() -> None:
    async with real_edge() as host:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{host.url}readyz") as r:
                body = await r.json()
                assert r.status == 503 and body == {"status": "gateway unavailable"}, body
                assert str(host.config.gateway.target) not in await r.text()
            for path in ("", "static/app.js", "v1/voices", "healthz", "nothing-here"):
                async with http.get(f"{host.url}{path}") as r:
                    assert r.headers["Server"] == "talkmesh", (path, r.headers.get("Server"))
                    assert r.headers["X-Content-Type-Options"] == "nosniff", path
            async with http.get(host.url) as r:
                csp = r.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
                assert "media-src 'self' blob:" in csp and f"ws://{host.address}" in csp
                assert "frame-ancestors" not in csp, "by default any site may frame the page (documented)"
    async with edge(_nothing, frame_ancestors=("'self'", "https://app.example.com")) as (client, _):
        r = await client.get("/")
        assert "frame-ancestors 'self' https://app.example.com" in r.headers["Content-Security-Policy"]


async def test_a_request_id_is_kept_to_an_id_s_longest() -> None:
    """X-Request-Id is the request's id at the stages too: the edge keeps its first MAX_ID_CHARS."""
    from talkmesh.common.names import MAX_ID_CHARS

    async with edge(_nothing) as (client, _):
        r = await client.get("/", headers={"X-Request-Id": "r" * 300})
        assert r.headers["X-Request-Id"] == "r" * MAX_ID_CHARS


async def test_a_malformed_request_is_one_info_line_not_an_error_with_a_traceback(caplog) -> None:
    """aiohttp's parser refuses a malformed request (a scanner, TLS sent to the plain port) with a
    400 and logged an ERROR with its traceback for each: a log flood anyone could cause, and noise
    for whoever is on call. Now one INFO line naming the problem."""
    requests = (
        b"GET /\x01bad HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    )
    async with real_edge() as host:
        with caplog.at_level(logging.DEBUG):
            for raw in requests:
                reader, writer = await asyncio.open_connection("127.0.0.1", host.port)
                writer.write(raw)
                answer = await asyncio.wait_for(reader.read(), 10)
                writer.close()
                assert answer.startswith(b"HTTP/1.0 400"), answer[:100]
    records = [r for r in caplog.records if "handling request" in r.getMessage() or r.name.startswith("aiohttp")]
    assert not [r for r in records if r.levelno >= logging.WARNING], [r.getMessage() for r in records]
    lines = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len(lines) == 2 and not any(r.exc_info for r in records), lines
    assert "Invalid char in url path" in lines[0] and "Content-Length" in lines[1], lines


# -- 8. uploads in flight --------------------------------------------------------------------------
async def test_uploads_in_flight_are_limited_in_all_and_per_client() -> None:
    """A multipart upload holds a gateway stream until its file has arrived: one client trickling
    its bodies held all of the gateway's streams (docs/WEB.md "Sizing" keeps 2 for lists and uploads)."""
    go = asyncio.Event()
    form = b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nx\r\n'
    headers = {"Content-Type": "multipart/form-data; boundary=b"}

    async def trickle() -> AsyncIterator[bytes]:
        yield form
        await go.wait()
        yield b"--b--\r\n"

    async with edge(_nothing, trusted_proxies=("127.0.0.1",)) as (client, _):

        async def post(address: str, body: Any) -> tuple[int, dict[str, Any]]:
            r = await client.post("/v1/avatars", data=body, headers={**headers, "X-Forwarded-For": address})
            return r.status, await r.json()

        held = [asyncio.create_task(post("203.0.113.5", trickle()))]
        await asyncio.sleep(0.2)
        status, answer = await post("203.0.113.5", form + b"--b--\r\n")
        assert status == 429 and answer["error"]["code"] == "RESOURCE_EXHAUSTED", answer
        assert "web.max_uploads_per_client" in answer["error"]["message"] and answer["error"]["field"] == "file"
        held.append(asyncio.create_task(post("198.51.100.7", trickle())))
        await asyncio.sleep(0.2)
        status, answer = await post("192.0.2.99", form + b"--b--\r\n")
        assert status == 429 and "web.max_concurrent_uploads" in answer["error"]["message"], answer
        go.set()
        for task in held:
            assert (await task)[0] == 400, "no file: refused once the body has ended"
        status, answer = await post("203.0.113.5", form + b"--b--\r\n")
        assert status == 400 and answer["error"]["field"] == "file", "the ended uploads count no more"
    config = load_config(None, env={})
    assert config.web.max_concurrent_uploads == WEB_OTHER_CALLS and config.web.max_uploads_per_client == 1
