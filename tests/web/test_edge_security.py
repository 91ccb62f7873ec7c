"""The web edge's origin rules (cross-site WebSocket hijacking, CSRF, CORS for embedding), the
avatar delete, the documented final status of refused sessions, and Speak's streamed answer,
against a real in-process mesh."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.mesh import inprocess_mesh
from tests.web.test_api import _recv_json, portrait

pytestmark = pytest.mark.timeout(120)

APP = "https://app.example.com"
EVIL = "https://evil.example"


def _upgrade(origin: str | None = None, **extra: str) -> dict[str, str]:
    """The headers of a browser's WebSocket handshake (as a plain GET, to read a refusal's body)."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    if origin is not None:
        headers["Origin"] = origin
    headers.update(extra)
    return headers


async def test_origins_websockets_csrf_and_cors(tmp_path: Path) -> None:
    env = {"TALKMESH_WEB__WEB__ALLOWED_ORIGINS": APP}
    async with inprocess_mesh(tmp_path, web=True, env=env) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        own = mesh.web_url.rstrip("/")  # the page's own origin: http://127.0.0.1:<port>

        # Cross-site WebSocket hijacking: refused before the upgrade, with the JSON error.
        for path in ("/v1/live", "/v1/live/watch?session_id=x"):
            for origin in (EVIL, "null", own.replace("127.0.0.1", "localhost")):
                async with http.get(path, headers=_upgrade(origin)) as r:
                    body = await r.json()
                    assert r.status == 403, (path, origin, r.status)
                    assert body["error"]["code"] == "PERMISSION_DENIED" and body["error"]["field"] == "origin"
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await http.ws_connect("/v1/live", origin=EVIL)
        assert exc.value.status == 403
        assert mesh.active_streams()["gateway"] == 0
        # The page's own origin, a configured one and a client that is no browser (no Origin) get in.
        allowed: list[str | None] = [own, APP, None]
        for allowed_origin in allowed:
            async with http.ws_connect("/v1/live", origin=allowed_origin) as ws:
                await ws.send_str(json.dumps({"config": {}}))
                assert "started" in await _recv_json(ws), allowed_origin

        # CSRF: text/plain is a "simple" request (no preflight): refused whatever its origin.
        async with http.post(
            "/v1/speak", data='{"text": "Hello."}', headers={"Content-Type": "text/plain", "Origin": EVIL}
        ) as r:
            assert r.status == 403 and (await r.json())["error"]["field"] == "origin"  # the origin is checked first
        async with http.post("/v1/speak", data='{"text": "Hello."}', headers={"Content-Type": "text/plain"}) as r:
            body = await r.json()
            assert r.status == 415 and body["error"]["field"] == "Content-Type", body
        async with http.post("/v1/speak", json={"text": "Hello."}, headers={"Origin": EVIL}) as r:
            assert r.status == 403 and (await r.json())["error"]["field"] == "origin"
            assert "Access-Control-Allow-Origin" not in r.headers
        async with http.post("/v1/speak", json={"text": "Hello."}, headers={"Sec-Fetch-Site": "cross-site"}) as r:
            assert r.status == 403, "no Origin but the browser says cross-site"
        # A multipart upload from another site: refused, nothing registered.
        async with http.get("/v1/avatars") as r:
            before = {a["id"] for a in (await r.json())["avatars"]}
        form = aiohttp.FormData()
        form.add_field("name", "csrf")
        form.add_field("file", portrait(), filename="me.png", content_type="image/png")
        async with http.post("/v1/avatars", data=form, headers={"Origin": EVIL}) as r:
            assert r.status == 403 and (await r.json())["error"]["code"] == "PERMISSION_DENIED"
        async with http.get("/v1/avatars") as r:
            assert {a["id"] for a in (await r.json())["avatars"]} == before
        async with http.delete("/v1/avatars/whatever", headers={"Origin": EVIL}) as r:
            assert r.status == 403

        # CORS: a configured origin's preflight is answered; another origin's gets no CORS headers.
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        async with http.options("/v1/speak", headers={"Origin": APP, **preflight}) as r:
            assert r.status == 204, await r.text()
            assert r.headers["Access-Control-Allow-Origin"] == APP and "Origin" in r.headers.getall("Vary")
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            assert "content-type" in r.headers["Access-Control-Allow-Headers"].lower()
        async with http.options("/v1/speak", headers={"Origin": EVIL, **preflight}) as r:
            assert r.status == 403 and not any(k.lower().startswith("access-control-") for k in r.headers)
        async with http.get("/v1/voices", headers={"Origin": APP}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == APP
        async with http.get("/v1/voices", headers={"Origin": EVIL}) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers, "readable by no other site"
        async with http.post("/v1/speak", json={"text": "Hello."}, headers={"Origin": APP}) as r:
            assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == APP
            exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
            assert {"x-talkmesh-first-fragment-ms", "x-talkmesh-stages", "x-talkmesh-frames"} <= exposed
            await r.read()
        async with http.post("/v1/speak", json={"text": "Hello."}, headers={"Origin": own}) as r:
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers, "same origin: no CORS needed"
            await r.read()


async def test_delete_avatar_and_speak_errors_name_the_requests_fields(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        form = aiohttp.FormData()
        form.add_field("name", "temporary")
        form.add_field("file", portrait(), filename="me.png", content_type="image/png")
        async with http.post("/v1/avatars", data=form) as r:
            created = (await r.json())["avatar"]
            assert r.status == 201
        again = aiohttp.FormData()  # the same file under a second name: one avatar, two names
        again.add_field("name", "also")
        again.add_field("file", portrait(), filename="me.png", content_type="image/png")
        async with http.post("/v1/avatars", data=again) as r:
            assert (await r.json())["avatar"]["id"] == created["id"]
        async with http.delete("/v1/avatars/also") as r:  # by a name: that name only
            assert r.status == 200 and await r.json() == {"avatar_id": created["id"], "name": "also", "deleted": True}
        async with http.get("/v1/avatars") as r:
            names = {a["id"]: a.get("names", []) for a in (await r.json())["avatars"]}
            assert "also" not in names[created["id"]] and "temporary" in names[created["id"]]
        async with http.delete(f"/v1/avatars/{created['id']}") as r:  # by its id: the whole avatar
            assert r.status == 200 and await r.json() == {"avatar_id": created["id"], "name": "", "deleted": True}
        async with http.get("/v1/avatars") as r:
            assert created["id"] not in {a["id"] for a in (await r.json())["avatars"]}
        async with http.delete(f"/v1/avatars/{created['id']}") as r:
            body = await r.json()
            assert r.status == 404 and body["error"]["code"] == "NOT_FOUND" and body["error"]["field"] == "avatar_id"
        async with http.delete("/v1/avatars/..%2Fetc") as r:
            assert r.status in (400, 404) and "error" in await r.json()

        # Speak's statuses name the fields of the request's JSON, not the pipeline's config.
        async with http.post("/v1/speak", json={"text": "Hello.", "voice": "espeak:xx-nope"}) as r:
            err = (await r.json())["error"]
            assert r.status == 404 and err["field"] == "voice" and "config." not in err["message"], err
        async with http.post("/v1/speak", json={"text": "Hello.", "avatar_id": "nope"}) as r:
            err = (await r.json())["error"]
            assert r.status == 404 and err["field"] == "avatar_id" and "config." not in err["message"], err
        async with http.post("/v1/speak", json={"text": "Hello.", "voice_settings": {"rate": 50}}) as r:
            err = (await r.json())["error"]
            assert r.status == 400 and err["field"] == "voice_settings.rate", err
            assert err["message"].startswith("tts: voice_settings.rate: "), err


async def test_refused_sessions_end_with_the_documented_status(tmp_path: Path) -> None:
    async with (
        inprocess_mesh(tmp_path, web=True, max_streams={"web": 1}) as mesh,
        aiohttp.ClientSession(mesh.web_url) as http,
    ):
        async with http.ws_connect("/v1/live") as first:
            await first.send_str(json.dumps({"config": {}}))
            assert "started" in await _recv_json(first)
            async with http.ws_connect("/v1/live") as second:
                status = await _recv_json(second)
                assert status["status"]["code"] == "RESOURCE_EXHAUSTED", status
                assert "server.max_concurrent_streams" in status["status"]["message"]
                msg = await second.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE and second.close_code == 1013

            # A message over web.max_ws_message_bytes: the status naming the limit, then 1009.
            await first.send_str(json.dumps({"text": {"turn_id": "t", "text": "x" * 300_000}}))
            async with asyncio.timeout(20):
                while True:
                    body = await _recv_json(first)
                    if "status" in body:
                        break
            assert body["status"]["code"] == "INVALID_ARGUMENT" and body["status"]["field"] == "message"
            assert "262144" in body["status"]["message"] and "web.max_ws_message_bytes" in body["status"]["message"]
            msg = await first.receive()
            while msg.type == aiohttp.WSMsgType.BINARY:
                msg = await first.receive()
            assert first.close_code == 1009, msg
        for _ in range(100):
            if mesh.active_streams()["gateway"] == 0:
                break
            await asyncio.sleep(0.05)
        assert mesh.active_streams()["gateway"] == 0

        # a config that is refused, and a browser that leaves a running session
        async with http.ws_connect("/v1/live") as bad:
            await bad.send_str(json.dumps({"config": {"idle_motion": "IDLE_MOTION_SOMETIMES"}}))
            assert (await _recv_json(bad))["status"]["code"] == "INVALID_ARGUMENT"
        async with http.ws_connect("/v1/live") as leaving:
            await leaving.send_str(json.dumps({"config": {}}))
            assert "started" in await _recv_json(leaving)
        async with http.ws_connect("/v1/live"):
            pass  # a browser that leaves before its config
        # every session is counted by its outcome (gRPC status names: the error-ratio alert reads them)
        for _ in range(100):
            async with http.get("/metrics") as r:
                counted = _live_outcomes(await r.text())
            if sum(counted.values()) >= 5:
                break
            await asyncio.sleep(0.05)
        assert counted == {"RESOURCE_EXHAUSTED": 1, "INVALID_ARGUMENT": 2, "CANCELLED": 2}, counted
        # the edge's overload refusal counted as the services count theirs (TalkmeshRejectingStreams)
        registry = mesh.telemetry["web"].metrics.registry
        assert registry.get_sample_value("talkmesh_rejections_total", {"service": "web", "reason": "overload"}) == 1


def _live_outcomes(metrics: str) -> dict[str, int]:
    """``talkmesh_streams_total`` of the edge's live sessions, by code (the codes counted yet: OK's
    series is there at 0 from start-up)."""
    out = {}
    for line in metrics.splitlines():
        if line.startswith("talkmesh_streams_total{") and 'method="GET /v1/live"' in line:
            if count := int(float(line.rsplit(" ", 1)[1])):
                out[line.split('code="')[1].split('"')[0]] = count
    return out


async def test_speak_streams_fragmented_mp4_from_the_mesh(tmp_path: Path) -> None:
    text = "This is a longer paragraph for the download endpoint to render in full. " * 4
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        loop = asyncio.get_running_loop()
        sent = loop.time()
        body: dict[str, Any] = {"text": text, "output": {"container": "CONTAINER_FMP4"}}
        async with http.post("/v1/speak", json=body) as r:
            assert r.status == 200, await r.text()
            assert "Content-Length" not in r.headers and r.headers.get("Transfer-Encoding") == "chunked"
            assert "Accept-Ranges" not in r.headers
            # the codecs a page's addSourceBuffer needs (the profile and level vary with the size)
            assert r.headers["Content-Type"].startswith('video/mp4; codecs="avc1.42C0'), r.headers["Content-Type"]
            assert "mp4a.40.2" in r.headers["Content-Type"]
            first_ms = float(r.headers["X-Talkmesh-First-Fragment-Ms"])
            head = await r.content.readexactly(8)
            first_bytes = loop.time() - sent
            data = head + await r.read()
        total = loop.time() - sent
        assert data[4:8] == b"ftyp" and b"moof" in data and b"mdat" in data
        assert 0 < first_ms < total * 1000
        assert first_bytes < total / 2, f"first bytes after {first_bytes:.2f} s of {total:.2f} s"
        # the default stays one whole, seekable MP4 with its length
        async with http.post("/v1/speak", json={"text": "Hello there."}) as r:
            whole = await r.read()
            assert r.status == 200 and r.headers["Content-Length"] == str(len(whole))
            assert "Accept-Ranges" not in r.headers and 0 < whole.find(b"moov") < whole.find(b"mdat")
