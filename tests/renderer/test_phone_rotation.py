"""Phone uploads stored sideways: a portrait video recorded on a phone is stored landscape, with a
display matrix in its track header (``tkhd``) saying "turn it 90 degrees" (every portrait iPhone
or Android video), and a phone photo is stored landscape with an EXIF orientation. Registered with
automatic framing, a small face in such a picture must be framed in the picture as it is shown:
the avatar upright and portrait-shaped, the face where it is, ``framed_box`` and ``upload_box`` in
the shown picture's pixels, and a render through the mesh showing that part of the picture."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from services.encoder.boxes import iter_boxes
from services.renderer.avatars import AvatarStore
from services.renderer.avatars.analysis import FaceAnalyzer
from services.renderer.avatars.face_models import load_face_models
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from talkmesh.bench.face_cases import portrait
from talkmesh.bench.lipsync import decode as decode_video
from talkmesh.client import TalkmeshClient
from talkmesh.common.faces import CROP_ASPECT, SMALL_FACE_PX, face_width_in_video
from talkmesh.common.telemetry import Telemetry
from tests.mesh import inprocess_mesh

#: The portrait's face in its own 512x512 picture (x1, y1, x2, y2; found by the face models).
PORTRAIT_FACE = (179.0, 67.0, 273.0, 174.0)
#: Where the portrait is pasted in the shown picture of the phone video (720x1280 as shown)
VIDEO_AT = (150, 600)
#: and in the shown 3024x4032 phone photo, at twice its size.
PHOTO_AT = (500, 2200)

#: The track header's matrix (a, b, u, c, d, v, x, y, w; 16.16 and 2.30 fixed point) of a video a
#: player turns by 90 degrees clockwise (a portrait iPhone video) or 270 (held the other way up).
DISPLAY_MATRIX = {
    90: (0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000),
    270: (0, -0x10000, 0, 0x10000, 0, 0, 0, 0, 0x40000000),
}
#: How the camera stored a picture shown turned by the matrix (the matrix turns it back).
STORED = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 270: cv2.ROTATE_90_CLOCKWISE}
#: EXIF orientation 6 (turn 90 clockwise to show) and 8 (turn 270), as ``STORED``'s keys.
EXIF_ORIENTATION = {90: 6, 270: 8}


def _room(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(40, 220, (height // 80, width // 80, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def shown_video_picture() -> np.ndarray:
    """A phone video's picture as it is shown: 720x1280 portrait, the default portrait's face
    (about 95 px wide: 38 px in a default-size video, a small face) left of centre, low down."""
    scene = _room(720, 1280, 2)
    x, y = VIDEO_AT
    scene[y : y + 512, x : x + 512] = portrait()
    return scene


def shown_photo() -> np.ndarray:
    """A 12-Mpixel phone photo as it is shown: 3024x4032 portrait, the face about 190 px wide."""
    scene = _room(3024, 4032, 3)
    x, y = PHOTO_AT
    scene[y : y + 1024, x : x + 1024] = cv2.resize(portrait(), (1024, 1024), interpolation=cv2.INTER_CUBIC)
    return scene


def phone_video(shown: np.ndarray, rotate: int, frames: int = 6, iphone: bool = False) -> bytes:
    """An H.264 MP4 of ``frames`` frames of ``shown`` as a phone stores them: the frames turned
    sideways, the track header's matrix saying how to turn them back by ``rotate`` degrees.
    ``iphone``: as an iPhone's camera does by default, 10-bit HEVC in a QuickTime file."""
    stored = np.asarray(cv2.rotate(shown, STORED[rotate]), np.uint8)
    h, w = stored.shape[:2]
    buf = io.BytesIO()
    with av.open(buf, "w", format="mov" if iphone else "mp4") as out:
        stream = out.add_stream("libx265" if iphone else "libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p10le" if iphone else "yuv420p"
        if iphone:
            stream.options = {"x265-params": "log-level=error"}
        for _ in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format="bgr24")))
        out.mux(stream.encode())
    data = bytearray(buf.getvalue())
    moov = next((off, size, head) for kind, off, size, head in iter_boxes(data) if kind == b"moov")
    trak = next((off, size, head) for kind, off, size, head in iter_boxes(data, moov[0] + moov[2], moov[0] + moov[1])
                if kind == b"trak")  # fmt: skip
    tkhd = next(off + head for kind, off, _size, head in iter_boxes(data, trak[0] + trak[2], trak[0] + trak[1])
                if kind == b"tkhd")  # fmt: skip
    # version and flags, the times, id and duration (v0: 20 bytes, v1: 32), then reserved, layer,
    # alternate group, volume, reserved (16 bytes): the matrix
    matrix = tkhd + 4 + (32 if data[tkhd] == 1 else 20) + 16
    assert struct.unpack_from(">9i", data, matrix) == (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    struct.pack_into(">9i", data, matrix, *DISPLAY_MATRIX[rotate])
    return bytes(data)


def phone_jpeg(shown: np.ndarray, rotate: int) -> bytes:
    """A JPEG of ``shown`` as a phone stores it: sideways, with the EXIF orientation that turns it."""
    im = Image.fromarray(np.ascontiguousarray(cv2.rotate(shown, STORED[rotate])[..., ::-1]))
    exif = im.getexif()
    exif[0x0112] = EXIF_ORIENTATION[rotate]
    out = io.BytesIO()
    im.save(out, "JPEG", quality=92, exif=exif)
    return out.getvalue()


def _store(root: Path) -> AvatarStore:
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(root)))
    return AvatarStore(cfg.avatars, {"viseme": VisemeBackend(cfg, Telemetry("renderer"))})


def _inside(inner: list[float], outer: list[float], slack: float = 0.0) -> bool:
    return (
        inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
        and inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack
    )  # fmt: skip


def _expected_face(at: tuple[int, int], zoom: float) -> np.ndarray:
    """Where the portrait's face is in the shown picture it was pasted in at ``at``, ``zoom`` times."""
    return np.array(PORTRAIT_FACE) * zoom + np.array(at * 2)


def _check_framed(report: dict, size: tuple[int, int], shown: np.ndarray, face: np.ndarray) -> None:
    """The framed avatar's report: upright portrait, face found where it is, boxes in the shown
    picture's pixels."""
    w, h = size
    sh, sw = shown.shape[:2]
    assert h > w and h / w == pytest.approx(CROP_ASPECT, abs=0.02), f"not a portrait: {size}"
    framed, upload = report["framed_box"], report["upload_box"]
    assert _inside(framed, [0, 0, sw, sh], slack=0.5), f"framed_box {framed} outside the shown {sw}x{sh} picture"
    face_w = face[2] - face[0]
    np.testing.assert_allclose(upload, face, atol=0.1 * face_w, err_msg="the face is not found where it is")
    assert _inside(upload, framed), (upload, framed)
    # the box on the stored frames is the upload box moved to the crop and scaled to the frames
    scale = w / (framed[2] - framed[0])
    assert (framed[3] - framed[1]) * scale == pytest.approx(h, abs=3)
    np.testing.assert_allclose(
        report["box"], (np.array(upload) - np.array(framed[:2] * 2)) * scale, atol=2.0 + 0.02 * face_w * scale
    )
    assert face_width_in_video(report["box"][2] - report["box"][0], w, h) >= SMALL_FACE_PX


def _shown_part(shown: np.ndarray, framed: list[float], size: tuple[int, int]) -> np.ndarray:
    x1, y1, x2, y2 = (round(v) for v in framed)
    return cv2.resize(np.ascontiguousarray(shown[y1:y2, x1:x2]), size, interpolation=cv2.INTER_AREA)


def _difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel, how far apart two pictures of one size are, once both are blurred a little (the
    codec's noise and a resampling's half pixel; a crop 10 px off differs by 16 or more)."""
    blurred = [cv2.GaussianBlur(x.astype(np.float32), (0, 0), 2.0) for x in (a, b)]
    return np.asarray(np.abs(blurred[0] - blurred[1]).mean(axis=2))


def _upright(frame: np.ndarray) -> tuple[np.ndarray, bool]:
    """The face found on ``frame`` (x1, y1, x2, y2) and whether it is upright: both eyes above
    the mouth, the left eye (as seen) left of the right one."""
    track = FaceAnalyzer(load_face_models()).analyse(frame[None])
    assert track.landmarks is not None
    lm = track.landmarks[0]
    eyes_y = max(lm[33][1], lm[263][1])
    return np.asarray(track.boxes[0], np.float64), bool(eyes_y < lm[13][1] and lm[33][0] < lm[263][0])


@pytest.mark.parametrize("rotate", [90, 270])
@pytest.mark.parametrize("kind", ["video", "iphone-video", "photo"])
def test_a_sideways_stored_phone_upload_is_framed_in_the_picture_as_shown(tmp_path, kind, rotate):
    video = kind != "photo"
    shown = shown_video_picture() if video else shown_photo()
    data = phone_video(shown, rotate, iphone=kind == "iphone-video") if video else phone_jpeg(shown, rotate)
    filename = {"video": "VID_0001.mp4", "iphone-video": "IMG_0001.MOV", "photo": "IMG_0001.jpg"}[kind]
    if video:  # (the file is stored landscape: only its matrix makes it a portrait)
        with av.open(io.BytesIO(data), "r") as c:
            first = next(c.decode(video=0))
            assert (first.width, first.height) == (1280, 720) and abs(first.rotation) == 90, first
    store = _store(tmp_path)
    avatar, cached = store.register(data, filename)  # (the default framing: auto)
    assert not cached and avatar.id == store.content_id(data, framed=True), "a small face: framed"
    face = _expected_face(VIDEO_AT, 1.0) if video else _expected_face(PHOTO_AT, 2.0)
    _check_framed(avatar.report, avatar.size, shown, face)
    # the stored frames are that part of the picture as shown, upright
    assert avatar.frames.shape[0] == (6 if video else 1)
    part = _shown_part(shown, avatar.report["framed_box"], avatar.size)
    for frame in avatar.frames:  # (measured: 0.4-3.4)
        assert _difference(frame, part).mean() < 5, "the stored frame is not the shown crop"
    found, upright = _upright(np.ascontiguousarray(avatar.frames[0]))
    assert upright, "the stored face is not upright"
    np.testing.assert_allclose(found, avatar.report["box"], atol=3)
    # the whole picture, as-is: the shown picture's size and shape, the face in the same place
    whole, _ = store.register(data, filename, framing="as_is")
    sh, sw = shown.shape[:2]
    assert whole.size[1] > whole.size[0] and whole.size[0] / whole.size[1] == pytest.approx(sw / sh, abs=0.01)
    np.testing.assert_allclose(whole.report["upload_box"], avatar.report["upload_box"], atol=4)


@pytest.mark.timeout(600)
async def test_a_rotated_phone_video_registered_through_the_mesh_renders_upright_with_the_face_in_place(tmp_path):
    """Registered through the gateway and the renderer service (automatic framing), spoken and the
    output decoded: a portrait video showing the framed part of the picture, its face where the
    registration said."""
    shown = shown_video_picture()
    face = _expected_face(VIDEO_AT, 1.0)
    env = {"TALKMESH_RENDERER__VISEME__IDLE_MOTION": "false"}
    outputs = {}
    async with inprocess_mesh(tmp_path, env=env) as mesh, TalkmeshClient(mesh.gateway) as client:
        for rotate in (90, 270):
            path = tmp_path / f"phone-{rotate}.mp4"
            path.write_bytes(phone_video(shown, rotate))
            info = await client.register_avatar(path)  # (the default framing: auto)
            report = {
                "box": list(info.face.box), "upload_box": list(info.face.upload_box),
                "framed_box": list(info.face.framed_box),
            }  # fmt: skip
            _check_framed(report, (info.width, info.height), shown, face)
            out = tmp_path / f"out-{rotate}.mp4"
            await client.speak_to_file("Hello there.", out, avatar=info.id, size="native")
            outputs[rotate] = (info, report, out)
    for rotate, (info, report, out) in outputs.items():
        frames, _, _ = decode_video(out)
        oh, ow = frames[0].shape[:2]
        assert (ow, oh) == (info.width, info.height), f"{rotate}: output {ow}x{oh}, avatar {info.width}x{info.height}"
        first = frames[0]
        part = _shown_part(shown, report["framed_box"], (ow, oh))
        # the picture is the shown crop, whatever the mouth does
        mouth = np.zeros((oh, ow), bool)
        x1, y1, x2, y2 = (round(v) for v in report["box"])
        mouth[(y1 + y2) // 2 : y2 + (y2 - y1) // 4, x1:x2] = True
        # (measured: 3.5 and 4.4 through the encoder; a crop 10 px off: 16 or more)
        assert _difference(first, part)[~mouth].mean() < 7, f"{rotate}: not the shown crop"
        found, upright = _upright(first)
        assert upright, f"{rotate}: the rendered face is not upright"
        np.testing.assert_allclose(found, report["box"], atol=0.1 * (x2 - x1), err_msg=f"{rotate}: face moved")
