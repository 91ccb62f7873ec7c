"""A link slower than the stream (Chromium's network emulation over CDP): the page measures the true
delay of the frame on screen against the server's wall clock, says the connection is too slow and
skips ahead to live (a new session) rather than fall further and further behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from talkmesh.bench.web import wait_js
from tests.mesh import inprocess_mesh
from tests.web.browser import browser_page

pytestmark = pytest.mark.timeout(90)

#: JS: the true delay as an outside observer measures it (trial-web's truelag.py)
TRUE_DELAY = """() => { const tm = window.talkmesh, v = document.getElementById('avatar');
  return Date.now() / 1000 - Number(tm.started.frame0_unix_seconds) - (v.currentTime - (tm.offset ?? 0)); }"""


async def test_a_too_slow_link_is_reported_and_the_page_skips_ahead_to_live(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path, web=True) as mesh, browser_page() as (page, console):
        await page.goto(mesh.web_url + "?catchup=3")
        await wait_js(page, "window.talkmesh.started && window.talkmesh.painted > 25", timeout=30)
        assert await page.locator("#slow").is_hidden()
        cdp = await page.context.new_cdp_session(page)
        await cdp.send("Network.enable")
        # even the idle stream is more than 30 KB/s
        await cdp.send(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 100, "downloadThroughput": 30_000, "uploadThroughput": 30_000},
        )
        await wait_js(page, "!document.getElementById('slow').hidden", timeout=15)
        warning = await page.inner_text("#slow")
        assert "too slow for live video" in warning and "s behind" in warning, warning
        shown = await page.evaluate("window.talkmesh.delay.screen")
        true = await page.evaluate(TRUE_DELAY)
        assert shown > 1.0 and abs(shown - true) < 0.5, (shown, true)
        assert (await page.inner_text("#t-delay")).endswith(" ms")
        # beyond catchup (3 s) the page drops what is in flight: a new session at the live edge
        await wait_js(page, "window.talkmesh.delay.catchups >= 1 && window.talkmesh.connected", timeout=20)
        # the link recovers: the new session plays near live again (a backlog is not played out)
        await cdp.send(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
        await wait_js(page, "window.talkmesh.delay.screen !== null && window.talkmesh.delay.screen < 1", timeout=15)
        assert await page.evaluate(TRUE_DELAY) < 1.5
        assert await page.evaluate("window.talkmesh.delay.max") < 3 + 2, "never far beyond catchup"
    assert console.errors == [], console.errors
