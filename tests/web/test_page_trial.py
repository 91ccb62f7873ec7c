"""The page against the findings of a new user's trial, in Chromium against the scripted stand-in
edge of test_page_states: Speak pressed while a voice or avatar pick settles, or while the pick's
new session starts, is said in the new session, with the new voice (it went to the old session,
which the pick's restart cut, or a click on Speak after a pick made with the arrow keys went
nowhere: the text was lost without a word), once, and Interrupt cancels it; the audio turns wait
for a pick to apply; an upload whose face is small says so, as `talkmesh avatar add` does, and one
without a face what picture works; the Events list says when it cut a spoken text short."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest
from aiohttp import WSMsgType, web

from talkmesh.bench.web import wait_js
from tests.web.browser import browser_page, upload_on_page
from tests.web.test_page_a11y import VOICES
from tests.web.test_page_a11y_audit import speaking
from tests.web.test_page_states import Conn, _wav, fake_edge, recv_json, refuse_old, serve, started

pytestmark = pytest.mark.timeout(60)


async def test_the_events_list_marks_a_text_it_cut_short() -> None:
    """It showed a text's first 40 characters as if they were all of it."""
    long = "A sentence well over forty characters long, said in full."
    async with fake_edge(serve) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        for text in (long, "Short."):
            await page.fill("#text", text)
            await page.click("#speak")
        await wait_js(page, "document.getElementById('events').textContent.includes('speak t2')", timeout=5)
        events = await page.inner_text("#events")
        assert f"speak t1: {long[:40]}…\n" in events + "\n", events
        assert "speak t2: Short.\n" in events + "\n", events
    assert console.errors == [], console.errors


def texts(conn: Conn) -> list[str]:
    return [m["text"]["text"] for m in conn.received if "text" in m]


async def test_speak_while_a_pick_settles_is_said_by_the_new_session_in_the_new_voice() -> None:
    text = "Said in the voice just picked."
    async with fake_edge(speaking(0.8), voices=VOICES) as edge, browser_page() as (page, console):
        await opened_with(page, edge.url, text)
        await page.select_option("#voice-select", "espeak:v2")
        picked = time.monotonic()
        await asyncio.sleep(0.3)
        await page.click("#speak")
        assert time.monotonic() - picked < 0.6, "Speak came before the pick settled"
        await wait_js(page, "window.talkmesh.turns.t1 && window.talkmesh.turns.t1.startFrame != null", timeout=5)
        await wait_js(page, f"document.getElementById('caption').textContent === {text!r}", timeout=5)
        assert len(edge.conns) == 2
        assert edge.conns[1].received[0]["config"]["voice"] == "espeak:v2"
        assert texts(edge.conns[0]) == [] and texts(edge.conns[1]) == [text], "said once, in the new session"
        await wait_js(page, "window.talkmesh.turns.t1.stopFrame != null", timeout=5)
        assert await page.evaluate("window.talkmesh.turns.t1.reason") == "STOP_REASON_COMPLETED"
        await asyncio.sleep(1.0)  # past the pick's settling: applied already, no second restart
        assert len(edge.conns) == 2 and await page.evaluate("window.talkmesh.connects.length") == 2
        assert await page.evaluate("window.talkmesh.unsent") == []
    assert console.errors == [], console.errors


async def test_speak_while_a_pick_settles_says_so_when_the_new_session_does_not_start() -> None:
    text = "Nobody will hear this."

    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        await (serve if n == 1 else refuse_old)(ws, conn, n)

    async with fake_edge(script, voices=VOICES) as edge, browser_page() as (page, console):
        await page.goto(edge.url + "?retry_base=10")
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.fill("#text", text)
        await page.select_option("#voice-select", "espeak:v3")
        await page.click("#speak")
        await wait_js(page, "window.talkmesh.unsent.length === 1", timeout=5)
        assert await page.evaluate("window.talkmesh.unsent[0].text") == text
        alert = await page.inner_text("#alert")
        assert "The server is full" in alert and "Your text was not sent" in alert, alert
        assert f"NOT sent (the new session did not start): {text}" in await page.inner_text("#events")
        assert await page.input_value("#text") == text, "the text stays in the box"
        assert texts(edge.conns[0]) == []
    assert console.errors == [], console.errors


def _avatar_json(info: Any) -> dict[str, Any]:
    """An AvatarInfo as the edge's upload answer carries it (the fields the page reads)."""
    return {"id": info.id, "name": info.name, "names": [info.name], "width": info.width, "height": info.height,
            "frame_count": info.frame_count}  # fmt: skip


async def _uploaded_status(page: Any, url: str) -> str:
    """What the page says under the drop zone once its upload of a JPEG "room.jpg" is answered."""
    await upload_on_page(page, url, "room.jpg", "image/jpeg", b"\xff\xd8\xff")
    await wait_js(page, "window.talkmesh.uploads.length && window.talkmesh.uploads[0].ok", timeout=5)
    return str(await page.inner_text("#upload-status"))


async def test_an_upload_with_a_small_face_says_so_as_the_command_line_does() -> None:
    """The edge's answer carries the CLI's hint in `warnings` (tests/web/test_api.py); the page said
    only that the avatar was ready."""
    from talkmesh.common.faces import small_face_hint
    from talkmesh.v1 import types_pb2 as api

    info = api.AvatarInfo(id="0123456789abcdef0123", name="room", width=1280, height=960, frame_count=1)
    info.face.box.extend([1055, 721, 1084, 752])
    warning = small_face_hint(info, "upload that")

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"avatar": _avatar_json(info), "warnings": [warning]}, status=201)

    async with (
        fake_edge(serve, routes=[web.post("/v1/avatars", answer)]) as edge,
        browser_page() as (page, console),
    ):
        status = await _uploaded_status(page, edge.url)
        assert status == f"avatar “room” is ready. T{warning[1:]}.", status
        assert "about 12 px wide in a video of the default size (512)" in status and "upload that." in status
    assert console.errors == [], console.errors


async def test_an_upload_sends_the_framing_picked_and_says_the_picture_was_framed() -> None:
    """The page's upload sends the Framing picker's value (auto unless changed) before the file, and
    says what the edge's `notes` say: the server cropped the picture to the head and shoulders."""
    from talkmesh.common.faces import framing_note
    from talkmesh.v1 import types_pb2 as api

    info = api.AvatarInfo(id="0123456789abcdef0123", name="room", width=706, height=940, frame_count=1)
    info.face.box.extend([234, 204, 471, 475])
    info.face.framed_box.extend([2512, 1163, 3218, 2103])
    note = framing_note(info)
    forms: list[dict[str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        fields = {}
        async for part in await request.multipart():  # type: ignore[union-attr]
            fields[part.name or ""] = part.filename or (await part.text())  # type: ignore[union-attr]
        forms.append(fields)
        return web.json_response({"avatar": _avatar_json(info), "notes": [note]}, status=201)

    async with (
        fake_edge(serve, routes=[web.post("/v1/avatars", answer)]) as edge,
        browser_page() as (page, console),
    ):
        status = await _uploaded_status(page, edge.url)
        assert status == f"avatar “room” is ready. F{note[1:]}.", status
        await page.select_option("#framing", "as_is")
        await page.set_input_files("#avatar-file", files=[{"name": "b.jpg", "mimeType": "image/jpeg", "buffer": b"1"}])
        await wait_js(page, "window.talkmesh.uploads.length === 2 && window.talkmesh.uploads[1].ok", timeout=5)
    assert [list(f) for f in forms] == [["name", "framing", "file"]] * 2, forms
    assert [f["framing"] for f in forms] == ["auto", "as_is"]
    assert console.errors == [], console.errors


async def test_an_upload_without_a_face_says_what_picture_works() -> None:
    """The renderer's refusal (tests/web/test_api.py) is shown whole, said of the file."""
    from talkmesh.common.faces import NO_FACE_ADVICE

    message = f"renderer: data: no face found (0 of 1 frame(s) have a detectable face): {NO_FACE_ADVICE}"

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        error = {"code": "INVALID_ARGUMENT", "message": message, "field": "file"}
        return web.json_response({"error": error}, status=400)

    async with (
        fake_edge(serve, routes=[web.post("/v1/avatars", refuse)]) as edge,
        browser_page() as (page, console),
    ):
        await upload_on_page(page, edge.url, "no_face.jpg", "image/jpeg", b"\xff\xd8\xff")
        await wait_js(page, "!document.getElementById('alert').hidden", timeout=5)
        said = f"Upload failed (no_face.jpg): no face found (0 of 1 frame(s) have a detectable face): {NO_FACE_ADVICE}"
        assert await page.inner_text("#alert") == said
    assert [e for e in console.errors if "status of 400" not in e] == [], console.errors


def slow_start(seconds: float, speak_for: float = 0.8):  # type: ignore[no-untyped-def]
    """As ``speaking``, but every session after the first starts ``seconds`` after its config."""
    inner = speaking(speak_for)

    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        if n > 1:
            real_send = ws.send_json

            async def late_started(body: dict[str, Any], *args: Any, **kwargs: Any) -> None:
                if "started" in body:
                    await asyncio.sleep(seconds)
                await real_send(body, *args, **kwargs)

            ws.send_json = late_started  # type: ignore[method-assign, assignment]
        await inner(ws, conn, n)

    return script


async def opened_with(page: Any, url: str, text: str) -> None:
    """The page at ``url``, its session live, ``text`` typed in its text box."""
    await page.goto(url)
    await wait_js(page, "window.talkmesh.connected", timeout=15)
    await page.fill("#text", text)


async def test_a_voice_picked_with_the_arrow_keys_then_speak_clicked_is_said_in_the_new_voice() -> None:
    """Leaving the picker applies a key pick at once (a 0 ms timer): the new session's restart
    made Speak unavailable before the click arrived, and the click was swallowed without a word.
    (A new session takes a moment to start, here 1 s: one that started at once hid it.)"""
    text = "Said in the voice picked with the keys."
    async with fake_edge(slow_start(1.0), voices=VOICES) as edge, browser_page() as (page, console):
        await opened_with(page, edge.url, text)
        await page.focus("#voice-select")
        await page.keyboard.press("ArrowDown")
        assert await page.input_value("#voice-select") == "espeak:v0"
        # a person's click: the picker's blur (on mousedown) comes a moment before the click (mouseup)
        await page.click("#speak", delay=80)
        await wait_js(page, "window.talkmesh.turns.t1 && window.talkmesh.turns.t1.startFrame != null", timeout=5)
        assert len(edge.conns) == 2
        assert edge.conns[1].received[0]["config"]["voice"] == "espeak:v0"
        assert texts(edge.conns[0]) == [] and texts(edge.conns[1]) == [text], "said once, in the new session"
        assert await page.evaluate("window.talkmesh.unsent") == []
    assert console.errors == [], console.errors


async def test_a_voice_picked_with_the_arrow_keys_then_tab_and_enter_on_speak_is_said() -> None:
    text = "Said after Tab and Enter."
    async with fake_edge(slow_start(1.0), voices=VOICES) as edge, browser_page() as (page, console):
        await opened_with(page, edge.url, text)
        await page.focus("#voice-select")
        await page.keyboard.press("ArrowDown")
        await page.focus("#speak")  # (Tab: the picker loses the focus, the pick applies at once)
        await asyncio.sleep(0.1)  # (a person presses Enter a moment later)
        await page.keyboard.press("Enter")
        await wait_js(page, "window.talkmesh.turns.t1 && window.talkmesh.turns.t1.startFrame != null", timeout=5)
        assert edge.conns[1].received[0]["config"]["voice"] == "espeak:v0"
        assert texts(edge.conns[0]) == [] and texts(edge.conns[1]) == [text]
    assert console.errors == [], console.errors


async def test_speak_while_the_picks_new_session_starts_is_held_for_it() -> None:
    """After the pick applied, before the new session started (which can take seconds), Speak was
    unavailable (a click went nowhere) and Ctrl+Enter said "Not sent"."""
    text = "Held until the new session starts."
    async with fake_edge(slow_start(1.5), voices=VOICES) as edge, browser_page() as (page, console):
        await opened_with(page, edge.url, text)
        await page.select_option("#voice-select", "espeak:v2")
        await wait_js(page, "window.talkmesh.connects.length === 2", timeout=5)
        assert not await page.evaluate("window.talkmesh.connected")
        assert await page.get_attribute("#speak", "aria-disabled") is None, "Speak stays usable"
        await page.click("#speak")
        await page.press("#text", "Control+Enter")  # again: it is queued already, not "Not sent"
        alert = await page.inner_text("#alert")
        assert "Not sent" not in alert and "queued" in alert.lower(), alert
        await wait_js(page, "window.talkmesh.turns.t1 && window.talkmesh.turns.t1.startFrame != null", timeout=5)
        await asyncio.sleep(0.3)
        assert texts(edge.conns[0]) == [] and texts(edge.conns[1]) == [text], "said once, in the new session"
        assert edge.conns[1].received[0]["config"]["voice"] == "espeak:v2"
        assert await page.evaluate("window.talkmesh.unsent") == []
    assert console.errors == [], console.errors


async def test_speak_twice_while_a_pick_settles_is_said_once() -> None:
    """The second press said "Not sent… press Speak again", and the first was said all the same:
    following the advice said it twice."""
    text = "Only once, please."
    async with fake_edge(slow_start(1.0), voices=VOICES) as edge, browser_page() as (page, console):
        await opened_with(page, edge.url, text)
        await page.select_option("#voice-select", "espeak:v1")
        await page.click("#speak")
        await page.press("#text", "Control+Enter")
        alert = await page.inner_text("#alert")
        assert "Not sent" not in alert and "queued" in alert.lower(), alert
        await wait_js(page, "window.talkmesh.turns.t1 && window.talkmesh.turns.t1.startFrame != null", timeout=5)
        await asyncio.sleep(0.3)
        assert texts(edge.conns[1]) == [text] and await page.evaluate("Object.keys(window.talkmesh.turns)") == ["t1"]
    assert console.errors == [], console.errors


@pytest.mark.parametrize("how", ["Escape", "button"])
async def test_interrupt_cancels_a_text_held_for_the_picks_new_session(how: str) -> None:
    text = "Never mind."
    async with fake_edge(slow_start(1.5), voices=VOICES) as edge, browser_page() as (page, console):
        await opened_with(page, edge.url, text)
        await page.select_option("#voice-select", "espeak:v3")
        await page.click("#speak")
        assert not await page.evaluate("window.talkmesh.connected")
        if how == "Escape":
            await page.press("#text", "Escape")
        else:
            await page.click("#interrupt")
        assert f"cancelled (interrupt): {text}" in await page.inner_text("#events")
        await wait_js(page, "window.talkmesh.connected", timeout=5)
        await asyncio.sleep(0.5)
        assert texts(edge.conns[1]) == [], "the new session does not say a cancelled text"
        assert await page.get_attribute("#interrupt", "aria-disabled") is None  # (live again)
    assert console.errors == [], console.errors


async def test_the_audio_file_and_microphone_wait_for_a_pick_to_apply() -> None:
    """They went to the old session, which the pick's restart cut a moment later."""
    async with fake_edge(serve, voices=VOICES) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.select_option("#voice-select", "espeak:v4")
        for control in ("#audio-file", "#mic"):
            assert await page.get_attribute(control, "aria-disabled") == "true", control
        await wait_js(page, "window.talkmesh.connects.length === 2 && window.talkmesh.connected", timeout=5)
        for control in ("#audio-file", "#mic"):
            assert await page.get_attribute(control, "aria-disabled") is None, control
        assert len(edge.conns) == 2
    assert console.errors == [], console.errors


async def test_an_audio_file_still_decoding_when_a_pick_is_made_is_said_by_the_new_session() -> None:
    """The file went to the old session once decoded (the controls wait for a pick, but a file
    chosen a moment before the pick was decoding then), and the pick's restart cut it."""
    wav = base64.b64encode(_wav(1.0)).decode()

    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        await recv_json(ws, conn)
        await ws.send_json(started(n))
        async for msg in ws:
            conn.received.append(json.loads(msg.data) if msg.type == WSMsgType.TEXT else {"pcm": len(msg.data)})

    async with fake_edge(script, voices=VOICES) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        # the file chosen, and the pick made while it decodes (in the same task: no race in the test)
        await page.evaluate(
            """(b64) => {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                const files = new DataTransfer();
                files.items.add(new File([bytes], "late.wav", { type: "audio/wav" }));
                const input = document.getElementById("audio-file");
                input.files = files.files;
                input.dispatchEvent(new Event("change", { bubbles: true }));
                const voice = document.getElementById("voice-select");
                voice.value = "espeak:v2";
                voice.dispatchEvent(new Event("change", { bubbles: true }));
            }""",
            wav,
        )
        await wait_js(page, "window.talkmesh.connects.length === 2 && window.talkmesh.connected", timeout=5)
        for _ in range(50):
            if any("end_of_turn" in m for m in edge.conns[1].received):
                break
            await asyncio.sleep(0.1)
        old, new = edge.conns[0].received, edge.conns[1].received
        assert not any("audio" in m or "pcm" in m for m in old), old
        assert new[0]["config"]["voice"] == "espeak:v2"
        turns = [m["audio"]["turn_id"] for m in new if "audio" in m]
        assert len(turns) == 1 and sum(m.get("pcm", 0) for m in new) == 16000 * 2, new
        assert new[-1] == {"end_of_turn": {"turn_id": turns[0]}}
        assert await page.evaluate("window.talkmesh.unsent") == []
    assert console.errors == [], console.errors
