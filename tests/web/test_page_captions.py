"""The caption under the video follows the speech, in a real Chromium against an in-process mesh with
the web edge: a text turn's clauses are shown one after the other (each replacing the one before)
while the turn plays, each once the playhead has reached the frame its clause starts in; the
region is a polite live region (a screen reader says each cue once)."""

from __future__ import annotations

from pathlib import Path

import pytest

from talkmesh.bench.web import wait_js
from tests.mesh import inprocess_mesh
from tests.web.browser import browser_page

pytestmark = pytest.mark.timeout(150)

CLAUSES = ["Hello there!", "I am speaking to you live,", "right here in your browser."]

#: Every change of #caption's text, with the playhead and whether speech is on screen.
WATCH = """() => {
  const caption = document.getElementById('caption');
  const video = document.getElementById('avatar');
  window.captionLog = [];
  new MutationObserver(() => window.captionLog.push({
    text: caption.hidden ? '' : caption.textContent, t: video.currentTime,
    speaking: window.talkmesh.speakingVisible,
  })).observe(caption, {childList: true, characterData: true, subtree: true, attributes: true});
}"""


@pytest.mark.parametrize("query", ["", "?audio=mse"])  # the sound through Web Audio (the default), or in the <video>
async def test_the_caption_shows_each_clause_in_turn_while_it_is_spoken(tmp_path: Path, query: str) -> None:
    async with inprocess_mesh(tmp_path, web=True) as mesh, browser_page() as (page, console):
        await page.goto(mesh.web_url + query)
        await wait_js(page, "window.talkmesh.started && window.talkmesh.painted > 20")
        assert await page.get_attribute("#caption", "aria-live") == "polite"
        assert await page.get_attribute("#caption", "aria-atomic") == "true"
        await page.evaluate(WATCH)
        await page.fill("#text", " ".join(CLAUSES))
        await page.click("#speak")
        # clause 1 on screen, then clause 2 replaces it while the turn still plays
        await wait_js(page, f"document.getElementById('caption').textContent === {CLAUSES[0]!r}", timeout=20)
        await wait_js(page, f"document.getElementById('caption').textContent === {CLAUSES[1]!r}", timeout=10)
        assert await page.evaluate("window.talkmesh.turns.t1.stopFrame == null"), "clause 2 shows while the turn plays"
        await wait_js(page, "window.talkmesh.turns.t1.stopFrame != null", timeout=20)
        log = await page.evaluate("window.captionLog")
        cues = await page.evaluate(
            """() => window.talkmesh.events.filter((e) => e.ev.caption)
                 .map((e) => ({text: e.ev.caption.text, at: window.talkmesh.frameTime(e.ev.frame)}))"""
        )
    assert console.errors == [], console.errors
    assert [c["text"] for c in cues] == CLAUSES
    shown = [entry for entry in log if entry["text"]]
    texts = [entry["text"] for i, entry in enumerate(shown) if i == 0 or shown[i - 1]["text"] != entry["text"]]
    assert texts == CLAUSES, log  # one cue after the other, each replacing the one before, never the whole text
    for cue in cues:  # each shown with its frame: when the playhead had reached it (a frame's leeway)
        first = next(entry for entry in shown if entry["text"] == cue["text"])
        assert first["t"] >= cue["at"] - 0.045, (cue, first)
        assert first["speaking"] or cue is cues[0], (cue, first)
