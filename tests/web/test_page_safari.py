"""The page on a browser that has ``ManagedMediaSource`` and no ``MediaSource`` (iPhone Safari,
iOS 17.1 and later), emulated in Chromium: the live session plays and speaks through it."""

from __future__ import annotations

from pathlib import Path

import pytest

from talkmesh.bench.web import wait_js
from tests.mesh import inprocess_mesh
from tests.web.browser import browser_page

pytestmark = pytest.mark.timeout(150)

#: Like iPhone Safari: no MediaSource; a ManagedMediaSource that never opens unless the video's
#: remote playback (AirPlay) is off when it is attached (Safari's rule, MDN "ManagedMediaSource").
IPHONE = """(() => {
  const Real = window.MediaSource;
  window.__made = 0;
  class ManagedMediaSource extends Real {
    constructor() { super(); window.__made += 1; }
  }
  delete window.MediaSource;
  window.ManagedMediaSource = ManagedMediaSource;
  const objectURL = URL.createObjectURL.bind(URL);
  URL.createObjectURL = (obj) => {
    const video = document.getElementById("avatar");
    if (obj instanceof ManagedMediaSource && !(video && video.disableRemotePlayback)) return "blob:never-opens";
    return objectURL(obj);
  };
})();"""


@pytest.mark.parametrize("audio", ["webaudio", "mse"])
async def test_the_live_page_plays_through_managed_media_source(tmp_path: Path, audio: str) -> None:
    async with inprocess_mesh(tmp_path, web=True) as mesh, browser_page() as (page, console):
        await page.add_init_script(IPHONE)
        await page.goto(f"{mesh.web_url}?audio={audio}")
        assert await page.evaluate("typeof window.MediaSource") == "undefined"
        await wait_js(page, "window.talkmesh.started && window.talkmesh.painted > 20", timeout=30)
        assert await page.evaluate("window.__made") >= 1
        assert await page.evaluate("document.getElementById('avatar').disableRemotePlayback")
        await page.fill("#text", "Hello from an iPhone.")
        await page.click("#speak")
        turn = await wait_js(
            page, "window.talkmesh.turns.t1 && window.talkmesh.turns.t1.stopFrame != null && window.talkmesh.turns.t1"
        )
        assert turn["reason"] == "STOP_REASON_COMPLETED"
        assert turn["firstPainted"] > 0, "the turn's speaking frames were painted"
        assert not console.errors, console.errors
