"""The page for people who use a keyboard, a screen reader or a small screen, in Chromium against the
scripted stand-in edge of test_page_states (findings of an accessibility review): the sound can be
turned off and stays off, a picker restarts the session once its choice settles, screen readers
hear the connection's changes and not each second of a countdown, a long text is counted rather
than cut, the spoken text is captioned, nothing scrolls sideways at 360 px, a file can be chosen
twice, the avatar's motion can be turned off and starts off under prefers-reduced-motion."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web

from talkmesh.bench.web import wait_js
from tests.web.browser import browser_page
from tests.web.test_page_states import Conn, _wav, fake_edge, recv_json, refuse_old, serve, started

pytestmark = pytest.mark.timeout(60)

VOICES = [{"id": f"espeak:v{i}", "name": f"Voice {i}", "language": "en"} for i in range(5)]


async def test_sound_pickers_counter_and_caption() -> None:
    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        await recv_json(ws, conn)
        await ws.send_json(started(n))
        while (body := await recv_json(ws, conn)) is not None:
            if "text" in body:  # the turn starts, says its one clause and ends: the caption follows it
                tid = body["text"]["turn_id"]
                event = {"unix_seconds": time.time(), "frame": "5", "speaking_started": {"turn_id": tid}}
                await ws.send_json({"seq": "1", "event": event})
                cue = {"turn_id": tid, "text": body["text"]["text"]}
                await ws.send_json({"seq": "2", "event": {"unix_seconds": time.time(), "frame": "5", "caption": cue}})
                await asyncio.sleep(0.8)
                stop = {"turn_id": tid, "reason": "STOP_REASON_COMPLETED"}
                await ws.send_json({"seq": "3", "event": {"frame": "20", "speaking_stopped": stop}})

    async with fake_edge(script, voices=VOICES) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)

        # the sound: off at first, the button says what it does, and a turn does not undo the user's "off"
        sound = page.locator("#unmute")
        assert await sound.inner_text() == "Turn sound on" and await page.evaluate("avatar.muted")
        await sound.click()
        assert await sound.inner_text() == "Turn sound off" and not await page.evaluate("avatar.muted")
        await sound.click()
        assert await sound.inner_text() == "Turn sound on" and await page.evaluate("avatar.muted")
        await page.fill("#text", "Hello there.")
        await page.click("#speak")
        # the caption shows the spoken text while the turn plays, then goes
        await wait_js(page, "!document.getElementById('caption').hidden", timeout=5)
        assert await page.inner_text("#caption") == "Hello there."
        assert await page.evaluate("avatar.muted"), "the user turned the sound off: a turn keeps it off"
        await wait_js(page, "document.getElementById('caption').hidden", timeout=5)

        # arrow keys on a closed picker: one new session once the choice settles (nothing commits it
        # here: 4 s after the last key), not one per key
        before = await page.evaluate("window.talkmesh.connects.length")
        await page.focus("#voice-select")
        for _ in range(3):
            await page.keyboard.press("ArrowDown")
            await asyncio.sleep(0.1)
        await wait_js(page, f"window.talkmesh.connects.length > {before} && window.talkmesh.connected", timeout=10)
        await asyncio.sleep(1.0)
        assert await page.evaluate("window.talkmesh.connects.length") == before + 1
        assert edge.conns[-1].received[0]["config"]["voice"] == "espeak:v2"

        # a long paste is kept whole and counted; Speak refuses it and says why
        await page.fill("#text", "")
        await page.focus("#text")
        await page.keyboard.insert_text("word " * 1200)
        assert await page.evaluate("document.getElementById('text').value.length") == 6000
        assert await page.inner_text("#text-count") == "5999 of 5000 characters"  # (trimmed, as sent)
        assert await page.evaluate("document.getElementById('text-count').classList.contains('over')")
        assert "text-count" in (await page.get_attribute("#text", "aria-describedby") or "")
        await page.click("#speak")
        assert "the limit is 5000" in await page.inner_text("#alert")
    assert console.errors == [], console.errors


async def test_a_countdown_is_not_announced_every_second() -> None:
    async with fake_edge(refuse_old) as edge, browser_page() as (page, _):
        await page.goto(edge.url + "?retry_base=4&retry_cap=4")
        await wait_js(page, "document.getElementById('connection').textContent.includes('retrying in')", timeout=15)
        # every text the header and the announcement region take, in order
        await page.evaluate("""() => {
          window.__seen = {connection: [], announce: []};
          for (const id of ["connection", "announce"]) {
            const node = document.getElementById(id);
            new MutationObserver(() => window.__seen[id].push(node.textContent))
              .observe(node, {childList: true, characterData: true, subtree: true});
          }
        }""")
        await asyncio.sleep(4.0)  # 2-4 s countdowns, and the reconnections between them
        seen = await page.evaluate("window.__seen")
        headers, announced = seen["connection"], seen["announce"]
        shapes = [re.sub(r"\d+", "#", h) for h in headers]
        shape_changes = sum(a != b for a, b in itertools.pairwise(shapes))
        assert len(headers) - 1 > shape_changes, headers  # the visible countdown ticks...
        assert len(announced) <= shape_changes + 1, (announced, headers)  # ...only its state changes are read
        assert await page.get_attribute("#announce", "role") == "status"
        assert await page.get_attribute("#connection", "role") is None
        assert await page.get_attribute("#state", "aria-live") is None


async def test_a_small_screen_does_not_scroll_sideways_and_a_file_can_be_chosen_twice(tmp_path: Path) -> None:
    wav = tmp_path / "turn.wav"
    wav.write_bytes(_wav())

    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        await recv_json(ws, conn)
        await ws.send_json(started(n))
        async for msg in ws:  # text and audio turns (binary PCM is taken, not kept)
            if msg.type != WSMsgType.TEXT:
                continue
            body = json.loads(msg.data)
            conn.received.append(body)
            if "text" in body:  # an error whose message is one long word (a pasted address, a hash)
                why = "text.text: cannot say " + "x" * 400
                error = {"code": "INVALID_ARGUMENT", "message": why, "field": "text.text"}
                await ws.send_json({"error": {**error, "turn_id": body["text"]["turn_id"]}})

    async with fake_edge(script) as edge, browser_page(viewport={"width": 360, "height": 740}) as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.fill("#text", "Hello.")
        await page.click("#speak")
        await wait_js(page, "!document.getElementById('alert').hidden", timeout=5)
        width = await page.evaluate("document.scrollingElement.scrollWidth")
        assert width <= 360, f"the page is {width} px wide at 360"
        for _ in range(2):  # the same file twice (a fixed recording of the same name)
            await page.set_input_files("#audio-file", str(wav))
            await asyncio.sleep(0.5)
        await wait_js(page, "Object.keys(window.talkmesh.turns).length >= 3", timeout=5)
        audio_turns = [m for m in edge.conns[-1].received if "audio" in m]
        assert len(audio_turns) == 2 and len(edge.conns) == 1, audio_turns
    assert console.errors == [], console.errors


async def test_a_long_audio_file_goes_a_few_seconds_ahead_and_stops_at_an_interrupt(tmp_path: Path) -> None:
    """The session reads its messages in order: a file sent at once would put its interrupt behind
    all of its audio. The page sends AUDIO_AHEAD (5 s) at once, then as it plays, and nothing more
    after Interrupt."""
    wav = tmp_path / "long.wav"
    wav.write_bytes(_wav(seconds=14.0))
    chunks: list[float] = []  # time.monotonic() of each binary message

    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        await recv_json(ws, conn)
        await ws.send_json(started(n))
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                chunks.append(time.monotonic())
            elif msg.type == WSMsgType.TEXT:
                conn.received.append(json.loads(msg.data))

    async with fake_edge(script) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.set_input_files("#audio-file", str(wav))
        await wait_js(page, "window.talkmesh.turns.a1 !== undefined", timeout=5)
        await asyncio.sleep(1.5)
        sent_early = len(chunks)
        assert 50 <= sent_early <= 80, f"{sent_early} chunks of 100 ms within 1.5 s (5 s ahead, then paced)"
        await page.click("#interrupt")
        stopped_at = len(chunks)
        await asyncio.sleep(1.5)
        assert len(chunks) <= stopped_at + 1, "nothing of the file after the interrupt"
        assert not any("end_of_turn" in m for m in edge.conns[0].received)
        assert any("interrupt" in m for m in edge.conns[0].received)
    assert console.errors == [], console.errors


async def test_two_audio_sources_at_once_each_reach_their_own_turn(tmp_path: Path) -> None:
    """The edge sends a binary frame to the turn the last `audio` message named: a file still
    being sent (paced) and a second one interleave, so the page names the turn again whenever it
    switches. The microphone stops at Interrupt (its turn is interrupted)."""
    import numpy as np

    routed: dict[str, dict[str, int]] = {}  # turn -> source ("A" a positive level, "B" negative) -> chunks

    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        turn = ""
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                body = json.loads(msg.data)
                conn.received.append(body)
                if "config" in body:
                    await ws.send_json(started(n))
                turn = body["audio"]["turn_id"] if "audio" in body else turn
            elif msg.type == WSMsgType.BINARY:
                source = "A" if np.frombuffer(msg.data, "<i2").mean() > 0 else "B"
                counts = routed.setdefault(turn, {})
                counts[source] = counts.get(source, 0) + 1

    async with fake_edge(script) as edge, browser_page() as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        first = {"name": "a.wav", "mimeType": "audio/wav", "buffer": _wav(8, level=0.3)}
        await page.set_input_files("#audio-file", files=[first])
        await wait_js(page, "window.talkmesh.turns.a1 !== undefined", timeout=5)
        await asyncio.sleep(1.0)
        second = {"name": "b.wav", "mimeType": "audio/wav", "buffer": _wav(1, level=-0.3)}
        await page.set_input_files("#audio-file", files=[second])
        await wait_js(page, "window.talkmesh.turns.a2 !== undefined", timeout=5)
        await asyncio.sleep(4.5)  # the first file's last chunks (8 s, 5 s ahead, 1 s in)
        received = edge.conns[0].received
        assert [m["end_of_turn"]["turn_id"] for m in received if "end_of_turn" in m] == ["a2", "a1"]
        assert routed == {"a1": {"A": 80}, "a2": {"B": 10}}, routed

        await page.click("#mic")
        await wait_js(page, "document.getElementById('mic').textContent === 'Stop microphone'", timeout=10)
        await page.locator("body").press("Escape")
        assert await page.inner_text("#mic") == "Start microphone", "the microphone stops with its turn"
    assert console.errors == [], console.errors


async def test_the_text_is_counted_in_characters_as_the_server_counts() -> None:
    async with fake_edge(serve) as edge, browser_page() as (page, _):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.evaluate("document.getElementById('text').value = '\\u{1F600}'.repeat(3000) + '   '")
        await page.click("#speak")
        await asyncio.sleep(0.5)
        sent = [m for m in edge.conns[0].received if "text" in m]
        assert len(sent) == 1 and len(sent[0]["text"]["text"]) == 3000, "3000 emoji are 3000 characters"


async def test_a_token_refused_while_a_session_runs_leaves_it_running_and_then_stops() -> None:
    """Sessions outlive their tokens: a 401 on Download says so but keeps the running session and
    its controls; when that session ends, the page waits for a new token instead of reconnecting."""
    closing = asyncio.Event()

    async def script(ws: web.WebSocketResponse, conn: Conn, n: int) -> None:
        await recv_json(ws, conn)
        await ws.send_json(started(n))
        await closing.wait()
        await ws.send_json({"status": {"code": "OK", "message": "", "field": ""}})
        await ws.close()

    async def speak(request: web.Request) -> web.Response:
        why = "access_token: not accepted: it expired 3 s ago"
        error = {"code": "UNAUTHENTICATED", "field": "access_token", "message": why}
        return web.json_response({"error": error}, status=401)

    async with (
        fake_edge(script, routes=[web.post("/v1/speak", speak)]) as edge,
        browser_page() as (page, _),
    ):
        await page.goto(f"{edge.url}?retry_base=1#access_token=aaa.bbb.ccc")
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.click("#download")
        await wait_js(page, "window.talkmesh.access !== undefined && window.talkmesh.access !== null", timeout=5)
        assert "has expired" in await page.inner_text("#alert")
        assert await page.evaluate("window.talkmesh.connected") and not await page.is_disabled("#speak")
        assert (await page.inner_text("#connection")).startswith("live")
        closing.set()  # the session ends (its own end, a drain...)
        await wait_js(page, "!window.talkmesh.connected", timeout=5)
        await asyncio.sleep(2.5)  # a reconnection would come within the backoff's first 0.5-1 s
        assert len(edge.conns) == 1 and await page.inner_text("#connection") == "Not signed in"
        assert await page.is_disabled("#speak")


async def test_motion_off_follows_reduced_motion_and_a_press_restarts_the_session_with_the_other_value() -> None:
    """WCAG 2.2.2: a toggle button (aria-pressed, reached by Tab right after the sound) asks for a
    still avatar; under prefers-reduced-motion it starts pressed and the session's config says so; a
    press (here from the keyboard) starts one new session, once it has settled, asking for motion;
    a download asks for what the toggle says."""
    downloads: list[dict[str, object]] = []

    async def speak(request: web.Request) -> web.Response:
        downloads.append(await request.json())
        return web.Response(body=b"\x00" * 16, content_type="video/mp4")

    async with (
        fake_edge(serve, routes=[web.post("/v1/speak", speak)]) as edge,
        browser_page(reduced_motion="reduce") as (page, console),
    ):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        motion = page.locator("#motion")
        assert await motion.inner_text() == "Motion off" and await motion.is_visible()
        assert await motion.get_attribute("aria-pressed") == "true"
        assert edge.conns[0].received[0]["config"]["idle_motion"] == "IDLE_MOTION_OFF"

        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.id") == "unmute"
        await page.keyboard.press("Tab")
        assert await page.evaluate("document.activeElement.id") == "motion"
        await page.keyboard.press("Space")
        assert await motion.get_attribute("aria-pressed") == "false"
        assert await motion.inner_text() == "Motion off", "a toggle's label stays: aria-pressed says its state"
        await wait_js(page, "window.talkmesh.connects.length > 1 && window.talkmesh.connected", timeout=10)
        await asyncio.sleep(1.0)
        assert len(edge.conns) == 2 and await page.evaluate("window.talkmesh.connects[1].reason") == "motion"
        assert edge.conns[1].received[0]["config"]["idle_motion"] == "IDLE_MOTION_ON"

        await page.click("#download")
        await wait_js(page, "document.getElementById('download').textContent === 'Download as MP4'", timeout=5)
        assert [d["output"] for d in downloads] == [{"idle_motion": "IDLE_MOTION_ON"}]
    assert console.errors == [], console.errors


async def test_without_reduced_motion_the_avatar_moves_and_the_toggle_starts_unpressed() -> None:
    async with fake_edge(serve) as edge, browser_page(reduced_motion="no-preference") as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        assert await page.get_attribute("#motion", "aria-pressed") == "false"
        assert edge.conns[0].received[0]["config"]["idle_motion"] == "IDLE_MOTION_ON"
        await page.click("#motion")
        await page.click("#motion")
        await page.click("#motion")  # three presses in a row: one new session, with the last state
        await wait_js(page, "window.talkmesh.connects.length > 1 && window.talkmesh.connected", timeout=10)
        await asyncio.sleep(1.0)
        assert len(edge.conns) == 2
        assert edge.conns[1].received[0]["config"]["idle_motion"] == "IDLE_MOTION_OFF"
    assert console.errors == [], console.errors


async def test_a_reduced_motion_setting_changed_later_is_followed_until_the_user_chooses() -> None:
    async with fake_edge(serve) as edge, browser_page(reduced_motion="no-preference") as (page, console):
        await page.goto(edge.url)
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        await page.emulate_media(reduced_motion="reduce")  # the system's setting changes
        await wait_js(page, "document.getElementById('motion').getAttribute('aria-pressed') === 'true'", timeout=5)
        await wait_js(page, "window.talkmesh.connects.length > 1 && window.talkmesh.connected", timeout=10)
        assert edge.conns[1].received[0]["config"]["idle_motion"] == "IDLE_MOTION_OFF"
        await page.click("#motion")  # the user wants motion after all: that choice stays
        await wait_js(page, "window.talkmesh.connects.length > 2 && window.talkmesh.connected", timeout=10)
        await page.emulate_media(reduced_motion="no-preference")
        await page.emulate_media(reduced_motion="reduce")
        await asyncio.sleep(1.0)
        assert await page.get_attribute("#motion", "aria-pressed") == "false"
        assert len(edge.conns) == 3 and edge.conns[2].received[0]["config"]["idle_motion"] == "IDLE_MOTION_ON"
        # the user's choice is remembered on this device: a reload keeps it, whatever the setting says
        await page.reload()
        await wait_js(page, "window.talkmesh.connected", timeout=15)
        assert await page.get_attribute("#motion", "aria-pressed") == "false"
        assert edge.conns[-1].received[0]["config"]["idle_motion"] == "IDLE_MOTION_ON"
    assert console.errors == [], console.errors


async def test_a_phone_is_not_told_of_keyboard_shortcuts() -> None:
    for phone in (False, True):
        async with fake_edge(serve) as edge, browser_page(viewport={"width": 390, "height": 800}, phone=phone) as (
            page,
            console,
        ):
            await page.goto(edge.url)
            assert await page.evaluate("matchMedia('(hover: none) and (pointer: coarse)').matches") == phone
            assert await page.locator("#text-hint").is_visible() != phone
        assert console.errors == [], console.errors
