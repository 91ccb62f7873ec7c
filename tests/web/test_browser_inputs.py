"""The page's other inputs in a real Chromium: an avatar dropped on the drop zone (drag and drop
events carrying a file built in the page) and the microphone (Chromium's fake capture device
playing a sentence the mesh's own TTS spoke) as an audio turn whose speech moves the mouth."""

from __future__ import annotations

import asyncio
import base64
import wave
from pathlib import Path

import grpc
import numpy as np
import pytest

from talkmesh.bench.web import wait_js
from talkmesh.v1 import tts_pb2, tts_pb2_grpc
from tests.live_helpers import mouth_openness
from tests.mesh import inprocess_mesh
from tests.web.browser import VIEWPORT, Grab, browser_page, grab
from tests.web.test_api import portrait

pytestmark = pytest.mark.timeout(180)

#: JS: drags a file made from base64 bytes onto the drop zone, as a user's drag and drop does.
DROP = """([b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type }));
  const zone = document.getElementById('drop');
  const results = {};
  for (const kind of ['dragenter', 'dragover', 'drop']) {
    const ev = new DragEvent(kind, { bubbles: true, cancelable: true, dataTransfer: dt });
    zone.dispatchEvent(ev);
    results[kind] = ev.defaultPrevented;  // the zone accepted it
  }
  return results;
}"""


async def _speech_wav(address: str, path: Path) -> float:
    """A sentence from the mesh's TTS, as a mono 16-bit WAV (Chromium's fake microphone plays it)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tts_pb2_grpc.TTSStub(channel)
        request = tts_pb2.SynthesizeRequest(text="Hello, can you hear me? I am talking into the microphone.")
        chunks = [c async for c in stub.Synthesize(request)]
    rate = next(c.sample_rate for c in chunks if c.sample_rate)
    pcm = b"".join(c.pcm for c in chunks)
    silence = b"\x00\x00" * (rate // 2)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(silence + pcm + silence)
    return len(pcm) / 2 / rate


async def test_drag_and_drop_uploads_an_avatar_and_the_microphone_speaks(tmp_path: Path) -> None:
    async with inprocess_mesh(tmp_path, web=True) as mesh:
        wav = tmp_path / "speech.wav"
        seconds = await _speech_wav(mesh.hosts["tts"].address, wav)
        assert seconds > 1.5
        async with browser_page((f"--use-file-for-fake-audio-capture={wav}",), viewport=VIEWPORT) as (page, console):
            await page.goto(mesh.web_url)
            await wait_js(page, "window.talkmesh.started && window.talkmesh.painted > 20")
            assert await page.inner_text("#mic") == "Start microphone"

            # -- drag and drop an avatar: progress shown, the avatar picked, the session on it --------
            png = portrait()
            accepted = await page.evaluate(DROP, [base64.b64encode(png).decode(), "mirror.png", "image/png"])
            assert accepted == {"dragenter": True, "dragover": True, "drop": True}, accepted
            upload = await wait_js(
                page,
                "window.talkmesh.uploads[0] && window.talkmesh.uploads[0].ok != null && window.talkmesh.uploads[0]",
                timeout=60,
            )
            assert upload["ok"], await page.inner_text("#upload-status")
            assert upload["size"] == len(png) and upload["progress"] and upload["progress"][-1] == 100
            assert await page.locator("#upload-progress").is_visible()
            assert await page.eval_on_selector("#upload-progress", "p => p.value") == 100
            assert "is ready" in await page.inner_text("#upload-status")
            avatar_id = upload["ok"]
            # the pickers are refilled from /v1/avatars after the upload's answer (a fetch: wait for it)
            await wait_js(page, f"document.getElementById('avatar-select').value === '{avatar_id}'", timeout=30)
            assert await page.locator(f"#avatar-select option[value='{avatar_id}']").count() == 1
            # the page reconnects on the new avatar
            await wait_js(
                page,
                f"window.talkmesh.started && window.talkmesh.started.avatar_id === '{avatar_id}'"
                " && window.talkmesh.painted > 60",
                timeout=60,
            )

            # -- the microphone: an audio turn that reaches the server and moves the mouth ----------
            rest = [await grab(page) for _ in range(4)]
            assert not any(g.speaking for g in rest)
            await page.click("#mic")
            await wait_js(page, "document.getElementById('mic').textContent === 'Stop microphone'")
            turn = await wait_js(page, "window.talkmesh.mics[0] && window.talkmesh.mics[0].turnId")
            await wait_js(page, f"window.talkmesh.turns['{turn}'].startFrame != null", timeout=30)
            speaking: list[Grab] = []
            end = asyncio.get_running_loop().time() + seconds + 1.5
            while asyncio.get_running_loop().time() < end:
                g = await grab(page)
                if g.speaking:
                    speaking.append(g)
                await asyncio.sleep(0.06)
            await page.click("#mic")
            assert await page.inner_text("#mic") == "Start microphone"
            mic = await page.evaluate("window.talkmesh.mics[0]")
            assert mic["samples"] > 16000 * seconds * 0.8 and mic["peak"] > 0.05, mic
            stopped = await wait_js(
                page,
                f"window.talkmesh.turns['{turn}'].stopFrame != null && window.talkmesh.turns['{turn}']",
                timeout=30,
            )
            assert stopped["reason"] == "STOP_REASON_COMPLETED", stopped
            # a grab costs 60 ms to a few hundred (a JPEG through the page) on the loaded machine
            assert len(speaking) >= 6, len(speaking)
            gaps = mouth_openness([g.frame for g in rest + speaking])
            resting, moving = gaps[: len(rest)], gaps[len(rest) :]
            assert moving.max() > resting.max() + 0.05, (moving.round(3), resting.round(3))
            assert np.percentile(moving, 80) > np.median(resting) + 0.03
    assert console.errors == [], console.errors
