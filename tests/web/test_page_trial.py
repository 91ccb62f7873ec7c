"""The page against the findings of a new user's trial, in Chromium against the scripted stand-in
edge of test_page_states: the Events list says when it cut a spoken text short."""

from __future__ import annotations

import pytest

from talkmesh.bench.web import wait_js
from tests.web.browser import browser_page
from tests.web.test_page_states import fake_edge, serve

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
