"""The page's session states in a real Chromium against a scripted stand-in for the web edge (the
packaged static page plus a ``/v1/live`` WebSocket that starts, refuses or ends sessions as a test
says; no mesh, so each test takes a few seconds): no session -> controls disabled and a turn never
shown as sent; a refused tab backs off (growing waits, the reason in the header, retry_after
honoured); errors in the role=alert region; Escape interrupts; a drain reconnects at once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from services.web.server import STATIC
from talkmesh.bench.web import wait_js
from tests.web.browser import browser_page

pytestmark = pytest.mark.timeout(40)

MIME = 'video/mp4; codecs="avc1.42C01E, mp4a.40.2"'


def started(n: int) -> dict[str, Any]:
    return {
        "seq": "0",
        "started": {
            "session_id": f"fake-session-{n:08d}",
            "width": 512,
            "height": 512,
            "fps_numerator": 25,
            "fps_denominator": 1,
            "sample_rate": 24000,
            "mime_type": MIME,
            "frame0_unix_seconds": time.time(),
            "video_encoder": "libx264",
        },
    }


@dataclass
class Conn:
    at: float  # time.monotonic() of the upgrade
    received: list[dict[str, Any]] = field(default_factory=list)


Script = Callable[[web.WebSocketResponse, Conn, int], Awaitable[None]]


@dataclass
class FakeEdge:
    """The page's HTTP routes and a /v1/live whose every connection runs ``script``."""

    script: Script
    conns: list[Conn] = field(default_factory=list)
    url: str = ""

    async def live(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("talkmesh",))  # (as the edge: a page with a token offers it)
        await ws.prepare(request)
        conn = Conn(time.monotonic())
        self.conns.append(conn)
        await self.script(ws, conn, len(self.conns))
        return ws

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")


async def recv_json(ws: web.WebSocketResponse, conn: Conn) -> dict[str, Any] | None:
    msg = await ws.receive()
    if msg.type != WSMsgType.TEXT:
        return None
    body: dict[str, Any] = json.loads(msg.data)
    conn.received.append(body)
    return body


async def serve(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
    """A session that starts and then only listens (no media: the states are what is tested)."""
    await recv_json(ws, conn)  # config
    await ws.send_json(started(n))
    while await recv_json(ws, conn) is not None:
        pass


async def refuse_old(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
    """Today's edge at its session limit: an `error` and close 1013, before any config."""
    why = "session: too many live sessions on this web edge; try again later"
    await ws.send_json({"error": {"code": "RESOURCE_EXHAUSTED", "message": why}})
    await ws.close(code=1013, message=b"try again later")


@contextlib.asynccontextmanager
async def fake_edge(
    script: Script,
    voices: list[dict[str, str]] | None = None,
    routes: list[web.RouteDef] | None = None,
) -> AsyncIterator[FakeEdge]:
    """``voices``: what GET /v1/voices lists (none by default); ``routes``: more of the API."""
    edge = FakeEdge(script)
    app = web.Application()

    async def listed_voices(request: web.Request) -> web.Response:
        return web.json_response({"voices": voices or []})

    app.router.add_get("/", edge.index)
    app.router.add_get("/v1/live", edge.live)
    app.router.add_get("/v1/avatars", _avatars)
    app.router.add_get("/v1/voices", listed_voices)
    app.add_routes(routes or [])
    app.router.add_static("/static", STATIC)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    edge.url = f"http://127.0.0.1:{port}/"
    try:
        yield edge
    finally:
        await runner.cleanup()


async def _avatars(request: web.Request) -> web.Response:
    return web.json_response({"avatars": []})



async def test_without_a_session_the_controls_are_disabled_and_a_turn_is_not_shown_as_sent() -> None:
    first_done = asyncio.Event()

    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        if n == 1:
            await recv_json(ws, conn)
            await ws.send_json(started(n))
            await first_done.wait()  # the test ends the session: the gateway went away
            why = "connections to all backends failing; last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect"
            await ws.send_json({"status": {"code": "UNAVAILABLE", "message": why}})
            await ws.close(code=1013)
        else:
            await refuse_old(ws, conn, n)

    async with fake_edge(script) as edge, browser_page() as (page, console):
        await page.goto(edge.url + "?retry_base=5")
        await wait_js(page, "window.talkmesh.connected && !document.getElementById('speak').ariaDisabled", timeout=15)
        first_done.set()
        await wait_js(page, "!window.talkmesh.connected", timeout=10)
        for control in ("speak", "interrupt", "audio-file", "mic"):
            assert await page.locator(f"#{control}").is_disabled(), control
        assert await page.inner_text("#state") in ("disconnected", "connecting")
        header = await page.inner_text("#connection")
        assert "unavailable" in header and "reconnecting in" in header, header
        assert "ipv4:" not in header, "the raw gRPC message stays in the Events list"
        assert "ipv4:127.0.0.1:1" in await page.inner_text("#events")
        # a turn typed now (Ctrl+Enter still works on the text box) is not sent and not shown as sent
        await page.fill("#text", "Are you still there?")
        await page.focus("#text")
        await page.keyboard.press("Control+Enter")
        await wait_js(page, "!document.getElementById('alert').hidden", timeout=5)
        assert "Not sent" in await page.inner_text("#alert")
        events = await page.inner_text("#events")
        assert "speak t" not in events and "NOT sent" in events, events
        assert await page.evaluate("Object.keys(window.talkmesh.turns).length") == 0
        assert not any("text" in m for c in edge.conns for m in c.received)
    assert console.errors == [], console.errors


async def test_a_refused_tab_backs_off_further_each_time_and_says_why() -> None:
    async with fake_edge(refuse_old) as edge, browser_page() as (page, console):
        await page.goto(edge.url + "?retry_base=0.3")
        deadline = time.monotonic() + 12
        while len(edge.conns) < 5 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        header = await page.inner_text("#connection")
        gaps = [b.at - a.at for a, b in zip(edge.conns, edge.conns[1:], strict=False)]
    assert len(gaps) >= 4, gaps
    # the n-th wait is between half and all of 0.3 * 2^n s: its floor doubles each time (a gap
    # also holds the page's reconnection, which a loaded machine stretches: the ranges of two
    # waits in a row touch, so comparing neighbours failed under the suite's load)
    assert all(gap >= 0.3 * 2**n / 2 - 0.05 for n, gap in enumerate(gaps[:4])), gaps
    assert gaps[3] > 2 * gaps[0], gaps
    assert header.startswith("The server is full, retrying in"), header
    assert console.errors == [], console.errors


async def test_a_final_status_with_retry_after_is_honoured() -> None:
    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        why = "session: too many live sessions; try again later"
        status = {"code": "RESOURCE_EXHAUSTED", "message": why, "field": "", "retry_after_seconds": 1.5}
        await ws.send_json({"status": status})
        await ws.close(code=1013)

    async with fake_edge(script) as edge, browser_page() as (page, console):
        await page.goto(edge.url + "?retry_base=0.1")
        deadline = time.monotonic() + 8
        while len(edge.conns) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        alert = await page.inner_text("#alert")
    assert len(edge.conns) >= 2
    assert edge.conns[1].at - edge.conns[0].at >= 1.45, "retry_after is a floor of the wait"
    assert "The server is full" in alert
    assert console.errors == [], console.errors


@pytest.mark.parametrize("final_status", [False, True], ids=["close-1009", "status-then-1009"])
async def test_errors_are_shown_in_the_alert_region(final_status: bool) -> None:
    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        await recv_json(ws, conn)
        await ws.send_json(started(n))
        while (body := await recv_json(ws, conn)) is not None:
            text = body.get("text", {}).get("text", "")
            if text == "oversized":
                if final_status:  # the documented form: a final status, then the close
                    why = "message: larger than the edge's limit of 262144 bytes"
                    await ws.send_json({"status": {"code": "INVALID_ARGUMENT", "message": why, "field": "message"}})
                await ws.close(code=1009)  # today's edge: no JSON before a too-big message's close
                return
            if text:
                why = "text.text: contains a control character"
                err = {
                    "code": "INVALID_ARGUMENT",
                    "message": why,
                    "field": "text.text",
                    "turn_id": body["text"]["turn_id"],
                }
                await ws.send_json({"error": err})

    async with fake_edge(script) as edge, browser_page() as (page, console):
        await page.goto(edge.url + "?retry_base=5")
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        assert await page.get_attribute("#events", "aria-live") != "polite", "events are not announced"
        assert await page.get_attribute("#text", "maxlength") is None, "the box never cuts a text silently"
        alert = page.get_by_role("alert")
        await page.fill("#text", "a turn the server refuses")
        await page.click("#speak")
        await wait_js(page, "!document.getElementById('alert').hidden", timeout=5)
        assert "Turn t1 was not spoken: text.text: contains a control character" in await alert.inner_text()
        # a text over the limit is not sent
        await page.evaluate("document.getElementById('text').value = 'x'.repeat(6000)")
        await page.click("#speak")
        assert "limit is 5000" in await alert.inner_text()
        # a message too large for the edge: close 1009 without a status
        await page.fill("#text", "oversized")
        await page.click("#speak")
        await wait_js(page, "!window.talkmesh.connected", timeout=5)
        assert "too large" in await alert.inner_text()
    assert not any(len(m.get("text", {}).get("text", "")) > 5000 for c in edge.conns for m in c.received)
    assert console.errors == [], console.errors


async def test_escape_interrupts_and_a_drain_reconnects_at_once() -> None:
    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        await recv_json(ws, conn)
        await ws.send_json(started(n))
        while (body := await recv_json(ws, conn)) is not None:
            if "interrupt" in body and n == 1:
                ack = {"unix_seconds": time.time(), "frame": "10", "interrupt_acknowledged": {}}
                await ws.send_json({"seq": "4", "event": ack})
                event = {
                    "unix_seconds": time.time(),
                    "frame": "10",
                    "session_ending": {"reason": "END_REASON_DRAINING", "seconds_left": 0.3},
                }
                await ws.send_json({"seq": "5", "event": event})
                await asyncio.sleep(0.3)
                await ws.send_json({"status": {"code": "OK", "message": "", "field": ""}})
                await ws.close()
                return

    async with fake_edge(script) as edge, browser_page() as (page, console):
        await page.goto(edge.url + "?retry_base=5")
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        # "Turn sound on" (shown while the sound is off) comes right after the video, before the controls
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.id") == "unmute"
        await page.locator("body").press("Escape")
        await wait_js(page, "document.getElementById('t-ack').textContent.endsWith(' ms')", timeout=5)
        deadline = time.monotonic() + 5
        while not any("interrupt" in m for m in edge.conns[0].received) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert any("interrupt" in m for m in edge.conns[0].received), "Escape sent an interrupt"
        header = await wait_js(
            page,
            "document.getElementById('connection').textContent.includes('restarting')"
            " && document.getElementById('connection').textContent",
            timeout=5,
        )
        assert "another one" in header
        # reconnected right after the session ended (the backoff base is 5 s here)
        await wait_js(page, "window.talkmesh.connected && window.talkmesh.started.session_id.endsWith('2')", timeout=3)
        assert edge.conns[1].at - edge.conns[0].at < 2.0
        # the Timings panel starts afresh for the new session
        assert await page.inner_text("#t-ack") == "\u2013"  # the en dash of an empty timing
    assert console.errors == [], console.errors


def _wav(seconds: float = 0.3, rate: int = 16000, level: float | None = None) -> bytes:
    """A mono 16-bit WAV: a 220 Hz tone, or one constant ``level`` (-1..1; its sign tells two
    files apart in the PCM the page sends)."""
    import io
    import math
    import struct
    import wave

    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        n = int(seconds * rate)
        if level is None:
            samples = [int(8000 * math.sin(2 * math.pi * 220 * i / rate)) for i in range(n)]
        else:
            samples = [int(level * 32767)] * n
        w.writeframes(struct.pack(f"<{n}h", *samples))
    return out.getvalue()


async def test_a_failed_audio_files_alert_goes_when_the_next_turn_starts() -> None:
    """An audio file the browser cannot decode is an alert; the next turn (another audio file, or
    text) clears it, as a turn after a refused text does; an alert about the session stays."""
    pcm_frames = 0

    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        nonlocal pcm_frames
        await recv_json(ws, conn)
        await ws.send_json(started(n))
        async for msg in ws:  # the audio turn's PCM comes as binary frames
            if msg.type == WSMsgType.BINARY:
                pcm_frames += 1
            elif msg.type == WSMsgType.TEXT:
                conn.received.append(json.loads(msg.data))

    async with fake_edge(script) as edge, browser_page() as (page, console):
        await page.goto(edge.url + "?retry_base=5")
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        alert = "document.getElementById('alert')"
        broken = {"name": "broken.wav", "mimeType": "audio/wav", "buffer": b"RIFF not really a wave file"}
        await page.set_input_files("#audio-file", files=[broken])
        await wait_js(page, f"!{alert}.hidden", timeout=5)
        assert (await page.inner_text("#alert")).startswith("Audio file broken.wav: ")  # (the file named)
        good = {"name": "hello.wav", "mimeType": "audio/wav", "buffer": _wav()}
        await page.set_input_files("#audio-file", files=[good])
        await wait_js(page, "window.talkmesh.turns.a1 !== undefined", timeout=5)
        await wait_js(page, f"{alert}.hidden", timeout=5)
        await page.set_input_files("#audio-file", files=[broken])  # fails again: shown again ...
        await wait_js(page, f"!{alert}.hidden", timeout=5)
        await page.fill("#text", "Hello.")
        await page.click("#speak")  # ... and a text turn clears it too
        await wait_js(page, f"{alert}.hidden", timeout=5)
    assert len(edge.conns) == 1, "one session throughout"
    turns = [m for m in edge.conns[0].received if "audio" in m or "text" in m]
    assert [next(iter(m)) for m in turns] == ["audio", "text"], turns
    assert pcm_frames >= 3, "the good file's 0.3 s went out (100 ms chunks)"
    assert console.errors == [], console.errors


async def test_a_turn_spoken_with_a_warning_says_so_in_the_alert_region() -> None:
    warning = "4 of the text's 22 letters are Han script, which espeak:en-us reads letter by letter"

    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        await recv_json(ws, conn)
        await ws.send_json(started(n))
        while (body := await recv_json(ws, conn)) is not None:
            turn_id = body.get("text", {}).get("turn_id")
            if turn_id:
                stopped = {"turn_id": turn_id, "reason": "STOP_REASON_COMPLETED", "warnings": [warning]}
                await ws.send_json({"event": {"frame": "3", "speaking_stopped": stopped}})

    async with fake_edge(script) as edge, browser_page() as (page, console):
        await page.goto(edge.url + "?retry_base=5")
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.fill("#text", "I flew from 北京 to 上海 last week.")
        await page.click("#speak")
        await wait_js(page, "!document.getElementById('alert').hidden", timeout=5)
        assert await page.inner_text("#alert") == f"Turn t1 was spoken with a warning: {warning}"
        events = await page.evaluate("[...document.querySelectorAll('#events li')].map(e => e.textContent)")
        assert any(f"warning for t1: {warning}" in line for line in events), events
    assert console.errors == [], console.errors
