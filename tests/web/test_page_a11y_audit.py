"""The page against the findings of an accessibility audit (Chromium, keyboard, 200-400 % zoom,
forced colours), in Chromium against the scripted stand-in edge of test_page_states: the focus
stays on a control that is unavailable for a moment, the stage buttons leave the video alone at
320 px, nothing scrolls sideways there, the scrolling regions take the focus, the caption stays a
moment and shows whole lines, a motion toggle right before Speak does not cut the sentence, screen
readers hear plain words and each failure once, every control has the same visible focus ring, and
arrowing through the voices does not restart the session at every voice."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web

from talkmesh.bench.web import wait_js
from tests.web.browser import browser_page, upload_on_page
from tests.web.test_page_states import Conn, fake_edge, recv_json, serve, started

pytestmark = pytest.mark.timeout(60)

ZOOM_400 = {"width": 320, "height": 256}  # a 1280x1024 window at 400 %
ZOOM_200 = {"width": 640, "height": 430}  # the tests' 1280x860 window at 200 %
LONG = (
    "The water cycle moves water between the oceans, the air and the land: the sun warms the "
    "sea, vapour rises and cools into clouds, and the clouds let it fall again as rain or snow, "
    "which runs off in rivers or soaks into the ground until it reaches the sea once more."
)


def speaking(seconds: float = 0.8):  # type: ignore[no-untyped-def]
    """A session whose text turns start at once and stop after ``seconds``; ``conn.received``
    gets a {"stopped_at": time.monotonic()} entry when a turn stops."""

    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        await recv_json(ws, conn)
        await ws.send_json(started(n))
        turns: list[asyncio.Task[None]] = []
        try:
            while (body := await recv_json(ws, conn)) is not None:
                if "text" in body:
                    text = body["text"]
                    turns.append(asyncio.ensure_future(_turn(ws, conn, text["turn_id"], text["text"], seconds)))
        finally:
            for task in turns:
                task.cancel()
            await asyncio.gather(*turns, return_exceptions=True)

    return script


async def _turn(ws: web.WebSocketResponse, conn: Conn, tid: str, text: str, seconds: float) -> None:
    """The turn starts and says its text as one clause (its caption cue), then stops."""
    if ws.closed:
        return
    await ws.send_json({"event": {"unix_seconds": time.time(), "frame": "5", "speaking_started": {"turn_id": tid}}})
    cue = {"turn_id": tid, "text": text}
    await ws.send_json({"event": {"unix_seconds": time.time(), "frame": "5", "caption": cue}})
    await asyncio.sleep(seconds)
    if ws.closed:
        return
    stop = {"turn_id": tid, "reason": "STOP_REASON_COMPLETED"}
    await ws.send_json({"event": {"frame": "50", "speaking_stopped": stop}})
    conn.received.append({"stopped_at": time.monotonic()})


async def active(page: Any) -> str:
    return str(await page.evaluate("document.activeElement.id || document.activeElement.tagName"))


async def test_the_focus_stays_on_a_control_that_is_unavailable_for_a_moment() -> None:
    """1: the microphone button while the microphone opens, Speak while the session restarts (a
    motion change) and while it reconnects: aria-disabled, the focus stays, a press meanwhile is
    ignored and one afterwards works."""
    ending = asyncio.Event()

    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        await recv_json(ws, conn)
        await ws.send_json(started(n))
        reader = asyncio.ensure_future(serve_rest(ws, conn))
        if n == 2:  # the session ends (a gateway went away): the page reconnects
            end = asyncio.ensure_future(ending.wait())
            await asyncio.wait([end, reader], return_when=asyncio.FIRST_COMPLETED)
            end.cancel()
            reader.cancel()
            await asyncio.gather(end, reader, return_exceptions=True)
            if ws.closed:
                return
            await ws.send_json({"status": {"code": "UNAVAILABLE", "message": "gone"}})
            await ws.close()
            return
        await reader

    async def serve_rest(ws: web.WebSocketResponse, conn: Conn) -> None:
        while await recv_json(ws, conn) is not None:
            pass

    async with fake_edge(script) as edge, browser_page() as (page, console):
        await page.goto(edge.url + "?retry_base=3")
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        # (b) Speak has the focus when the session restarts (a motion change): the focus stays, Enter speaks
        await page.fill("#text", "After the restart.")
        await page.focus("#speak")
        await page.evaluate("document.getElementById('motion').click()")
        await wait_js(page, "window.talkmesh.connects.length === 2", timeout=5)
        assert await active(page) == "speak"
        await wait_js(page, "window.talkmesh.connected", timeout=10)
        assert await page.get_attribute("#speak", "aria-disabled") is None
        assert await active(page) == "speak"
        await page.keyboard.press("Enter")
        await wait_js(page, "window.talkmesh.turns.t1 !== undefined", timeout=5)

        # ... and when it reconnects after the session ended: unavailable meanwhile, Enter ignored
        ending.set()
        await wait_js(page, "!window.talkmesh.connected", timeout=5)
        assert await page.get_attribute("#speak", "aria-disabled") == "true"
        assert await page.locator("#speak").is_disabled()  # (Playwright counts aria-disabled)
        assert await active(page) == "speak"
        await page.keyboard.press("Enter")
        await asyncio.sleep(0.3)
        assert await page.evaluate("window.talkmesh.unsent.length") == 0, "a press on an unavailable Speak is ignored"
        await wait_js(page, "window.talkmesh.connected", timeout=10)
        assert await active(page) == "speak"
        await page.keyboard.press("Enter")
        await wait_js(page, "window.talkmesh.turns.t2 !== undefined", timeout=5)
        await asyncio.sleep(0.3)
        assert [m["text"]["text"] for m in edge.conns[-1].received if "text" in m] == ["After the restart."]

        # (a) Tab to the microphone, Enter: it opens with the focus still there, Enter stops it
        await page.focus("#audio-file")
        await page.keyboard.press("Tab")
        assert await active(page) == "mic"
        await page.keyboard.press("Enter")
        await wait_js(page, "document.getElementById('mic').textContent === 'Stop microphone'", timeout=10)
        assert await active(page) == "mic"
        await page.keyboard.press("Enter")
        assert await page.inner_text("#mic") == "Start microphone"
        assert await active(page) == "mic"
    assert console.errors == [], console.errors


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    across = a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
    return across and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]


async def test_at_400_percent_zoom_the_stage_buttons_are_under_the_video_and_the_badge_shows() -> None:
    """2: below 480 CSS px the sound and motion buttons are a row under the video (over it they
    covered the face and the badge); wider, they stay over the video."""
    for viewport, under in ((ZOOM_400, True), ({"width": 1280, "height": 860}, False)):
        zoomed = browser_page(viewport=viewport, scale=4 if under else None)
        async with fake_edge(serve) as edge, zoomed as (page, console):
            await page.goto(edge.url)
            await wait_js(page, "window.talkmesh.connected", timeout=15)
            video = await page.locator("#avatar").bounding_box()
            badge = await page.locator("#state").bounding_box()
            assert video and badge
            for button in ("#unmute", "#motion"):
                box = await page.locator(button).bounding_box()
                assert box
                assert _overlap(box, video) != under, (viewport, button, box, video)
                assert not _overlap(box, badge), (viewport, button, box, badge)
                if under:
                    assert box["y"] >= video["y"] + video["height"], (button, box, video)
            # the badge is seen: nothing over its middle
            centre = (badge["x"] + badge["width"] / 2, badge["y"] + badge["height"] / 2)
            assert await page.evaluate("([x, y]) => document.elementFromPoint(x, y).id", list(centre)) == "state"
            # the Tab order is kept: the sound, then the motion toggle, right after the video
            await page.keyboard.press("Tab")
            assert await active(page) == "unmute"
            await page.keyboard.press("Tab")
            assert await active(page) == "motion"
        assert console.errors == [], console.errors


async def test_nothing_scrolls_sideways_at_320_px() -> None:
    """3: the buttons wrap and the fieldsets shrink (a fieldset is as wide as its content by default)."""
    zoomed = browser_page(viewport={"width": 320, "height": 640}, scale=4)
    async with fake_edge(speaking()) as edge, zoomed as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.fill("#text", LONG)
        await page.click("#speak")
        await wait_js(page, "!document.getElementById('caption').hidden", timeout=5)
        width = await page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= 320, f"the page is {width} px wide at 320"
        wider = await page.evaluate(
            "[...document.querySelectorAll('main *')].filter(e => e.getBoundingClientRect().right > 320.5)"
            ".map(e => e.id || e.tagName)"
        )
        assert wider == [], wider
    assert console.errors == [], console.errors


SCROLLS = "(s) => (e => e.scrollHeight > e.clientHeight)(document.querySelector(s))"


async def test_the_caption_and_the_events_take_the_focus_and_have_names() -> None:
    """4: axe's scrollable-region-focusable: both scroll (a long caption, a full Events list), so
    both are in the Tab order (keyboard scrolling in every browser) with a name."""
    async with fake_edge(speaking(3.0)) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.fill("#text", LONG * 2)
        await page.click("#speak")
        await wait_js(page, "!document.getElementById('caption').hidden", timeout=5)
        await page.evaluate(  # a full Events list (the page keeps the newest 60)
            "const l = document.getElementById('events');"
            "for (let i = 0; i < 60; i++)"
            "  l.append(Object.assign(document.createElement('li'), {textContent: 'x ' + i}))"
        )
        for selector, role, name in (("#caption", "region", "Caption"), ("#events", "list", "Events")):
            scrolls = await page.evaluate(SCROLLS, selector)
            assert scrolls, selector
            assert await page.get_attribute(selector, "tabindex") == "0", selector
            assert await page.get_by_role(role, name=name).count() == 1, (role, name)
        # the caption is reached by Tab right after the stage's buttons, and scrolls from the keyboard
        await page.focus("#motion")
        await page.keyboard.press("Tab")
        assert await active(page) == "caption"
        await page.keyboard.press("ArrowDown")
        await page.keyboard.press("ArrowDown")
        await wait_js(page, "document.getElementById('caption').scrollTop > 0", timeout=2)
    assert console.errors == [], console.errors


CAPTION_LINES = """() => {
  const c = document.getElementById('caption');
  const style = getComputedStyle(c);
  const range = document.createRange();
  range.selectNodeContents(c);
  const tops = [...new Set([...range.getClientRects()].map((r) => Math.round(r.top * 64) / 64))].sort((a, b) => a - b);
  const inner = c.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
  return {lines: inner / (tops[1] - tops[0]), scrolls: c.scrollHeight > c.clientHeight + 1,
          lineHeight: style.lineHeight, maxLines: parseFloat(style.maxHeight) / parseFloat(style.lineHeight)};
}"""


async def test_the_caption_shows_whole_lines_and_stays_a_moment_after_the_speech() -> None:
    """5: the box is a whole number of lines (at 200 % zoom, with and without forced colours), and
    the caption stays 3 s after the turn stopped, unless the next turn's replaces it."""
    async with fake_edge(speaking(1.0)) as edge, browser_page(viewport=ZOOM_200, scale=2) as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.fill("#text", LONG)
        await page.click("#speak")
        await wait_js(page, "!document.getElementById('caption').hidden", timeout=5)
        for forced in ("none", "active"):
            await page.emulate_media(forced_colors=forced)
            got = await page.evaluate(CAPTION_LINES)
            assert got["scrolls"], got
            assert abs(got["lines"] - round(got["lines"])) < 0.05, (forced, got)
            # whatever the font: a set line height, and a box that many lines high ("normal" is
            # the font's own, 1.16 here and 1.33 with Segoe UI, where 4.8em is 3.6 lines)
            assert got["lineHeight"] != "normal" and abs(got["maxLines"] - round(got["maxLines"])) < 0.01, got
        # the speech stops: the caption stays a moment, then goes
        await wait_js(page, "window.talkmesh.turns.t1.stopFrame != null", timeout=5)
        stopped = time.monotonic()
        await asyncio.sleep(1.5)
        assert not await page.is_hidden("#caption"), "the last words stay readable after the speech"
        await wait_js(page, "document.getElementById('caption').hidden", timeout=3)
        assert 2.5 <= time.monotonic() - stopped <= 4.0

        # the next turn's caption replaces a lingering one, and is not hidden by the first one's timer
        await page.fill("#text", "First.")
        await page.click("#speak")
        await wait_js(page, "window.talkmesh.turns.t2 && window.talkmesh.turns.t2.stopFrame != null", timeout=5)
        await asyncio.sleep(1.0)
        assert await page.inner_text("#caption") == "First."
        await page.fill("#text", "Second, a little later.")
        await page.click("#speak")
        await wait_js(page, "document.getElementById('caption').textContent === 'Second, a little later.'", timeout=5)
        await asyncio.sleep(2.3)  # past the end of the first caption's 3 s (t3 stopped after 1 s)
        assert await page.inner_text("#caption") == "Second, a little later."
        assert not await page.is_hidden("#caption")
        await wait_js(page, "document.getElementById('caption').hidden", timeout=3)
    assert console.errors == [], console.errors


async def test_a_motion_toggle_right_before_speak_waits_for_the_sentence() -> None:
    """6: Motion off, then Speak within the 600 ms the change takes to settle: the new session
    waits for that speech too (here: no frames are painted, so until ?motion_wait=)."""
    async with fake_edge(speaking(1.5)) as edge, browser_page() as (page, console):
        await page.goto(edge.url + "?motion_wait=3")
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.fill("#text", "A sentence that must not be cut.")
        toggled = time.monotonic()
        await page.click("#motion")
        await page.click("#speak")
        await wait_js(page, "window.talkmesh.turns.t1 && window.talkmesh.turns.t1.startFrame != null", timeout=5)
        assert time.monotonic() - toggled < 0.6, "Speak came before the change settled"
        await wait_js(page, "window.talkmesh.connects.length > 1", timeout=10)
        stops = [m["stopped_at"] for m in edge.conns[0].received if "stopped_at" in m]
        assert len(stops) == 1, "the turn finished in the first session"
        assert edge.conns[1].at > stops[0], "the new session came after the sentence"
        assert edge.conns[1].at - toggled < 3.0 + 1.5, "and no later than motion_wait (and its settling)"
        await wait_js(page, "window.talkmesh.connected", timeout=5)
        assert edge.conns[1].received[0]["config"]["idle_motion"] == "IDLE_MOTION_OFF"
    assert console.errors == [], console.errors


LIVE_TEXTS = """() => {
  const said = (n) => n.nodeType === Node.TEXT_NODE ? n.textContent
    : n.nodeType !== Node.ELEMENT_NODE || n.hidden || n.getAttribute('aria-hidden') === 'true' ? ''
    : [...n.childNodes].map(said).join('');
  return [...document.querySelectorAll('[role=status], [role=alert], [aria-live=polite], [aria-live=assertive]')]
    .map((e) => ({id: e.id, text: said(e)}));
}"""


async def test_screen_readers_hear_connected_not_the_sessions_details() -> None:
    """7: the polite status region says "Connected"; the session's id and size stay in the header."""
    async with fake_edge(serve) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        assert await page.inner_text("#announce") == "Connected"
        assert (await page.inner_text("#connection")).startswith("live: session "), "the details stay visible"
    assert console.errors == [], console.errors


async def test_a_failed_upload_is_announced_once() -> None:
    """7: by the alert; the status under the drop zone shows it without a second announcement."""

    async def refuse(request: web.Request) -> web.Response:
        await request.read()
        error = {"code": "INVALID_ARGUMENT", "message": "renderer: data: no face found in the image", "field": "file"}
        return web.json_response({"error": error}, status=400)

    async with (
        fake_edge(serve, routes=[web.post("/v1/avatars", refuse)]) as edge,
        browser_page() as (page, console),
    ):
        await upload_on_page(page, edge.url, "me.png", "image/png", b"\x89PNG")
        await wait_js(page, "!document.getElementById('alert').hidden", timeout=5)
        assert await page.inner_text("#upload-status") == "Upload failed (me.png): no face found in the image"
        regions = await page.evaluate(LIVE_TEXTS)
        saying = [r["id"] for r in regions if "no face found" in r["text"]]
        assert saying == ["alert"], regions
    assert [e for e in console.errors if "status of 400" not in e] == [], console.errors


async def test_a_text_over_the_limit_is_aria_invalid() -> None:
    async with fake_edge(serve) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.focus("#text")
        await page.fill("#text", "")
        await page.keyboard.insert_text("x" * 5001)
        assert await page.inner_text("#text-count") == "5001 of 5000 characters"
        assert await page.get_attribute("#text", "aria-invalid") == "true"
        await page.keyboard.press("Backspace")
        assert await page.get_attribute("#text", "aria-invalid") is None
    assert console.errors == [], console.errors


FOCUS_STYLE = """() => {
  const e = document.activeElement;
  const s = getComputedStyle(e);
  return {id: e.id || e.tagName, visible: e.matches(':focus-visible'), outline: `${s.outlineStyle} ${s.outlineWidth}`,
          offset: s.outlineOffset, shadow: s.boxShadow};
}"""


async def test_every_control_has_the_same_visible_focus_ring() -> None:
    """8: the text box, the pickers and the file input as the buttons (they had the browser's thin
    ring), and a ring with a light halo, which shows over the dark video too."""
    voices = [{"id": "espeak:en", "name": "English", "language": "en"}]
    async with fake_edge(serve, voices=voices) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        seen = {}
        for _ in range(12):
            await page.keyboard.press("Tab")
            got = await page.evaluate(FOCUS_STYLE)
            seen[got["id"]] = got
            if got["id"] == "drop":
                break
        controls = ("unmute", "motion", "avatar-select", "voice-select", "text", "speak", "download", "audio-file")
        for control in (*controls, "mic", "drop"):
            got = seen[control]
            assert got["visible"] and got["outline"] == "solid 3px" and got["offset"] == "2px", got
            assert "rgb(255, 255, 255)" in got["shadow"], got  # the light halo
    assert console.errors == [], console.errors


VOICES = [{"id": f"espeak:v{i}", "name": f"Voice {i}", "language": "en"} for i in range(12)]


async def test_arrowing_through_the_voices_restarts_the_session_once() -> None:
    """9: arrow keys on a closed picker change it at each press; someone listening to each voice
    takes longer per step than the 600 ms a choice takes to settle. A change by the keyboard applies
    on Enter, when the picker loses focus, or 4 s after the last key."""
    async with fake_edge(serve, voices=VOICES) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.focus("#voice-select")
        for _ in range(3):  # (the first option is the server's default)
            await page.keyboard.press("ArrowDown")
            await asyncio.sleep(0.9)
        assert len(edge.conns) == 1, "no new session for each voice passed"
        await page.keyboard.press("Enter")
        await wait_js(page, "window.talkmesh.connects.length === 2 && window.talkmesh.connected", timeout=5)
        assert edge.conns[1].received[0]["config"]["voice"] == "espeak:v2"
        assert await page.evaluate("window.talkmesh.connects[1].reason") == "picker"

        for _ in range(2):  # ... or leaves the picker
            await page.keyboard.press("ArrowDown")
            await asyncio.sleep(0.9)
        assert len(edge.conns) == 2
        await page.keyboard.press("Tab")
        await wait_js(page, "window.talkmesh.connects.length === 3 && window.talkmesh.connected", timeout=5)
        assert edge.conns[2].received[0]["config"]["voice"] == "espeak:v4"

        await page.focus("#voice-select")  # ... or stops on a voice for a while
        await page.keyboard.press("ArrowUp")
        await asyncio.sleep(3.0)
        assert len(edge.conns) == 3
        await wait_js(page, "window.talkmesh.connects.length === 4 && window.talkmesh.connected", timeout=5)
        assert edge.conns[3].received[0]["config"]["voice"] == "espeak:v3"
        await page.keyboard.press("Tab")  # (applied already: leaving does not restart it again)
        await asyncio.sleep(1.0)
        assert len(edge.conns) == 4
    assert console.errors == [], console.errors


async def test_a_pointer_pick_after_an_arrow_at_the_end_of_the_list_settles_as_a_pointers() -> None:
    """An arrow pressed at the end of the list changes nothing (no change event to clear the
    picker's "stepping"): the next pick with the pointer waited 4 s, as a keyboard change does."""
    async with fake_edge(serve, voices=VOICES) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.focus("#voice-select")
        await page.keyboard.press("End")
        await wait_js(page, "document.getElementById('voice-select').value === 'espeak:v11'", timeout=2)
        await page.keyboard.press("ArrowDown")  # (at the end: nothing changes)
        await asyncio.sleep(0.3)
        # the pointer opens the list and picks (a <select>'s popup is not in the page: the press,
        # then the choice)
        await page.dispatch_event("#voice-select", "pointerdown")
        await page.dispatch_event("#voice-select", "mousedown")
        await page.select_option("#voice-select", "espeak:v3")
        picked = time.monotonic()
        await wait_js(page, "window.talkmesh.connects.length === 2 && window.talkmesh.connected", timeout=3)
        assert time.monotonic() - picked < 2.5, "settled as a pointer's pick (600 ms), not a key's (4 s)"
        assert edge.conns[1].received[0]["config"]["voice"] == "espeak:v3"
    assert console.errors == [], console.errors


async def test_a_long_voice_name_cut_off_in_the_picker_is_its_tooltip() -> None:
    """The closed picker shows what fits of the chosen voice; its whole name is the tooltip."""
    long = "Norwegian Bokmål (Northern Norway, a very long descriptive voice name)"
    voices = [*VOICES[:2], {"id": "espeak:nb", "name": long, "language": "nb"}]
    async with fake_edge(serve, voices=voices) as edge, browser_page(viewport={"width": 390, "height": 800}) as (
        page,
        console,
    ):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        title = "document.getElementById('voice-select').title"
        assert await page.evaluate(title) == "(the server's default)"
        await page.select_option("#voice-select", "espeak:nb")
        cut = await page.evaluate(
            "(() => { const s = document.getElementById('voice-select'); return s.scrollWidth > s.clientWidth || "
            "(() => { const c = document.createElement('canvas').getContext('2d'); c.font = getComputedStyle(s).font;"
            " return c.measureText(s.selectedOptions[0].text).width > s.clientWidth; })(); })()"
        )
        assert cut, "the name fits: the test shows nothing"
        assert await page.evaluate(title) == f"{long} (nb)"
        assert len(edge.conns) >= 1
    assert console.errors == [], console.errors


async def test_a_caption_being_scrolled_keeps_the_focus_when_the_speech_ends() -> None:
    """The caption takes the focus (keyboard scrolling); hidden 3 s after the speech, it dropped
    the focus of someone scrolling it to <body>. It is emptied instead, and goes when they leave."""
    async with fake_edge(speaking(0.8)) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.fill("#text", LONG * 2)
        await page.click("#speak")
        await wait_js(page, "!document.getElementById('caption').hidden", timeout=5)
        await page.focus("#caption")
        await page.keyboard.press("ArrowDown")
        await wait_js(page, "window.talkmesh.turns.t1.stopFrame != null", timeout=5)
        await asyncio.sleep(4.0)  # past the caption's 3 s
        assert await page.inner_text("#caption") == "", "the words are gone"
        assert await active(page) == "caption", "the focus stays where it was"
        assert not await page.is_hidden("#caption")
        await page.keyboard.press("Shift+Tab")
        await wait_js(page, "document.getElementById('caption').hidden", timeout=2)
        assert await active(page) == "motion"
    assert console.errors == [], console.errors


async def test_right_to_left_text_reads_right_to_left_in_the_caption_and_the_text_box() -> None:
    """A tutor's example sentence in Arabic or Hebrew: the caption and the text box take their
    direction from the text (`dir="auto"`), so a sentence's full stop is at its end (the left), not
    stranded at the right of an English-direction box; English stays left to right."""
    async with fake_edge(speaking(1.0)) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        direction = "(id) => getComputedStyle(document.getElementById(id)).direction"
        for text, expected in (("مرحبا بالعالم.", "rtl"), ("שלום עולם.", "rtl"), ("Hello world.", "ltr")):
            await page.fill("#text", text)
            assert await page.evaluate(direction, "text") == expected, text
            await page.click("#speak")  # (each turn's caption replaces the one before)
            await wait_js(page, f"document.getElementById('caption').textContent === {text!r}", timeout=5)
            assert await page.evaluate(direction, "caption") == expected, text
    assert console.errors == [], console.errors
