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
    cutout) is turned as the same picture without transparency: it was decoded as stored
    (sideways), its face_point and boxes in other pixels than the picture shown. Both as Pillow
    shows them, whatever OpenCV reads (4.10 does not turn a WebP, 4.14 does)."""
    import io

    from PIL import Image, ImageOps

    img = cv2.resize(portrait(), (160, 96))  # (not square: a turn shows in the shape)
    img[:8, :8] = 255  # where it is transparent: the white background either way
    alpha = np.full(img.shape[:2], 255, np.uint8)
    alpha[:8, :8] = 0

    rgb = np.ascontiguousarray(img[..., ::-1])
    transparent = _exif_saved(np.dstack([rgb, alpha]), "RGBA", fmt, orientation)
    opaque = _exif_saved(rgb, "RGB", fmt, orientation)
    assert has_alpha(transparent) and not has_alpha(opaque)
    shown = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(opaque))))[..., ::-1]  # (BGR)
    assert shown.shape[:2] == ((96, 160) if orientation <= 4 else (160, 96))
    for what, data in (("opaque", opaque), ("transparent", transparent)):
        frames = decode(data, f"cutout.{fmt.lower()}", AvatarConfig()).frames
        assert frames[0].shape == shown.shape, f"{what}, orientation {orientation}: {frames[0].shape}, {shown.shape}"
        assert (frames[0] == shown).all(), f"{what}, orientation {orientation}: not turned as it is shown"


def _exif_saved(pixels: np.ndarray, mode: str, fmt: str, orientation: int) -> bytes:
    """``pixels`` (RGB or RGBA) saved by Pillow as ``fmt`` with EXIF ``orientation``."""
    import io

    from PIL import Image

    im = Image.fromarray(pixels, mode)
    exif = im.getexif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    im.save(out, fmt, exif=exif, **({"lossless": True} if fmt == "WEBP" else {}))
    return out.getvalue()


def _png_chunks(data: bytes) -> list[bytes]:
    at, out = 8, []
    while at < len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        out.append(data[at : at + 12 + size])
        at += 12 + size
    return out


def _opaque_and_transparent(fmt: str, orientation: int) -> tuple[bytes, bytes]:
    img = cv2.resize(portrait(), (160, 96))
    img[:8, :8] = 255  # where it is transparent: the white background either way
    alpha = np.full(img.shape[:2], 255, np.uint8)
    alpha[:8, :8] = 0
    rgb = np.ascontiguousarray(img[..., ::-1])
    return _exif_saved(rgb, "RGB", fmt, orientation), _exif_saved(np.dstack([rgb, alpha]), "RGBA", fmt, orientation)


def _as_opencv_shows(opaque: bytes, transparent: bytes, filename: str) -> None:
    shown = cv2.imdecode(np.frombuffer(opaque, np.uint8), cv2.IMREAD_COLOR)
    assert has_alpha(transparent) and not has_alpha(opaque)
    frames = decode(transparent, filename, AvatarConfig()).frames
    assert frames[0].shape == shown.shape, f"{frames[0].shape}, the opaque picture shown {shown.shape}"
    assert (frames[0] == shown).all()


def test_a_png_whose_exif_follows_its_image_data_is_turned_as_opencv_turns_it():
    """A PNG may carry its eXIf chunk after IDAT (a tool that adds the EXIF to a saved file): OpenCV
    turns the opaque picture as it says, so the transparent one is turned too (the orientation was
    read only before IDAT: it stayed sideways)."""

    def exif_last(png: bytes) -> bytes:
        chunks = _png_chunks(png)
        exif = [c for c in chunks if c[4:8] == b"eXIf"]
        rest = [c for c in chunks if c[4:8] != b"eXIf"]
        assert len(exif) == 1 and rest[-1][4:8] == b"IEND"
        return png[:8] + b"".join(rest[:-1]) + exif[0] + rest[-1]

    opaque, transparent = (exif_last(d) for d in _opaque_and_transparent("PNG", 6))
    assert cv2.imdecode(np.frombuffer(opaque, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (160, 96)  # (turned)
    _as_opencv_shows(opaque, transparent, "cutout.png")


def test_a_webp_exif_chunk_its_header_does_not_announce_is_ignored_as_opencv_ignores_it():
    """A WebP's EXIF counts when its VP8X header says the file has one (the EXIF flag), as for
    OpenCV and libwebp's demuxer: a transparent WebP whose header does not say so stays as stored,
    like the opaque one (it was turned)."""

    def unannounced(webp: bytes) -> bytes:
        assert webp[12:16] == b"VP8X" and webp[20] & 0x08
        return webp[:20] + bytes([webp[20] & ~0x08]) + webp[21:]

    opaque, transparent = (unannounced(d) for d in _opaque_and_transparent("WEBP", 6))
    assert cv2.imdecode(np.frombuffer(opaque, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (96, 160)  # (as stored)
    _as_opencv_shows(opaque, transparent, "cutout.webp")


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_upload_of_countless_empty_chunks_is_not_walked_to_its_end(fmt):
    """The EXIF orientation is looked for among a bounded number of chunks: an upload of a few
    bytes of header and then millions of empty chunks (96 MiB: 8 million) took seconds of the
    renderer's CPU per read (its id, then its decode) before anything refused it."""
    import struct
    import time
    import zlib

    from services.renderer.avatars.decode import exif_orientation

    count = 8 * 1024 * 1024
    if fmt == "PNG":

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 6, 0, 0, 0))  # (RGBA)
        data = head + chunk(b"tEXt", b"") * count + chunk(b"IEND", b"")
    else:
        vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x18]) + bytes(9)  # (alpha, EXIF)
        data = b"RIFF" + struct.pack("<I", 4 + 18 + 8 * count) + b"WEBP" + vp8x + b"XXXX\0\0\0\0" * count
    assert has_alpha(data)
    started = time.process_time()
    assert exif_orientation(data) == 1
    assert time.process_time() - started < 0.5


def test_a_huge_exif_chunk_is_not_copied_whole():
    """The orientation is in the EXIF's first IFD, at its start: a PNG whose eXIf chunk is most of
    the upload (64 MiB) is read in its first 64 KiB (as much EXIF as a JPEG can carry), not
    copied whole outside the upload memory budget."""
    import struct
    import tracemalloc
    import zlib

    from services.renderer.avatars.decode import exif_orientation

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    tiff = b"MM\0*" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0)
    exif = tiff + bytes(64 * 1024 * 1024)
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 6, 0, 0, 0))
    data = head + chunk(b"eXIf", exif) + chunk(b"IEND", b"")
    tracemalloc.start()
    try:
        assert exif_orientation(data) == 6
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, f"{peak} bytes allocated to read a 64 MiB EXIF's orientation"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_an_exif_chunk_with_a_jpeg_s_exif_mark_is_not_read_as_opencv_does_not_read_it(fmt):
    """A PNG's eXIf and a WebP's EXIF hold the TIFF data itself; one that starts with JPEG's
    "Exif\\0\\0" mark instead is invalid to libpng and unread by OpenCV, which shows the opaque
    picture as stored: so is the transparent one, and so is the opaque one decoded here (it keeps
    the id it always had: its stored frames must not change)."""
    import struct
    import zlib

    def marked(data: bytes) -> bytes:
        if fmt == "PNG":
            chunks = _png_chunks(data)
            (exif,) = [c for c in chunks if c[4:8] == b"eXIf"]
            body = b"Exif\0\0" + exif[8:-4]
            new = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
            return data.replace(exif, new)
        at = data.index(b"EXIF")
        size = int.from_bytes(data[at + 4 : at + 8], "little")
        body = b"Exif\0\0" + data[at + 8 : at + 8 + size]
        pad = b"\0" if len(body) % 2 else b""
        out = data[:at] + b"EXIF" + struct.pack("<I", len(body)) + body + pad + data[at + 8 + size + size % 2 :]
        return out[:4] + struct.pack("<I", len(out) - 8) + out[8:]

    opaque, transparent = (marked(d) for d in _opaque_and_transparent(fmt, 6))
    shown = cv2.imdecode(np.frombuffer(opaque, np.uint8), cv2.IMREAD_COLOR)
    assert shown.shape[:2] == (96, 160)  # (as stored)
    for what, data in (("opaque", opaque), ("transparent", transparent)):
        frames = decode(data, f"cutout.{fmt.lower()}", AvatarConfig()).frames
        assert frames[0].shape == shown.shape and (frames[0] == shown).all(), what
