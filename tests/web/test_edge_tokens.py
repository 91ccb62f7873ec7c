"""Access tokens at the web edge (docs/WEB.md "Access tokens"), against a real in-process mesh: the
API and the live WebSocket need one, scopes restrict what it allows, the page takes it from its
URL's fragment or the page that frames it, and says so in Chromium when it is refused."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.web import tokens
from talkmesh.bench.web import wait_js
from talkmesh.cli import main as cli_main
from tests.mesh import inprocess_mesh
from tests.web.browser import browser_page
from tests.web.test_api import _recv_json, portrait
from tests.web.test_browser_embed import site
from tests.web.test_edge_security import _upgrade

pytestmark = pytest.mark.timeout(150)

OLD = "o" * 40  # a secret being rotated out: its tokens are still accepted


def _secrets(tmp_path: Path) -> tuple[Path, bytes]:
    """A secret file made by `talkmesh token secret` (the new secret first, the old one after)."""
    fresh = tmp_path / "fresh-secret"
    assert cli_main(["token", "secret", str(fresh)]) == 0
    assert fresh.stat().st_mode & 0o777 == 0o600, "readable by its owner only"
    path = tmp_path / "web-secrets"
    path.write_text(OLD + "\n")
    path.chmod(0o644)
    assert cli_main(["token", "secret", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600, "a rewritten file is 0600 too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh-secret", "web-secrets"], "no temporary left"
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and lines[1] == OLD and len(lines[0]) >= tokens.MIN_SECRET_CHARS
    return path, lines[0].encode()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_the_api_and_the_websocket_need_a_token_that_allows_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path, secret = _secrets(tmp_path)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    env = {"TALKMESH_WEB__WEB__TOKEN_SECRET_FILE": str(path)}
    capsys.readouterr()
    assert cli_main(["token", "new", "--secret-file", str(path), "--subject", "alice", "--ttl", "600"]) == 0
    full = capsys.readouterr().out.strip()  # minted by the CLI, with the first secret
    speak_only = tokens.mint(secret, ttl_seconds=600, scopes=("speak",))
    old = tokens.mint(OLD.encode(), ttl_seconds=600, subject="rotated")
    expired = tokens.mint(secret, ttl_seconds=60, now=time.time() - 3600)
    foreign = tokens.mint(b"f" * 40, ttl_seconds=600)
    async with (
        inprocess_mesh(tmp_path, tracer_provider=provider, web=True, env=env) as mesh,
        aiohttp.ClientSession(mesh.web_url) as http,
    ):
        # the page, its files and the probes need no token
        for free in ("/", "/static/app.js", "/healthz", "/readyz", "/metrics"):
            async with http.get(free) as r:
                assert r.status == 200, free

        # no token, a foreign, an expired one, another scheme, a token in the query of a non-WebSocket
        refused: list[tuple[dict[str, str], str, str]] = [
            ({}, "", "needs an access token"),
            (_bearer(foreign), "", "signature does not match"),
            (_bearer(expired), "", "expired"),
            ({"Authorization": f"Basic {full}"}, "", "needs an access token"),
            ({}, f"?access_token={full}", "needs an access token"),
        ]
        for headers, query, why in refused:
            async with http.get(f"/v1/voices{query}", headers=headers) as r:
                body = await r.json()
                assert r.status == 401, (headers, query, body)
                assert body["error"]["code"] == "UNAUTHENTICATED" and body["error"]["field"] == "access_token"
                assert why in body["error"]["message"], body
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
        for token in (full, old, speak_only):  # any valid token reads the lists
            async with http.get("/v1/voices", headers=_bearer(token)) as r:
                assert r.status == 200 and (await r.json())["voices"], token

        # the WebSocket: refused before the upgrade (no gateway stream), else by query or header
        for query in ("", f"?access_token={foreign}", f"?access_token={speak_only}"):
            async with http.get(f"/v1/live{query}", headers=_upgrade()) as r:
                body = await r.json()
                assert r.status == (403 if speak_only in query else 401), body
                assert body["error"]["field"] == "access_token", body
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await http.ws_connect("/v1/live")
        assert exc.value.status == 401
        assert mesh.active_streams()["gateway"] == 0
        # (a proxy's Basic credentials on the WebSocket leave the query's token to be read)
        basic = {"Authorization": "Basic dXNlcjpwYXNz"}
        for kwargs in (
            {"params": {"access_token": full}},
            {"headers": _bearer(old)},
            {"params": {"access_token": full}, "headers": basic},
        ):
            async with http.ws_connect("/v1/live", **kwargs) as ws:
                await ws.send_str(json.dumps({"config": {}}))
                assert "started" in await _recv_json(ws), kwargs

        # the page's way: the token as a subprotocol (out of the URL), answered with "talkmesh"
        async with http.ws_connect("/v1/live", protocols=("talkmesh", f"access_token.{old}")) as ws:
            assert ws.protocol == "talkmesh"
            await ws.send_str(json.dumps({"config": {}}))
            assert "started" in await _recv_json(ws)
        offered = {**_upgrade(), "Sec-WebSocket-Protocol": f"talkmesh, access_token.{foreign}"}
        async with http.get("/v1/live", headers=offered) as r:
            assert r.status == 401
        # the token's subprotocol alone (a browser would fail the handshake: no protocol answered)
        offered = {**_upgrade(), "Sec-WebSocket-Protocol": f"access_token.{full}"}
        async with http.get("/v1/live", headers=offered) as r:
            body = await r.json()
            assert r.status == 400 and body["error"]["field"] == "Sec-WebSocket-Protocol", body
        # aiohttp logs the protocols it cannot answer: never a token
        caplog.set_level(logging.DEBUG, logger="aiohttp.websocket")
        async with http.ws_connect("/v1/live", headers=_bearer(full), protocols=(f"access_token.{full}",)) as ws:
            await ws.send_str(json.dumps({"config": {}}))
            assert "started" in await _recv_json(ws)
        assert "overlap" in caplog.text and full not in caplog.text and "access_token.<hidden>" in caplog.text

        # a token without a scope claim (the CLI's default) may not change the avatars
        form = aiohttp.FormData()
        form.add_field("file", portrait(), filename="me.png", content_type="image/png")
        async with http.post("/v1/avatars", data=form, headers=_bearer(full)) as r:
            assert r.status == 403 and "does not allow avatars" in (await r.json())["error"]["message"]

        # a speak-only token speaks, and may neither upload nor watch
        async with http.post("/v1/speak", json={"text": "Hello."}, headers=_bearer(speak_only)) as r:
            assert r.status == 200 and len(await r.read()) > 1000
        async with http.post("/v1/speak", json={"text": "Hello."}) as r:
            assert r.status == 401
        form = aiohttp.FormData()
        form.add_field("file", portrait(), filename="me.png", content_type="image/png")
        async with http.post("/v1/avatars", data=form, headers=_bearer(speak_only)) as r:
            body = await r.json()
            assert r.status == 403 and body["error"]["field"] == "access_token", body
            assert "does not allow avatars (its scope: speak)" in body["error"]["message"]
        async with http.delete("/v1/avatars/default", headers=_bearer(speak_only)) as r:
            assert r.status == 403
        async with http.get("/v1/live/watch?session_id=x", headers={**_upgrade(), **_bearer(speak_only)}) as r:
            assert r.status == 403
        async with http.head("/v1/live", headers=_bearer(speak_only)) as r:  # HEAD is GET's: live's scope
            assert r.status == 403
        async with http.get("/v1/avatars", headers=_bearer(full)) as r:
            assert "default" in json.dumps(await r.json()), "nothing was deleted"

        registry = mesh.telemetry["web"].metrics.registry
        labels = {"service": "web", "method": "GET /v1/voices", "code": "UNAUTHENTICATED"}
        assert registry.get_sample_value("talkmesh_streams_total", labels) == len(refused)

    # the token's subject is on the edge's span of the request it made
    subjects = {s.attributes.get("enduser.id") for s in exporter.get_finished_spans() if s.name == "web GET /v1/voices"}
    assert {"alice", "rotated"} <= subjects


async def test_a_bad_secret_file_stops_the_edge_at_start(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    with pytest.raises(Exception, match="token_secret_file") as exc:
        async with inprocess_mesh(tmp_path, web=True, env={"TALKMESH_WEB__WEB__TOKEN_SECRET_FILE": str(short)}):
            pass
    assert "tooshort" not in str(exc.value)


#: JS: what the page shows and did (its alert, whether a session runs, how many connections it made).
STATE = """() => ({alert: document.getElementById('alert').textContent, connected: window.talkmesh.connected,
  connects: window.talkmesh.connects.length, painted: window.talkmesh.painted, hash: location.hash,
  access: window.talkmesh.access || null})"""


async def test_the_page_with_and_without_its_token_in_chromium(tmp_path: Path) -> None:
    path, secret = _secrets(tmp_path)
    token = tokens.mint(secret, ttl_seconds=600, subject="visitor")
    speak_only = tokens.mint(secret, ttl_seconds=600, scopes=("speak",))
    env = {"TALKMESH_WEB__WEB__TOKEN_SECRET_FILE": str(path)}
    async with (
        site() as shop,
        inprocess_mesh(tmp_path, web=True, env=env) as mesh,
        browser_page() as (page, console),
    ):
        base = mesh.web_url.rstrip("/")
        # the link a site gives its visitor: the token in the fragment (here with the newline of a
        # fetched one), gone from the address bar; the WebSocket carries it out of its URL
        sockets: list[str] = []
        page.on("websocket", lambda socket: sockets.append(socket.url))
        await page.goto(f"{base}/#access_token={token}%0A")
        await wait_js(page, "window.talkmesh && window.talkmesh.painted > 0", timeout=30)
        state: dict[str, Any] = await page.evaluate(STATE)
        assert state["connected"] is True and state["hash"] == "" and not state["alert"], state
        assert sockets and not [u for u in sockets if "access_token" in u], sockets

        # no token: the page says why and makes no connection (no retry loop against a refusal)
        await page.goto(f"{base}/")
        await wait_js(page, "window.talkmesh && window.talkmesh.access", timeout=15)
        # a message from the page itself (not a framing page) is no token
        await page.evaluate(f"window.postMessage({{type: 'talkmesh.access_token', token: '{token}'}}, '*')")
        await asyncio.sleep(1.5)
        state = await page.evaluate(STATE)
        assert state["connects"] == 0 and state["connected"] is False, state
        assert "do not have access to the avatar" in state["alert"], state
        assert "open it again from the site" in state["alert"], state  # (a reload has no token: not advised)

        # a token whose scope leaves out live sessions: the lists load, the WebSocket is refused
        # before its upgrade and the page asks the edge why instead of retrying
        await page.goto(f"{base}/?visit=2#access_token={speak_only}")  # (not the same URL: a new page)
        await wait_js(page, "window.talkmesh && window.talkmesh.access", timeout=15)
        await asyncio.sleep(2.5)  # a retry would come within the backoff's first 1-2 s
        state = await page.evaluate(STATE)
        assert state["connects"] == 1 and state["connected"] is False, state
        assert "does not allow live" in state["access"]["message"], state  # (the alert is for people)
        voices = await page.evaluate("document.getElementById('voice-select').options.length")
        assert voices > 1, "the lists need any valid token"

        # a token for live sessions only: the session runs, the download button is off
        live_only = tokens.mint(secret, ttl_seconds=600, scopes=("live",))
        await page.goto(f"{base}/?visit=3#access_token={live_only}")
        await wait_js(page, "window.talkmesh && window.talkmesh.painted > 0", timeout=30)
        assert await page.is_disabled("#download")
        posts: list[str] = []
        page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        png = tmp_path / "me.png"
        png.write_bytes(portrait())
        await page.set_input_files("#avatar-file", str(png))  # no `avatars` in its scope: not sent
        assert "does not include adding avatars" in await page.inner_text("#upload-status")
        assert posts == [], posts

        # framed by the site, which hands the token over once its own user signed in (and hears
        # of the refusal before)
        await page.goto(f"http://localhost:{shop}/")
        await page.evaluate(
            "window.__heard = []; window.addEventListener('message', (e) => window.__heard.push(e.data))"
        )
        await page.evaluate(
            f"""document.body.insertAdjacentHTML('beforeend',
              '<iframe id="f" src="{base}/" width=900 height=700></iframe>')"""
        )
        frame = await (await page.wait_for_selector("#f")).content_frame()
        assert frame is not None
        await wait_js(frame, "window.talkmesh && window.talkmesh.access", timeout=15)
        assert "waiting for the site to sign you in again" in await frame.inner_text("#alert")
        await page.evaluate(
            f"document.getElementById('f').contentWindow.postMessage("
            f"{{type: 'talkmesh.access_token', token: '{token}'}}, '{base}')"
        )
        await wait_js(frame, "window.talkmesh.painted > 0 && window.talkmesh.connected", timeout=30)
        assert not await frame.evaluate("document.getElementById('alert').textContent")
        assert await frame.evaluate("window.talkmesh.access") is None
        heard = await page.evaluate("window.__heard")
        assert [h["type"] for h in heard if isinstance(h, dict)] == ["talkmesh.access_refused"], heard
        assert heard[0]["code"] == "UNAUTHENTICATED"
    # the refusals are answers the page expects (401/403 in the console's network log only)
    assert not [e for e in console.errors if "uncaught" in e], console.errors


async def test_one_user_cannot_hold_every_live_session(tmp_path: Path) -> None:
    """web.max_sessions_per_subject: one token's subject (or one token without a subject) opens
    at most that many live sockets; others still get in."""
    path, secret = _secrets(tmp_path)
    env = {"TALKMESH_WEB__WEB__TOKEN_SECRET_FILE": str(path), "TALKMESH_WEB__WEB__MAX_SESSIONS_PER_SUBJECT": "2"}
    alice = [tokens.mint(secret, ttl_seconds=600, subject="alice") for _ in range(2)]
    anonymous = tokens.mint(secret, ttl_seconds=600)
    bob = tokens.mint(secret, ttl_seconds=600, subject="bob")
    async with (
        inprocess_mesh(tmp_path, web=True, env=env) as mesh,
        aiohttp.ClientSession(mesh.web_url) as http,
        contextlib.AsyncExitStack() as stack,
    ):
        for token in (alice[0], alice[1], anonymous, anonymous):  # two tokens of one subject, one token twice
            ws = await stack.enter_async_context(http.ws_connect("/v1/live", params={"access_token": token}))
            await ws.send_str(json.dumps({"config": {}}))
            assert "started" in await _recv_json(ws)
        for token in (alice[0], anonymous):
            async with http.ws_connect("/v1/live/watch", params={"access_token": token, "session_id": "x"}) as ws:
                status = (await _recv_json(ws))["status"]
                assert status["code"] == "RESOURCE_EXHAUSTED" and "web.max_sessions_per_subject" in status["message"]
                assert (await ws.receive()).type == aiohttp.WSMsgType.CLOSE and ws.close_code == 1013
        async with http.ws_connect("/v1/live", params={"access_token": bob}) as ws:
            await ws.send_str(json.dumps({"config": {}}))
            assert "started" in await _recv_json(ws), "another user still gets in"
        async with browser_page() as (page, _):  # alice opens the page in one tab more: told why
            await page.goto(f"{mesh.web_url}#access_token={alice[0]}")
            await wait_js(
                page, "document.getElementById('alert').textContent.includes('too many of your tabs')", timeout=15
            )
        await stack.aclose()  # alice's sockets close: counted off
        for _ in range(50):
            if not mesh.hosts["web"]._subject_sessions:
                break
            await asyncio.sleep(0.1)
        async with http.ws_connect("/v1/live", params={"access_token": alice[1]}) as ws:
            await ws.send_str(json.dumps({"config": {}}))
            assert "started" in await _recv_json(ws), "closed sessions no longer count"


def test_rotation_with_next_then_promote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--next adds a secret the edges accept but nobody mints with; --promote then makes it mint,
    the old one second (still accepted): no token refused at any step of a rolling restart."""
    path = tmp_path / "secrets"
    assert cli_main(["token", "secret", str(path)]) == 0
    (first,) = tokens.read_secrets(str(path))
    old_token = tokens.mint(first, ttl_seconds=600)
    monkeypatch.setattr(tokens, "TOKEN_SECRETS_CHECK_SECONDS", 5.0)  # what the edges' interval says
    capsys.readouterr()
    assert cli_main(["token", "secret", str(path), "--next"]) == 0
    assert "once every edge has read it (within 5 s of a change" in capsys.readouterr().err
    assert tokens.read_secrets(str(path))[0] == first, "the old one still mints"
    accepted = tokens.read_secrets(str(path))  # an edge restarted now
    assert cli_main(["token", "secret", str(path), "--promote"]) == 0
    new_first = tokens.read_secrets(str(path))[0]
    assert new_first != first and tokens.read_secrets(str(path))[1] == first
    capsys.readouterr()
    assert cli_main(["token", "new", "--secret-file", str(path)]) == 0
    new_token = capsys.readouterr().out.strip()
    for token in (old_token, new_token):  # both accepted by the edge that read the file after --next
        tokens.check(token, accepted, max_ttl_seconds=3600)
    assert path.stat().st_mode & 0o777 == 0o600
    assert cli_main(["token", "secret", str(path), "--promote"]) == 1, "promoted once: a second does nothing"
    assert tokens.read_secrets(str(path))[0] == new_first
    assert cli_main(["token", "secret", str(tmp_path / "one"), "--promote"]) == 1  # nothing to promote


async def test_the_edge_reads_its_secrets_again_when_the_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotation needs no restart: a secret added with --next is accepted once the edge has read
    the file again (within TOKEN_SECRETS_CHECK_SECONDS, shortened here); a bad edit keeps the
    secrets loaded before."""
    monkeypatch.setattr(tokens, "TOKEN_SECRETS_CHECK_SECONDS", 0.1)
    path, secret = _secrets(tmp_path)
    env = {"TALKMESH_WEB__WEB__TOKEN_SECRET_FILE": str(path)}
    async with inprocess_mesh(tmp_path, web=True, env=env) as mesh, aiohttp.ClientSession(mesh.web_url) as http:

        async def status(token: str) -> int:
            async with http.get("/v1/voices", headers=_bearer(token)) as r:
                return r.status

        assert cli_main(["token", "secret", str(path), "--next"]) == 0
        added = tokens.read_secrets(str(path))[1]
        new_token = tokens.mint(added, ttl_seconds=600)
        for _ in range(30):
            if await status(new_token) == 200:
                break
            await asyncio.sleep(0.1)
        assert await status(new_token) == 200, "the added secret is accepted without a restart"
        assert await status(tokens.mint(secret, ttl_seconds=600)) == 200

        path.write_text("too short\n")  # a bad edit: what was loaded stays
        await asyncio.sleep(0.3)
        assert await status(new_token) == 200
        assert "not reloaded" in caplog.text and "too short" not in caplog.text
