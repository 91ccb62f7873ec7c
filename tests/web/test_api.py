"""The web edge's HTTP and WebSocket API against a real in-process mesh (no browser)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.renderer.avatars import default_avatar_bytes
from tests.media import probe
from tests.mesh import inprocess_mesh

pytestmark = pytest.mark.timeout(120)


def portrait() -> bytes:
    """The default avatar mirrored: a new image (avatars are deduplicated by content)."""
    import cv2
    import numpy as np

    raw = default_avatar_bytes()
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    ok, png = cv2.imencode(".png", image[:, ::-1])
    assert ok
    return png.tobytes()


async def _recv_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = 20.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            msg = await ws.receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                return json.loads(msg.data)  # type: ignore[no-any-return]
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise AssertionError(f"socket closed: {msg}")


async def test_http_api_health_lists_speak_upload_errors_and_one_trace(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with (
        inprocess_mesh(tmp_path, tracer_provider=provider, web=True) as mesh,
        aiohttp.ClientSession(mesh.web_url) as http,
    ):
        async with http.get("/healthz") as r:
            assert r.status == 200
        async with http.get("/readyz") as r:
            assert r.status == 200, await r.text()
            assert await r.json() == {"status": "ready"}, "the gateway's address is for the log only"
        async with http.get("/") as r:
            page = await r.text()
            assert r.status == 200 and 'id="avatar"' in page and 'id="speak"' in page and 'id="interrupt"' in page
        async with http.get("/static/app.js") as r:
            assert r.status == 200

        async with http.get("/v1/voices") as r:
            voices = (await r.json())["voices"]
            assert r.status == 200 and any(v["id"].startswith("espeak:") for v in voices)

        # An upload the renderer refuses: the gRPC status becomes 400 with the field it names.
        form = aiohttp.FormData()
        form.add_field("name", "broken")
        form.add_field("file", b"this is not an image", filename="broken.png", content_type="image/png")
        async with http.post("/v1/avatars", data=form) as r:
            body = await r.json()
            assert r.status == 400, body
            assert body["error"]["code"] == "INVALID_ARGUMENT"
            assert body["error"]["field"] == "file" and "not a decodable image" in body["error"]["message"]
        form = aiohttp.FormData()
        form.add_field("name", "no file")
        async with http.post("/v1/avatars", data=form) as r:
            assert r.status == 400 and (await r.json())["error"]["field"] == "file"

        form = aiohttp.FormData()
        form.add_field("name", "me")
        form.add_field("file", portrait(), filename="me.png", content_type="image/png")
        async with http.post("/v1/avatars", data=form) as r:
            answer = await r.json()
            created = answer["avatar"]
            assert r.status == 201 and created["name"] == "me" and "warnings" not in answer
        async with http.get("/v1/avatars") as r:
            listed = {a["id"]: a for a in (await r.json())["avatars"]}
            assert created["id"] in listed and "default" not in created
            # the avatar a request naming none gets is marked (a picker shows it chosen)
            assert [a["names"] for a in listed.values() if a.get("default")] == [["default"]], listed
        form = aiohttp.FormData()  # the file first (a FormData built that way): its name is not read
        form.add_field("file", portrait(), filename="me.png", content_type="image/png")
        form.add_field("name", "late")
        async with http.post("/v1/avatars", data=form) as r:
            answer = await r.json()
            assert r.status == 201 and "late" not in answer["avatar"]["names"]
            assert answer["warnings"] == ["name: a form field after 'file' is not read (send the fields first)"]

        async with http.post("/v1/speak", json={"text": "Hello there.", "avatar_id": "nope"}) as r:
            body = await r.json()
            assert r.status == 404 and body["error"]["field"].endswith("avatar_id"), body
        async with http.post("/v1/speak", json={"text": "Hello there.", "voice_settings": {"rate": "fast"}}) as r:
            assert r.status == 400 and (await r.json())["error"]["field"] == "voice_settings.rate"
        async with http.post("/v1/speak", json={"text": "Hello there.", "colour": "red"}) as r:
            assert r.status == 400 and (await r.json())["error"]["field"] == "body"
        async with http.post("/v1/speak", json={"text": 5}) as r:
            assert r.status == 400 and (await r.json())["error"]["field"] == "text"
        async with http.post("/v1/speak", json={"text": "Hello there.", "output": {"idle_motion": False}}) as r:
            assert r.status == 400 and (await r.json())["error"]["field"] == "output.idle_motion"
        async with http.post("/v1/speak", json={"text": "Hello there.", "avatar_id": created["id"]}) as r:
            assert r.status == 200 and r.headers["Content-Type"] == "video/mp4"
            assert "gateway.tts_total=" in r.headers["X-Talkmesh-Stages"], r.headers
            assert r.headers["traceparent"]
            trace_id = r.headers["traceparent"].split("-")[1]
            (tmp_path / "speak.mp4").write_bytes(await r.read())
        info = probe(tmp_path / "speak.mp4")
        assert info.video_codec == "h264" and info.audio_codec == "aac" and info.frames > 10
        assert (tmp_path / "speak.mp4").read_bytes()[4:8] == b"ftyp"
        moov, mdat = (
            (tmp_path / "speak.mp4").read_bytes().find(b"moov"),
            (tmp_path / "speak.mp4").read_bytes().find(b"mdat"),
        )
        assert 0 < moov < mdat, "seekable: the index (moov) comes before the media (+faststart)"

        async with http.post("/v1/speak", data=b"x" * 100_000, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 413 and (await r.json())["error"]["field"] == "body"
        async with http.get("/v1/nothing") as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "NOT_FOUND"

        async with http.get("/metrics") as r:
            text = await r.text()
            # counted by gRPC status like every service's calls (the error-ratio alert reads the
            # codes: an HTTP "200" there was a server fault)
            counted = {
                (line.split('method="')[1].split('"')[0], line.split('code="')[1].split('"')[0])
                for line in text.splitlines()
                if line.startswith("talkmesh_streams_total{")
            }
            assert ("POST /v1/speak", "OK") in counted
            assert {("POST /v1/speak", "NOT_FOUND"), ("POST /v1/speak", "INVALID_ARGUMENT")} <= counted
            assert ("GET other", "NOT_FOUND") in counted and ("GET /v1/voices", "OK") in counted, counted
            assert all(not code.isdigit() for _, code in counted), counted

    # A browser request starts the trace; the gateway's server span is its child.
    spans = exporter.get_finished_spans()
    (web_span,) = [
        s for s in spans if s.name == "web POST /v1/speak" and s.attributes.get("http.response.status_code") == 200
    ]
    assert f"{web_span.context.trace_id:032x}" == trace_id
    gateway = [s for s in spans if s.attributes.get("talkmesh.service") == "gateway" and s.parent is not None]
    assert any(s.parent.span_id == web_span.context.span_id for s in gateway)


async def test_multipart_uploads_with_bad_fields_get_a_400_not_a_dropped_connection(tmp_path: Path) -> None:
    """curl -F name=x (no file part), -F face_index=abc -F file=@...: multipart forms whose
    mistakes the edge finds itself get WEB.md's JSON error, not an empty reply."""
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        cases: list[tuple[list[tuple[str, Any, dict[str, str]]], str, str]] = [
            ([("name", "x", {})], "file", "file: the form has no 'file' part"),
            (
                [
                    ("face_index", "abc", {}),
                    ("file", portrait(), {"filename": "crop.png", "content_type": "image/png"}),
                ],
                "face_index",
                "face_index: must be an integer",
            ),
            ([("face_point", "1,2,3", {})], "face_point", "face_point: must be x,y (pixels of the picture)"),
            ([("face_point", "nan,1", {})], "face_point", "face_point: x and y must be within 0..65535"),
            ([("face_point", "-5,10", {})], "face_point", "face_point: x and y must be within 0..65535"),
            (
                [("image", b"\xff\xd8\xff" + bytes(range(256)) * 64, {"filename": "a.jpg"})],
                "image",
                "image: not a field of this form (file, name, face_index, face_point, framing, backends)",
            ),
            ([("name", b"\xff\xfe", {"filename": "n.txt"})], "name", "name: not UTF-8 text"),
        ]
        for fields, field, message in cases:
            form = aiohttp.FormData(default_to_multipart=True)
            for name, value, extra in fields:
                form.add_field(name, value, **extra)
            async with http.post("/v1/avatars", data=form) as r:
                body = await r.json()
                assert r.status == 400, body
                assert body == {"error": {"code": "INVALID_ARGUMENT", "message": message, "field": field}}


async def test_readyz_reflects_the_gateway(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        async with http.get("/readyz") as r:
            assert r.status == 200
        await mesh.hosts["gateway"].stop(0.5)
        for _ in range(100):
            async with http.get("/readyz") as r:
                if r.status == 503:
                    break
            await asyncio.sleep(0.05)
        assert r.status == 503
        async with http.get("/healthz") as r:
            assert r.status == 200, "liveness does not depend on the gateway"
        async with http.get("/v1/voices") as r:
            body = await r.json()
            assert r.status == 503 and body["error"]["code"] == "UNAVAILABLE"


async def test_live_websocket_speaks_interrupts_and_reports_errors(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        # Bad first message: a status naming the field, then close 1008.
        async with http.ws_connect("/v1/live") as ws:
            await ws.send_str(json.dumps({"text": {"turn_id": "t1", "text": "hi"}}))
            status = await _recv_json(ws)
            assert status["status"]["code"] == "INVALID_ARGUMENT" and status["status"]["field"] == "config"
            await ws.receive()
            assert ws.close_code == 1008
        async with http.ws_connect("/v1/live") as ws:
            await ws.send_str(json.dumps({"config": {"size": "999p"}}))
            status = await _recv_json(ws)
            assert status["status"]["code"] == "INVALID_ARGUMENT" and status["status"]["field"] == "config.size", status

        async with http.ws_connect("/v1/live") as ws:
            await ws.send_str(json.dumps({"config": {"request_id": "ws-test"}}))
            started = (await _recv_json(ws))["started"]
            assert started["request_id"] == "ws-test" and 'codecs="avc1' in started["mime_type"]
            head = await _recv_json(ws)
            assert head["media"]["init_segment"] is True
            init = await ws.receive()
            assert init.type == aiohttp.WSMsgType.BINARY and init.data[4:8] == b"ftyp"
            # bad input inside the session: an error message, the session goes on
            await ws.send_str("not json")
            await ws.send_bytes(b"\x00\x00")
            await ws.send_str(json.dumps({"text": {"turn_id": "t1", "text": "Hello there, this is a long test."}}))
            await ws.send_str(json.dumps({"end_of_turn": {"turn_id": "t1"}}))
            errors, events, media, binary = [], [], [], 0
            async with asyncio.timeout(30):
                while not any("speaking_started" in e for e in events):
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        binary += 1
                        continue
                    body = json.loads(msg.data)
                    errors += [body["error"]] if "error" in body else []
                    events += [body["event"]] if "event" in body else []
                    media += [body["media"]] if "media" in body else []
            assert [e["field"] for e in errors] == ["message", "audio"]
            assert binary >= len(media) - 1 and all("data" not in m for m in media)
            await ws.send_str(json.dumps({"interrupt": {}}))
            async with asyncio.timeout(10):
                while True:
                    body = await _recv_json(ws)
                    if "interrupt_acknowledged" in body.get("event", {}):
                        break
            assert body["event"]["interrupt_acknowledged"]["stopped_turn_ids"] == ["t1"]
            stopped = (
                next(e for e in events if "speaking_stopped" in e)
                if any("speaking_stopped" in e for e in events)
                else None
            )
            assert stopped is None
            # half-close: the session ends with status OK
            await ws.send_str(json.dumps({"half_close": {}}))
            async with asyncio.timeout(15):
                while True:
                    body = await _recv_json(ws)
                    if "status" in body:
                        break
            assert body["status"]["code"] == "OK"
        for _ in range(100):
            if not mesh.hosts["web"].sessions and mesh.active_streams()["gateway"] == 0:
                break
            await asyncio.sleep(0.05)
        assert not mesh.hosts["web"].sessions
        assert mesh.active_streams()["gateway"] == 0, "the live session ended with the socket"


async def test_live_websocket_audio_turn_whose_first_frame_is_a_file_ends_failed(tmp_path: Path) -> None:
    """The socket opens an audio turn with a JSON `audio` message, then sends binary frames: an
    M4A file's bytes as the first frame are refused (`audio.pcm`) and the turn ends FAILED."""
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        async with http.ws_connect("/v1/live") as ws:
            await ws.send_str(json.dumps({"config": {}}))
            await ws.send_str(json.dumps({"audio": {"turn_id": "a1", "sample_rate": 16000}}))
            await ws.send_bytes(b"\x00\x00\x00\x1cftypM4A " + bytes(3188))
            await ws.send_str(json.dumps({"end_of_turn": {"turn_id": "a1"}}))  # discarded
            errors, stopped = [], None
            async with asyncio.timeout(30):
                while stopped is None:
                    msg = await ws.receive()
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        continue
                    body = json.loads(msg.data)
                    errors += [body["error"]] if "error" in body else []
                    stopped = body.get("event", {}).get("speaking_stopped")
            refusals = [(e["field"], e["code"], e["turn_id"]) for e in errors]
            assert refusals == [("audio.pcm", "INVALID_ARGUMENT", "a1")], errors
            assert "an MP4 (M4A) file, not raw PCM" in errors[0]["message"]
            assert stopped["turn_id"] == "a1" and stopped["reason"] == "STOP_REASON_FAILED", stopped


async def test_live_websocket_relays_caption_cues_as_json(tmp_path: Path) -> None:
    """A text turn's caption events reach the browser as JSON like the others, each right after
    the JSON header (and bytes) of the fragment of its frame."""
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        async with http.ws_connect("/v1/live") as ws:
            await ws.send_str(json.dumps({"config": {"request_id": "ws-captions"}}))
            assert "started" in await _recv_json(ws)
            text = "Hello there, my friend. Bye."
            await ws.send_str(json.dumps({"text": {"turn_id": "t1", "text": text, "final": True}}))
            bodies: list[dict[str, Any]] = []
            async with asyncio.timeout(40):
                while not any("speaking_stopped" in b.get("event", {}) for b in bodies):
                    bodies.append(await _recv_json(ws))
            await ws.send_str(json.dumps({"half_close": {}}))
    cues = [(i, b["event"]) for i, b in enumerate(bodies) if "caption" in b.get("event", {})]
    assert [e["caption"] for _, e in cues] == [
        {"turn_id": "t1", "text": "Hello there,"},  # (segment_index 0: left out, as every default)
        {"turn_id": "t1", "segment_index": 1, "text": "my friend."},
        {"turn_id": "t1", "segment_index": 2, "text": "Bye."},
    ]
    for i, event in cues:
        assert isinstance(event["frame"], str) and event["unix_seconds"] > 0
        media = next(b["media"] for b in reversed(bodies[:i]) if "media" in b)
        assert media["first_frame"] == event["frame"] and media["turn_id"] == "t1"


async def test_a_browser_that_vanishes_ends_its_session(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        ws = await http.ws_connect("/v1/live")
        await ws.send_str(json.dumps({"config": {}}))
        assert "started" in await _recv_json(ws)
        assert mesh.active_streams()["gateway"] == 1
        await ws.close()
        for _ in range(100):
            if mesh.active_streams()["gateway"] == 0:
                break
            await asyncio.sleep(0.02)
        assert mesh.active_streams()["gateway"] == 0


async def _watched_session(
    http: aiohttp.ClientSession,
) -> tuple[aiohttp.ClientWebSocketResponse, aiohttp.ClientWebSocketResponse]:
    """A live session opened through the edge, and a watch of it through the edge (both started)."""
    ws = await http.ws_connect("/v1/live")
    await ws.send_str(json.dumps({"config": {}}))
    session_id = (await _recv_json(ws))["started"]["session_id"]
    watcher = await http.ws_connect(f"/v1/live/watch?session_id={session_id}")
    assert "started" in await _recv_json(watcher)
    return ws, watcher


async def _endings(sock: aiohttp.ClientWebSocketResponse, timeout: float = 10) -> tuple[list[str], dict[str, Any]]:
    """The session_ending reasons a socket is told up to its final status, and that status's message."""
    told: list[str] = []
    async with asyncio.timeout(timeout):
        while "status" not in (body := await _recv_json(sock)):
            if "session_ending" in body.get("event", {}):
                told.append(body["event"]["session_ending"]["reason"])
    return told, body


async def test_draining_the_edge_ends_live_sessions_cleanly(tmp_path: Path) -> None:
    """SIGTERM on the web edge: /readyz turns 503, each live session is half-closed (it ends with
    status OK once its started turns have played) well within the grace period, its session_ending
    saying END_REASON_DRAINING; a browser's own half_close still ends as END_REASON_CLIENT_CLOSED."""
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        ws, watcher = await _watched_session(http)
        loop = asyncio.get_running_loop()
        started = loop.time()
        stop = asyncio.create_task(mesh.hosts["web"].stop(10.0))
        for endings, body in await asyncio.gather(_endings(ws), _endings(watcher)):
            assert body["status"]["code"] == "OK"
            # the browser did not half-close: the edge's drain is told as a drain (a page reconnects
            # at once, to another replica), not as the client's own END_REASON_CLIENT_CLOSED; its
            # watcher is told the same
            assert endings and set(endings) == {"END_REASON_DRAINING"}, endings
        await watcher.close()
        await stop
        assert loop.time() - started < 5.0
        assert ws.close_code == 1000 or (await ws.receive()).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()


async def test_a_session_the_page_half_closed_before_a_drain_is_told_client_closed_to_its_watcher_too(
    tmp_path: Path,
) -> None:
    """The page half-closes while a turn plays, then the edge drains: the page is told its own
    END_REASON_CLIENT_CLOSED; its watcher was told END_REASON_DRAINING (and would reconnect at
    once to a session that is ending)."""
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        ws, watcher = await _watched_session(http)
        text = "This sentence keeps the avatar speaking for a few seconds while the edge drains."
        await ws.send_str(json.dumps({"text": {"turn_id": "t1", "text": text, "final": True}}))
        async with asyncio.timeout(10):
            while "speaking_started" not in (await _recv_json(ws)).get("event", {}):
                pass
        await ws.send_str(json.dumps({"half_close": {}}))
        await asyncio.sleep(0.2)  # (read by the edge before its drain)
        stop = asyncio.create_task(mesh.hosts["web"].stop(10.0))
        (page, _), (watched, _) = await asyncio.gather(_endings(ws, 15), _endings(watcher, 15))
        assert set(page) == {"END_REASON_CLIENT_CLOSED"} and set(watched) == {"END_REASON_CLIENT_CLOSED"}, (
            page,
            watched,
        )
        await watcher.close()
        await ws.close()
        await stop


async def test_a_browser_that_half_closes_is_told_client_closed(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        ws = await http.ws_connect("/v1/live")
        await ws.send_str(json.dumps({"config": {}}))
        assert "started" in await _recv_json(ws)
        await ws.send_str(json.dumps({"half_close": {}}))
        endings, body = await _endings(ws)
        assert body["status"]["code"] == "OK" and set(endings) == {"END_REASON_CLIENT_CLOSED"}, endings
        # ... also when the edge drains after the browser's half_close (nothing to rewrite)
        await ws.close()


async def test_draining_the_edge_ends_a_watch_of_a_session_it_did_not_open_at_once(tmp_path: Path) -> None:
    """A backend opens the session over gRPC (the Python client), a browser watches it through the
    edge. The edge's drain cannot end that session (it is not the edge's): the watcher gets the
    documented final status at once (UNAVAILABLE, close 1013: watch again, through another replica)
    instead of holding the edge's shutdown for its whole grace and then a bare close 1001."""
    from talkmesh.client import TalkmeshClient

    async with (
        inprocess_mesh(tmp_path, web=True) as mesh,
        TalkmeshClient(mesh.gateway) as client,
        client.live() as live,
        aiohttp.ClientSession(mesh.web_url) as http,
    ):
        reader = asyncio.create_task(_read_all(live))
        ws = await http.ws_connect(f"/v1/live/watch?session_id={live.session_id}")
        assert "started" in await _recv_json(ws)
        loop = asyncio.get_running_loop()
        began = loop.time()
        stop = asyncio.create_task(mesh.hosts["web"].stop(10.0))
        async with asyncio.timeout(15):
            while "status" not in (body := await _recv_json(ws)):
                pass
            closing = await ws.receive()
            await stop
        assert loop.time() - began < 5.0, "the watch held the edge's drain"
        assert body["status"]["code"] == "UNAVAILABLE" and "watch" in body["status"]["message"], body
        assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1013, closing
        assert not reader.done(), "the backend's session goes on"
        reader.cancel()
        # a planned drain, not a server fault: not counted as UNAVAILABLE (the error-ratio alert)
        registry = mesh.telemetry["web"].metrics.registry
        labels = {"service": "web", "method": "GET /v1/live/watch"}
        assert registry.get_sample_value("talkmesh_streams_total", {**labels, "code": "CANCELLED"}) == 1
        assert registry.get_sample_value("talkmesh_streams_total", {**labels, "code": "UNAVAILABLE"}) is None


async def _read_all(live: Any) -> None:
    async for _ in live:
        pass


async def test_timing_stamps_when_asked_and_only_then(tmp_path: Path) -> None:
    """``/v1/live?timing=1`` (a debug and bench aid): every JSON message carries when the edge got
    it from the gateway, on the wall clock the encoder's ``unix_seconds`` use; without it, nothing."""
    import time

    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        for timing in (True, False):
            async with http.ws_connect("/v1/live?timing=1" if timing else "/v1/live") as ws:
                await ws.send_str(json.dumps({"config": {"request_id": "timing"}}))
                await ws.send_str(json.dumps({"text": {"turn_id": "t1", "text": "Hello there.", "final": True}}))
                bodies: list[dict[str, Any]] = []
                async with asyncio.timeout(30):
                    while not any("speaking_started" in b.get("event", {}) for b in bodies):
                        bodies.append(await _recv_json(ws))
                        bodies[-1]["_got"] = time.time()
                if not timing:
                    assert not any("edge_unix_seconds" in b for b in bodies)
                    continue
                assert all("edge_unix_seconds" in b for b in bodies), bodies[:3]
                for b in bodies:
                    assert b["edge_unix_seconds"] <= b["_got"] + 0.001  # stamped before it was sent
                event = bodies[-1]["event"]
                # the encoder stamped the event before the edge got it: the relay's share of speak -> paint
                assert event["unix_seconds"] <= bodies[-1]["edge_unix_seconds"] + 0.001
                assert bodies[-1]["edge_unix_seconds"] - event["unix_seconds"] < 5.0
                heads = [b for b in bodies if "media" in b]
                assert heads and all(h["edge_unix_seconds"] > 0 for h in heads)


async def test_speak_and_live_take_an_avatar_name(tmp_path: Path) -> None:
    """`POST /v1/speak` and the live WebSocket take an avatar's name (in any case) as its id: the
    server resolves it (no listing on the page or the edge)."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(portrait(), np.uint8), cv2.IMREAD_COLOR)
    wide = cv2.copyMakeBorder(image, 0, 0, 0, 128, cv2.BORDER_CONSTANT, value=(90, 90, 90))  # 640 x 512
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        form = aiohttp.FormData()
        form.add_field("name", "Presenter")
        form.add_field("file", cv2.imencode(".png", wide)[1].tobytes(), filename="p.png", content_type="image/png")
        async with http.post("/v1/avatars", data=form) as r:
            created = (await r.json())["avatar"]
            assert r.status == 201
        body = {"text": "Hello there.", "avatar_id": "presenter", "output": {"size": "native"}}
        async with http.post("/v1/speak", json=body) as r:
            assert r.status == 200, await r.text()
            (tmp_path / "named.mp4").write_bytes(await r.read())
        info = probe(tmp_path / "named.mp4")
        assert (info.width, info.height) == (created["width"], created["height"]) == (640, 512)

        async with http.post("/v1/speak", json={"text": "Hello there.", "avatar_id": "nobody"}) as r:
            error = (await r.json())["error"]
            assert r.status == 404 and error["code"] == "NOT_FOUND" and error["field"] == "avatar_id", error
            assert error["message"] == "avatar_id: avatar 'nobody' not found"

        async with http.ws_connect("/v1/live") as ws:
            await ws.send_str(json.dumps({"config": {"avatar_id": "PRESENTER", "size": "native"}}))
            started = (await _recv_json(ws))["started"]
            assert started["avatar_id"] == created["id"] and (started["width"], started["height"]) == (640, 512)
        async with http.ws_connect("/v1/live") as ws:
            await ws.send_str(json.dumps({"config": {"avatar_id": "nobody"}}))
            status = (await _recv_json(ws))["status"]
            assert status["code"] == "NOT_FOUND" and status["field"] == "config.avatar_id", status


async def test_speak_takes_the_markdown_text_format_as_json(tmp_path: Path) -> None:
    """A web backend relaying an LLM's reply says so in JSON; the video is as long as its words."""
    reply = "**Sure!** Pick the `blue` one, see [the map](https://example.com/map) 🎉"
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        lengths = {}
        for name, body in {
            "markdown": {"text": reply, "text_format": "TEXT_FORMAT_MARKDOWN"},
            "words": {"text": "Sure! Pick the blue one, see the map"},
        }.items():
            async with http.post("/v1/speak", json=body) as r:
                assert r.status == 200, await r.text()
                (tmp_path / f"{name}.mp4").write_bytes(await r.read())
            lengths[name] = probe(tmp_path / f"{name}.mp4").audio_seconds
        async with http.post("/v1/speak", json={"text": "Hi.", "text_format": "TEXT_FORMAT_HTML"}) as r:
            error = (await r.json())["error"]
    assert abs(lengths["markdown"] - lengths["words"]) < 0.1, lengths
    assert r.status == 400 and error["field"] == "text_format", error


async def test_speak_and_live_take_idle_motion_and_name_a_bad_value(tmp_path: Path) -> None:
    """`"idle_motion": "IDLE_MOTION_OFF"` (in `output` of `POST /v1/speak`, in a live `config`) makes
    the avatar still: only its mouth moves (near-lossless H.264 here, so the codec's own changes
    stay under the threshold). An unknown name, or a number that is no IdleMotion, is a 400 / a
    final status naming the field."""
    import numpy as np

    from tests.live_helpers import decode

    def moved(path: Path) -> float:
        """The share of the picture that changes (by more than the codec's few levels) from frame 0."""
        frames = [f.astype(np.int16) for f in decode(path).frames]
        changed = np.zeros(frames[0].shape[:2], bool)
        for f in frames[1:]:
            changed |= np.abs(f - frames[0]).max(axis=2) > 12
        return float(changed.mean())

    env = {"TALKMESH_ENCODER__VIDEO__X264__CRF": "10"}
    async with inprocess_mesh(tmp_path, env=env, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        shares = {}
        for value in ("IDLE_MOTION_OFF", "IDLE_MOTION_UNSPECIFIED"):
            body = {"text": "Hello there, how are you?", "output": {"idle_motion": value}}
            async with http.post("/v1/speak", json=body) as r:
                assert r.status == 200, await r.text()
                (tmp_path / f"{value}.mp4").write_bytes(await r.read())
            shares[value] = moved(tmp_path / f"{value}.mp4")
        errors = []
        for bad in ("IDLE_MOTION_SOMETIMES", 9):
            async with http.post("/v1/speak", json={"text": "Hi.", "output": {"idle_motion": bad}}) as r:
                errors.append((r.status, (await r.json())["error"]))

        async with http.ws_connect("/v1/live") as ws:
            await ws.send_str(json.dumps({"config": {"idle_motion": "IDLE_MOTION_OFF"}}))
            assert "started" in await _recv_json(ws)
        statuses = []
        for bad in ("IDLE_MOTION_SOMETIMES", 9):
            async with http.ws_connect("/v1/live") as ws:
                await ws.send_str(json.dumps({"config": {"idle_motion": bad}}))
                body = await _recv_json(ws)
                statuses.append(body.get("status") or body.get("error"))
    assert shares["IDLE_MOTION_OFF"] < 0.03 < 0.06 < shares["IDLE_MOTION_UNSPECIFIED"], shares
    for status, error in errors:
        assert status == 400 and error["code"] == "INVALID_ARGUMENT", error
        assert error["field"] == "output.idle_motion", error
    for status in statuses:
        assert status["code"] == "INVALID_ARGUMENT" and status["field"] == "config.idle_motion", status


async def test_an_upload_picks_the_face_at_a_point_of_the_picture(tmp_path: Path) -> None:
    """A group photo from a phone, larger than it is stored: face_point in the picture's pixels."""
    from tests.renderer.test_face_point import SCALE, _two_faces

    second = (SCALE * (512 + 0.75 * 226), SCALE * (64 + 0.75 * 122))
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("face_point", f"{second[0]},{second[1]}")
        form.add_field("framing", "as_is")  # (the whole picture: its geometry is checked below)
        form.add_field("file", _two_faces(), filename="group.jpg", content_type="image/jpeg")
        async with http.post("/v1/avatars", data=form) as r:
            body = await r.json()
            assert r.status == 201, body
    avatar = body["avatar"]
    x1, _, x2, _ = avatar["face"]["box"]
    assert (x1 + x2) / 2 > avatar["width"] * 512 / 896, f"the second face (right), not the largest: {avatar}"
    ux1, uy1, ux2, uy2 = avatar["face"]["upload_box"]  # (the face's box in the picture's pixels, as face_point)
    assert ux1 < second[0] < ux2 and uy1 < second[1] < uy2, avatar


def small_face_photo() -> bytes:
    """A room of 1280x960 with the portrait, 160 px, in a corner: its face is under 64 px in a
    default-size video (talkmesh.common.faces)."""
    import cv2
    import numpy as np

    from talkmesh.bench.face_cases import portrait as face

    canvas = np.full((960, 1280, 3), 120, np.uint8)
    canvas[700:860, 1000:1160] = cv2.resize(face(), (160, 160), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()  # type: ignore[no-any-return]


async def test_an_upload_of_a_small_face_warns_as_the_command_line_does(tmp_path: Path) -> None:
    """The page's upload of a photo with a small face said nothing, while `talkmesh avatar add`
    warns (a new user's trial): the answer's `warnings` has the CLI's hint, the page shows it. Now
    the renderer frames such a photo itself (framing auto, the default): the answer's `notes` say
    so, and the hint comes only with framing as_is."""
    from talkmesh.common.faces import framing_note, small_face_hint
    from talkmesh.v1 import types_pb2 as api

    def info_of(avatar: dict[str, Any]) -> api.AvatarInfo:
        info = api.AvatarInfo(width=avatar["width"], height=avatar["height"])
        info.face.box.extend(avatar["face"]["box"])
        info.face.framed_box.extend(avatar["face"].get("framed_box", []))
        return info

    async def upload(http: aiohttp.ClientSession, data: bytes, filename: str, **fields: str) -> tuple[int, Any]:
        form = aiohttp.FormData(default_to_multipart=True)
        for k, v in fields.items():
            form.add_field(k, v)
        form.add_field("file", data, filename=filename, content_type="image/jpeg")
        async with http.post("/v1/avatars", data=form) as r:
            return r.status, await r.json()

    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        status, whole = await upload(http, small_face_photo(), "room.jpg", framing="as_is")
        assert status == 201, whole
        status, framed = await upload(http, small_face_photo(), "room.jpg")
        assert status == 201, framed
        status, close = await upload(http, portrait(), "close.png")
        assert status == 201, close
        status, bad = await upload(http, portrait(), "close.png", framing="crop")
        assert status == 400 and bad["error"]["field"] == "framing", bad
        assert bad["error"]["message"] == "framing: must be one of auto, as_is, head_and_shoulders", bad
    (warning,) = whole["warnings"]
    assert warning == small_face_hint(info_of(whole["avatar"]), "upload that", warning.split("upload that, ")[1])
    assert warning.startswith("the face is small in the picture")
    assert "again with “Head and shoulders when the face is small”" in warning  # (the page's picker)
    assert "notes" not in whole and "framed_box" not in whole["avatar"]["face"]
    assert "warnings" not in framed and framed["notes"] == [framing_note(info_of(framed["avatar"]))], framed
    assert framed["avatar"]["id"] != whole["avatar"]["id"] and len(framed["avatar"]["face"]["framed_box"]) == 4
    assert "warnings" not in close and "notes" not in close, close


async def test_an_upload_without_a_face_says_what_picture_works(tmp_path: Path) -> None:
    """It said only "no face found (0 of 1 frame(s) have a detectable face)" (a new user's trial)."""
    import cv2
    import numpy as np

    from talkmesh.common.faces import NO_FACE_ADVICE

    ramp = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))
    faceless = cv2.imencode(".png", cv2.merge([ramp, ramp.T, ramp]))[1].tobytes()
    async with inprocess_mesh(tmp_path, web=True) as mesh, aiohttp.ClientSession(mesh.web_url) as http:
        form = aiohttp.FormData(default_to_multipart=True)
        form.add_field("file", faceless, filename="no_face.png", content_type="image/png")
        async with http.post("/v1/avatars", data=form) as r:
            body = await r.json()
            assert r.status == 400, body
    assert body["error"]["field"] == "file", body
    assert body["error"]["message"].endswith(
        f"no face found (0 of 1 frame(s) have a detectable face): {NO_FACE_ADVICE}"
    ), body
    assert "at least 1/8 of the picture's longer side wide (64 px" in NO_FACE_ADVICE
