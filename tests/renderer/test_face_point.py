"""AvatarMeta.face_point is in the uploaded picture's pixels, whatever size the avatar is stored at."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from services.renderer.avatars.analysis import FaceChoice
from services.renderer.avatars.store import AvatarStore
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from talkmesh.bench.face_cases import portrait
from talkmesh.common.errors import InvalidArgument
from talkmesh.common.telemetry import Telemetry

#: two faces side by side (the second smaller), scaled up like a phone photo: 2688x1536, stored at
#: the 1280 pixels of avatars.max_side
SCALE = 3


def _two_faces() -> bytes:
    img = portrait()
    small = cv2.resize(img, (384, 384), interpolation=cv2.INTER_AREA)
    twice = np.concatenate([img, cv2.copyMakeBorder(small, 64, 64, 0, 0, cv2.BORDER_REPLICATE)], axis=1)
    big = cv2.resize(twice, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def _store(root: Path) -> AvatarStore:
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(root)))
    return AvatarStore(cfg.avatars, {"viseme": VisemeBackend(cfg, Telemetry("renderer"))})


def test_a_point_on_the_uploaded_photo_picks_its_face_on_the_stored_frames(tmp_path):
    store = _store(tmp_path)
    data = _two_faces()
    # the second face's middle, in the upload's pixels (the portrait's face is about (226, 122),
    # the second copy is it at 0.75 moved by (512, 64))
    second = (SCALE * (512 + 0.75 * 226), SCALE * (64 + 0.75 * 122))
    avatar, _ = store.register(data, "two.jpg", choice=FaceChoice(point=second), framing="as_is")
    h, w = avatar.frames.shape[1:3]
    assert max(h, w) == 1280, "stored scaled down"
    x1, _, x2, _ = avatar.face_boxes[0]
    assert (x1 + x2) / 2 > w * 512 / 896, f"the second face (right), not the first: {avatar.face_boxes[0]}"
    # a point on the background of the upload is refused, with the faces in the upload's pixels
    with pytest.raises(InvalidArgument, match=r"no face at \(2600, 100\); 2 face\(s\) found at \[\d+") as err:
        store.register(data, "two.jpg", choice=FaceChoice(point=(2600, 100)))
    boxes = [[int(v) for v in b.split(",")] for b in str(err.value).split("found at [")[1].rstrip("]").split("], [")]
    assert max(b[2] for b in boxes) > 2000, f"boxes in the upload's pixels: {boxes}"


def test_avatars_made_when_the_point_was_read_on_the_stored_frames_are_made_again(tmp_path):
    """The content id of an upload with a face_point changed with the point's meaning (it was read
    on the stored frames): an avatar cached before is not reused for the new meaning."""
    store = _store(tmp_path)
    data = _two_faces()
    point = FaceChoice(point=(100.0, 100.0))
    assert '"point_in": "upload"' in store.settings_key(point)
    assert "point_in" not in store.settings_key(FaceChoice(index=1)) and "point_in" not in store.settings_key()
    assert store.content_id(data, point) != store.content_id(data, FaceChoice(index=1))


def test_the_face_box_is_reported_in_the_pixels_face_point_takes(tmp_path):
    """`avatar add` printed the box on the stored copy (`face 37x38 px at (478, 600)` on a photo
    scaled down to 1280) while --face-point takes the picture's pixels (a new user's trial): the
    report has the box in the upload's pixels too, and a point inside it picks that face."""
    store = _store(tmp_path)
    data = _two_faces()
    avatar, _ = store.register(data, "two.jpg", choice=FaceChoice(index=1), framing="as_is")
    stored, shown = np.array(avatar.report["box"]), np.array(avatar.report["upload_box"])
    scale = 1280 / (896 * SCALE)  # stored pixels per pixel of the 2688x1536 upload
    np.testing.assert_allclose(shown, stored / scale, atol=0.2)
    middle = ((shown[0] + shown[2]) / 2, (shown[1] + shown[3]) / 2)
    assert middle[0] > 512 * SCALE, f"the second face, in the upload's pixels: {shown}"
    picked, _ = store.register(data, "two.jpg", choice=FaceChoice(point=middle), framing="as_is")
    np.testing.assert_allclose(picked.report["upload_box"], shown, atol=0.2)
