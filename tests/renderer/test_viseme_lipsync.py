"""The default renderer, measured on its output video: the mouth opens with speech and rests in silence.

The mouth opening is the area of dark pixels (the open mouth) in a box around the lips on the
decoded frames, beyond those of the photo itself.
"""

from __future__ import annotations

import numpy as np

from talkmesh.bench.lipsync import dark_area, decode, energy, lag_correlations, mouth_region
from talkmesh.client import TalkmeshClient
from tests.mesh import inprocess_mesh

SENTENCE = "Papa, bring me the big blue map. ... Now open wide and say: ah, oh, ee!"


async def test_mouth_opening_follows_speech_energy_and_closes_in_silence(tmp_path):
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        await client.speak_to_file(SENTENCE, tmp_path / "out.mp4")
        renderer = mesh.hosts["renderer"].service
        avatar = renderer.store.get("default")  # type: ignore[attr-defined]
    frames, audio, rate = decode(tmp_path / "out.mp4")
    assert len(frames) > 60
    rest = np.asarray(avatar.frames[0])
    assert avatar.landmarks is not None
    mouth = dark_area(frames, rest, mouth_region(avatar.landmarks[0], avatar.size))
    speech = energy(audio, rate, len(frames))
    lags = lag_correlations(mouth, speech)
    best = max(lags, key=lambda k: lags[k])
    assert lags[best] >= 0.75, lags
    assert abs(best) <= 1, lags
    silent = speech < 10 ** (-50 / 20)  # decoded audio is float in [-1, 1]
    assert silent.sum() >= 5, "the sentence has pauses"
    closed = mouth[silent] <= 0.05 * max(1.0, mouth.max())
    assert closed.mean() >= 0.95, (closed.mean(), mouth[silent])
    assert mouth.max() >= 50, "the mouth opens visibly"
