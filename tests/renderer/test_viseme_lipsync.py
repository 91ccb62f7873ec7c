"""The default renderer, measured on its output video: the mouth opens with speech and rests in silence."""

from __future__ import annotations

import av
import numpy as np

from talkmesh.client import TalkmeshClient
from tests.mesh import inprocess_mesh

SENTENCE = "Papa, bring me the big blue map. ... Now open wide and say: ah, oh, ee!"
FPS = 25


def _decode(path):
    frames, audio, rate = [], [], 0
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.video[0]):
            frames.append(f.to_ndarray(format="bgr24"))
    with av.open(str(path)) as c:
        for a in c.decode(c.streams.audio[0]):
            audio.append(a.to_ndarray().astype(np.float32).reshape(-1))
            rate = a.sample_rate
    return frames, np.concatenate(audio), rate


def _energy(audio: np.ndarray, rate: int, n: int) -> np.ndarray:
    out = np.zeros(n)
    for i in range(n):
        seg = audio[i * rate // FPS : (i + 1) * rate // FPS]
        out[i] = np.sqrt(np.mean(seg**2)) if len(seg) else 0.0
    return out


async def test_mouth_opening_follows_speech_energy_and_closes_in_silence(tmp_path):
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        await client.speak_to_file(SENTENCE, tmp_path / "out.mp4")
        renderer = mesh.hosts["renderer"].service
        avatar = renderer.store.get("default")  # type: ignore[attr-defined]
    frames, audio, rate = _decode(tmp_path / "out.mp4")
    x1, y1, x2, y2 = (int(v) for v in avatar.mouth_boxes[0])
    h = y2 - y1
    box = (x1 - 2, y1 - 2, x2 + 2, y2 + h)  # the mouth and where the lower lip goes when it opens
    rest = avatar.frames[0][box[1] : box[3], box[0] : box[2]]

    def dark_area(img: np.ndarray) -> float:
        luma = img.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)
        return float((luma < 45).sum())

    baseline = dark_area(rest)
    mouth = np.array([dark_area(f[box[1] : box[3], box[0] : box[2]]) for f in frames]) - baseline
    energy = _energy(audio, rate, len(frames))
    assert len(frames) > 60
    lags = {}
    for lag in range(-2, 3):
        a = mouth[max(0, lag) : len(mouth) + min(0, lag)]
        b = energy[max(0, -lag) : len(energy) + min(0, -lag)]
        lags[lag] = float(np.corrcoef(a, b)[0, 1])
    best = max(lags, key=lambda k: lags[k])
    assert lags[best] >= 0.6, lags
    assert abs(best) <= 1, lags
    silent = energy < 10 ** (-50 / 20)  # decoded audio is float in [-1, 1]
    assert silent.sum() >= 5, "the sentence has pauses"
    closed = mouth[silent] <= 0.05 * max(1.0, mouth.max())
    assert closed.mean() >= 0.95, (closed.mean(), mouth[silent])
