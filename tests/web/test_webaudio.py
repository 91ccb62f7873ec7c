"""The page's sound path (the default, `/?audio=webaudio`, docs/WEB.md) in a real browser: the
<video> plays a video-only stream, the AAC audio is decoded with WebCodecs and played in an
AudioContext on the picture's clock, in lip sync with the picture; interrupt still returns to idle."""

from __future__ import annotations

from pathlib import Path

import pytest

from talkmesh.bench.web import wait_js
from tests.mesh import inprocess_mesh
from tests.web.browser import browser_page

pytestmark = pytest.mark.timeout(150)

SENTENCE = "Hello there! I am speaking to you live, right here in your browser."
LONG = "This is a much longer answer, which keeps going for quite a while so that it can be interrupted. " * 3
#: lip sync bound (ms): a frame's sound against the frame, and the turn's first sound against its
#: first frame on the media timeline (one AAC frame is 21-64 ms)
SYNC_MS = 40


async def test_webaudio_plays_the_sound_in_sync_with_the_picture(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path, web=True) as mesh, browser_page() as (page, console):
        await page.goto(mesh.web_url)  # the default page
        await wait_js(page, "window.talkmesh.started && window.talkmesh.painted > 20")
        assert await page.evaluate("window.talkmesh.audio !== null"), "the webaudio path is on"
        await page.fill("#text", SENTENCE)
        await page.click("#speak")
        turn = await wait_js(
            page,
            "window.talkmesh.turns.t1 && window.talkmesh.turns.t1.stopFrame != null"
            " && !window.talkmesh.speakingVisible && window.talkmesh.turns.t1",
        )
        assert turn["reason"] == "STOP_REASON_COMPLETED"
        media = await page.evaluate(
            """() => { const v = document.getElementById('avatar');
               return {ranges: v.buffered.length, videoAudio: v.webkitAudioDecodedByteCount,
                       audio: window.talkmesh.audio, onset: window.talkmesh.audioOnset('t1')}; }"""
        )
        assert media["ranges"] == 1
        assert media["videoAudio"] == 0, "the <video> gets no audio track"
        audio = media["audio"]
        assert not audio["errors"], audio["errors"]
        assert audio["decoded"] > 50 and audio["scheduled"] > 50, audio
        # Hardly any of the sentence's sound came too late to be played (each fragment carries
        # its frame's whole sound and the picture waits for it; under load a dropped video frame
        # can still make the sound skip to the picture): at most 4 AAC frames (~85 ms) of a ~4 s
        # sentence, 2 % (10 before the encoder sent the sound ahead of the picture; 3 seen under
        # the two-worker suite on two cores; `talkmesh bench web` on a quiet machine: 0).
        assert audio["lateSound"] <= 4, audio
        # The sound of the first speaking frame is heard when the frame is shown ...
        assert abs(turn["avSync"]) <= SYNC_MS, f"sound {turn['avSync']:.0f} ms after the picture"
        # ... and the turn's sound starts with its first speaking frame on the media timeline.
        assert media["onset"] is not None, "the turn has sound"
        assert abs(1000 * media["onset"]) <= SYNC_MS, f"sound starts {1000 * media['onset']:.0f} ms after the frame"

        # -- interrupt: back to idle, the sound of the cut speech is not played ---------------
        await page.fill("#text", LONG)
        await page.click("#speak")
        await wait_js(page, "window.talkmesh.turns.t2 && window.talkmesh.turns.t2.firstPainted")
        await page.wait_for_timeout(800)
        await page.click("#interrupt")
        cut = await wait_js(
            page,
            "window.talkmesh.interrupts[0] && window.talkmesh.interrupts[0].toIdle && window.talkmesh.interrupts[0]",
        )
        assert cut["toIdle"] < 500
        await page.wait_for_timeout(300)
        # the sound sent ahead of the picture past the cut (up to an AAC frame, and its last
        # packet's MDCT tail) is muted: nothing of the speech is heard from the cut on
        heard = await page.evaluate(
            "window.talkmesh.audioScheduledAfter(window.talkmesh.frameTime(window.talkmesh.interrupts[0].cutFrame))"
        )
        assert heard == 0, "no speech is scheduled after the cut"
        assert console.errors == []
