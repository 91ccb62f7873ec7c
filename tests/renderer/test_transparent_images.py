"""Images with an alpha channel (a background-removal cutout, a PNG with transparency) are put on
the renderer's `avatars.background` colour, not on whatever colour their transparent pixels hide."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from services.renderer.avatars import AvatarStore, default_avatar_bytes
from services.renderer.avatars.decode import decode, has_alpha
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from talkmesh.common.config import ConfigError
from talkmesh.common.telemetry import Telemetry
from tests.media import portrait

PORTRAIT = default_avatar_bytes()


def _cutout(hidden: tuple[int, int, int], depth16: bool = False) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The portrait as a background-removal tool saves it: opaque inside an ellipse around the
    head, transparent outside (those pixels stored as ``hidden``, BGR), a soft one-pixel-wide edge
    at half alpha. Returns (PNG bytes, the BGR portrait, the alpha plane)."""
    img = portrait()
    h, w = img.shape[:2]
    alpha = np.zeros((h, w), np.uint8)
    cv2.ellipse(alpha, (w // 2, h // 2), (w // 3, h // 2 - 20), 0, 0, 360, 255, -1)
    edge = cv2.dilate(alpha, np.ones((3, 3), np.uint8)) - alpha
    alpha[edge > 0] = 128
    bgr = img.copy()
    bgr[alpha == 0] = hidden
    bgra = np.dstack([bgr, alpha])
    if depth16:
        bgra = bgra.astype(np.uint16) * 257
    ok, png = cv2.imencode(".png", bgra)
    assert ok
    return png.tobytes(), img, alpha


@pytest.mark.parametrize("hidden", [(0, 0, 0), (0, 255, 0)], ids=["black-cutout", "green-hidden"])
def test_transparent_pixels_show_the_background_not_what_they_hide(hidden):
    data, img, alpha = _cutout(hidden)
    assert has_alpha(data) and not has_alpha(PORTRAIT)
    frames = decode(data, "cutout.png", AvatarConfig()).frames
    assert frames.shape == (1, *img.shape)
    out = frames[0].astype(int)
    assert (out[alpha == 0] == 255).all(), "transparent pixels are white (the default background)"
    assert (out[alpha == 255] == img[alpha == 255]).all(), "opaque pixels are the photo's own"
    half = alpha == 128
    expected = (img[half].astype(int) * 128 + 255 * 127 + 127) // 255
    assert np.abs(out[half] - expected).max() <= 1, "a soft edge is blended with the background"


def test_the_background_colour_is_configurable_and_checked():
    data, img, alpha = _cutout((0, 0, 0))
    frames = decode(data, "cutout.png", AvatarConfig(background="#336699")).frames
    assert (frames[0][alpha == 0] == (0x99, 0x66, 0x33)).all()  # BGR
    sixteen, _, _ = _cutout((0, 255, 0), depth16=True)  # a 16-bit RGBA PNG: flattened to 8 bits too
    frames16 = decode(sixteen, "cutout.png", AvatarConfig()).frames
    assert frames16.dtype == np.uint8 and (frames16[0][alpha == 0] == 255).all()
    assert (frames16[0][alpha == 255] == img[alpha == 255]).all()
    for bad in ("white", "#fff", "#12345g", ""):
        with pytest.raises(ConfigError, match="background"):
            AvatarConfig(background=bad).validate()


def test_a_registered_cutout_is_animated_on_the_background(tmp_path: Path):
    """Registered through the store: the face is found on the cutout and the stored frames show
    the background; an opaque image keeps the id it always had (no cached avatar is orphaned)."""
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(tmp_path / "cache")))
    store = AvatarStore(cfg.avatars, {"viseme": VisemeBackend(cfg, Telemetry("renderer"))})
    data, _, alpha = _cutout((0, 0, 0))
    avatar, cached = store.register(data, "cutout.png", "cutout")
    assert not cached and avatar.report["frames_kept"] == 1
    assert (np.asarray(store._load(avatar.id).frames[0])[alpha == 0] == 255).all()
    # the id names the background too: the same cutout on another colour is another avatar
    other = AvatarStore(AvatarConfig(cache_dir=str(tmp_path / "other"), background="#000000"), {})
    assert other.content_id(data) != store.content_id(data)
    assert other.content_id(PORTRAIT) == store.content_id(PORTRAIT)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_a_transparent_picture_is_turned_as_its_exif_says_as_an_opaque_one_is(fmt, orientation):
    """A PNG or WebP with transparency and an EXIF orientation (a phone picture edited into a
    cutout) is turned as OpenCV turns the same picture without transparency: it was decoded as
    stored (sideways), its face_point and boxes in other pixels than the picture shown."""
    import io

    from PIL import Image

    img = cv2.resize(portrait(), (160, 96))  # (not square: a turn shows in the shape)
    img[:8, :8] = 255  # where it is transparent: the white background either way
    alpha = np.full(img.shape[:2], 255, np.uint8)
    alpha[:8, :8] = 0

    def saved(pixels: np.ndarray, mode: str) -> bytes:
        im = Image.fromarray(pixels, mode)
        exif = im.getexif()
        exif[0x0112] = orientation
        out = io.BytesIO()
        im.save(out, fmt, exif=exif, **({"lossless": True} if fmt == "WEBP" else {}))
        return out.getvalue()

    rgb = np.ascontiguousarray(img[..., ::-1])
    transparent, opaque = saved(np.dstack([rgb, alpha]), "RGBA"), saved(rgb, "RGB")
    assert has_alpha(transparent) and not has_alpha(opaque)
    shown = cv2.imdecode(np.frombuffer(opaque, np.uint8), cv2.IMREAD_COLOR)  # (OpenCV turns it)
    assert shown.shape[:2] == ((96, 160) if orientation <= 4 else (160, 96))
    frames = decode(transparent, f"cutout.{fmt.lower()}", AvatarConfig()).frames
    assert frames[0].shape == shown.shape, f"orientation {orientation}: {frames[0].shape}, shown {shown.shape}"
    assert (frames[0] == shown).all(), f"orientation {orientation}: not turned as the opaque picture is"
