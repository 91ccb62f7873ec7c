"""Speak's fragmented MP4 (fragments written by hand, services/encoder/fmp4.py) plays in Chromium
through Media Source Extensions: one buffered range, as long as the frames, audio decoded, played to
its end; with AAC and with Opus."""

from __future__ import annotations

import base64
import math
from fractions import Fraction

import numpy as np
import pytest

from services.encoder.backends import X264Backend
from services.encoder.config import AudioConfig, VideoConfig
from services.encoder.session import EncodeSession, StreamParams
from tests.web.browser import browser_page

pytestmark = pytest.mark.timeout(120)

W, H, SR, FPS, FRAMES = 128, 96, 24000, 25, 40

#: Appends the whole file to a SourceBuffer, plays it muted, reports what Chromium made of it.
PLAY = """async ([b64, mime]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  if (!MediaSource.isTypeSupported(mime)) return { err: "unsupported " + mime };
  const v = document.createElement("video");
  v.muted = true;
  document.body.appendChild(v);
  const ms = new MediaSource();
  v.src = URL.createObjectURL(ms);
  await new Promise((r) => ms.addEventListener("sourceopen", r, { once: true }));
  const sb = ms.addSourceBuffer(mime);
  const errors = [];
  sb.addEventListener("error", () => errors.push("SourceBuffer error"));
  sb.appendBuffer(bytes);
  await new Promise((r) => sb.addEventListener("updateend", r, { once: true }));
  ms.endOfStream();
  const ranges = [];
  for (let i = 0; i < v.buffered.length; i++) ranges.push([v.buffered.start(i), v.buffered.end(i)]);
  await v.play();
  await new Promise((r) => v.addEventListener("ended", r, { once: true }));
  return { ranges, t: v.currentTime, audio: v.webkitAudioDecodedByteCount, video: v.webkitVideoDecodedByteCount,
           errors, err: v.error && v.error.message };
}"""


def _speak_fmp4(audio_codec: str) -> tuple[bytes, str]:
    params = StreamParams(W, H, Fraction(FPS), "i420", SR, "fmp4", audio_codec, 40)
    session = EncodeSession(params, X264Backend(VideoConfig()), AudioConfig())
    out = session.open()
    spf = SR // FPS
    t = np.arange(FRAMES * spf) / SR
    pcm = (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2").tobytes()
    for i in range(FRAMES):
        luma = np.full(W * H, 40 + 4 * i, np.uint8).tobytes()
        chroma = np.full(W * H // 2, 128, np.uint8).tobytes()
        out += session.add_audio_then_frame(pcm[2 * i * spf : 2 * (i + 1) * spf], luma + chroma)
    out += session.finish()
    session.close()
    return out, session.mime_type


@pytest.mark.parametrize("audio_codec", ["aac", "opus"])
async def test_speak_fmp4_plays_through_mse_in_chromium(audio_codec: str) -> None:
    data, mime = _speak_fmp4(audio_codec)
    async with browser_page() as (page, console):
        await page.set_content("<!doctype html><html><body></body></html>")
        got = await page.evaluate(PLAY, [base64.b64encode(data).decode(), mime])
    assert "err" not in got or got["err"] is None, got
    assert got["errors"] == [] and console.errors == []
    seconds = FRAMES / FPS
    (start, end), *rest = got["ranges"]
    assert rest == [] and start == pytest.approx(0, abs=1e-3)
    assert end == pytest.approx(seconds, abs=0.045)  # both tracks end within a frame
    assert math.isclose(got["t"], end, abs_tol=1e-3)  # played to its end
    assert got["audio"] > 0 and got["video"] > 0
