"""Uploads cannot exhaust the renderer (issue 19, defects 2 and 3).

The format is sniffed from the bytes and must be on the allow-list before any decoder runs;
image sizes are checked on the header; videos are decoded frame by frame within a byte budget.
The slow test measures the peak RSS of a renderer process for the worst legal video upload.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from services.renderer.avatars import decode as decode_mod
from services.renderer.avatars import default_avatar_bytes
from services.renderer.avatars.decode import (
    decode,
    jpeg_held_whole,
    jpeg_reduction,
    reduced_limit,
    sniff,
    video_frame_size,
)
from services.renderer.config import AvatarConfig
from talkmesh.common.errors import InvalidArgument
from tests.media import drifting_clip

PORTRAIT = default_avatar_bytes()


def _tiff_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A little-endian TIFF header declaring a huge uncompressed RGB image (a few bytes of data)."""
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 2),  # RGB
        (273, 4, 1, 8),  # StripOffsets
        (277, 3, 1, 3),  # SamplesPerPixel
        (279, 4, 1, width * height * 3),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\0" + struct.pack("<I", 8 + 0) + ifd + b"\0" * 65000


@pytest.fixture
def no_decoder(monkeypatch):
    """Fails the test if any OpenCV decoder is reached."""

    def boom(*_a, **_k):
        raise AssertionError("a decoder ran on bytes that should have been refused")

    monkeypatch.setattr(decode_mod.cv2, "imdecode", boom)
    monkeypatch.setattr(decode_mod.cv2, "VideoCapture", boom)


@pytest.mark.parametrize(
    ("payload", "filename"),
    [
        (_tiff_bomb(), "bomb.png"),
        (_tiff_bomb(), "bomb.mp4"),
        (_tiff_bomb(), ""),
        (b"GIF89a" + b"\0" * 100, "anim.jpg"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "face.webp"),
        (b"\0\0\0\0" * 64, "face.bmp"),
        (b"BM" + b"\0" * 64, "face.bmp"),  # "BM" but no BMP header
    ],
    ids=["tiff-as-png", "tiff-as-mp4", "tiff-unnamed", "gif-as-jpg", "svg-as-webp", "zeros", "bm-only"],
)
def test_formats_off_the_allow_list_are_refused_without_decoding(no_decoder, payload, filename):
    t0 = time.process_time()
    with pytest.raises(InvalidArgument) as err:
        decode(payload, filename, AvatarConfig())
    assert err.value.field == "data"
    assert "none of png, jpeg, webp, bmp, mp4" in err.value.reason
    assert time.process_time() - t0 < 0.1


def test_sniff_names_every_allowed_format():
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    jpg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    webp = cv2.imencode(".webp", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    bmp = cv2.imencode(".bmp", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    assert [sniff(b) for b in (png, jpg, webp, bmp)] == ["png", "jpeg", "webp", "bmp"]
    assert sniff(b"\0\0\0\x18ftypisom" + b"\0" * 16) == "mp4"
    assert sniff(b"\0\0\0\x14ftypqt  " + b"\0" * 16) == "mov"
    assert sniff(b"\x1a\x45\xdf\xa3" + b"\0" * 20 + b"webm") == "webm"
    assert sniff(b"\x1a\x45\xdf\xa3" + b"\0" * 20 + b"matroska") == "mkv"
    assert sniff(b"RIFF\0\0\0\0AVI LIST") == "avi"
    assert sniff(_tiff_bomb()) == ""


def test_a_png_header_declaring_a_bomb_is_refused_before_decoding(no_decoder):
    png = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    png[16:24] = (30000).to_bytes(4, "big") * 2
    with pytest.raises(InvalidArgument, match="30000x30000: larger than the limit"):
        decode(bytes(png), "x.png", AvatarConfig())


def _phone_jpeg(w: int, h: int, orientation: int = 0, progressive: bool = False) -> bytes:
    """A w x h JPEG like a phone's (a bright band along its top edge as stored; EXIF orientation)."""
    import io

    from PIL import Image

    small = np.full((h // 8, w // 8, 3), 90, np.uint8)
    small[: h // 80] = 250
    im = Image.fromarray(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST))
    exif = im.getexif()
    if orientation:
        exif[0x0112] = orientation
    out = io.BytesIO()
    im.save(out, "JPEG", quality=80, exif=exif, progressive=progressive)
    return out.getvalue()


@pytest.mark.parametrize(("w", "h"), [(4284, 5712), (6048, 8064), (4032, 3024)])  # 24, 48 and 12 Mpixel
@pytest.mark.parametrize("max_pixels", [1280 * 720, 1920 * 1080, 4096 * 4096])
def test_a_phone_photo_is_decoded_scaled_down_by_libjpeg_and_stored_at_max_side(w, h, max_pixels):
    cfg = AvatarConfig(max_pixels=max_pixels)
    frames = decode(_phone_jpeg(w, h), "phone.jpg", cfg).frames
    assert frames.shape[0] == 1 and max(frames.shape[1:3]) == cfg.max_side, frames.shape
    assert abs(frames.shape[2] / frames.shape[1] - w / h) < 0.01


def test_the_largest_factor_that_keeps_max_side_is_taken():
    cfg = AvatarConfig()
    assert [jpeg_reduction(w, w, cfg) for w in (1000, 1280, 2558, 2559, 5118, 10240, 20480, 60000)] == [
        1, 1, 1, 2, 4, 8, 8, 8
    ]
    assert reduced_limit(cfg) == max(cfg.max_pixels, 4 * cfg.max_side**2)


def test_a_progressive_jpeg_is_held_to_max_pixels_at_its_full_size():
    """libjpeg holds a progressive JPEG's coefficients whole (2 bytes a sample) however small it
    decodes it: a small file could make it hold gigabytes."""
    cfg = AvatarConfig(max_pixels=1280 * 720)
    progressive = _phone_jpeg(4032, 3024, progressive=True)
    assert jpeg_held_whole(progressive) and not jpeg_held_whole(_phone_jpeg(4032, 3024))
    with pytest.raises(InvalidArgument, match=r"4032x3024: larger than the limit of 921600 .* progressive JPEG"):
        decode(progressive, "p.jpg", cfg)
    frames = decode(_phone_jpeg(1200, 700, progressive=True), "p.jpg", cfg).frames
    assert frames.shape[1:3] == (700, 1200)


def test_what_follows_a_baseline_jpeg_does_not_make_it_held_whole():
    """An Ultra HDR gain map or a motion photo's video after the image's end (recent phones)."""
    photo = _phone_jpeg(4000, 3000) + _phone_jpeg(1000, 750) + _phone_jpeg(64, 64, progressive=True)
    assert not jpeg_held_whole(photo)
    frames = decode(photo, "ultrahdr.jpg", AvatarConfig(max_pixels=1920 * 1080)).frames
    assert max(frames.shape[1:3]) == 1280
    # a first scan of fewer components than the image (several scans): held whole
    grey_scan = bytearray(_phone_jpeg(64, 64))
    sos = grey_scan.index(b"\xff\xda")
    grey_scan[sos + 4] = 1
    assert jpeg_held_whole(bytes(grey_scan))


def test_a_reduced_phone_photo_is_turned_as_its_exif_says():
    frames = decode(_phone_jpeg(4032, 3024, orientation=6), "phone.jpg", AvatarConfig(max_pixels=1280 * 720)).frames
    h, w = frames.shape[1:3]
    assert h > w, "landscape as stored, portrait as shown"
    assert frames[0, :, -10:].mean() > 200 and frames[0, :, :10].mean() < 120  # the top band went right


def test_only_jpegs_are_decoded_scaled_down():
    png = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    png[16:24] = (4000).to_bytes(4, "big") + (3000).to_bytes(4, "big")
    with pytest.raises(InvalidArgument, match=r"4000x3000: larger than .*avatars\.max_pixels; a baseline JPEG may"):
        decode(bytes(png), "x.png", AvatarConfig(max_pixels=1280 * 720))
    # a JPEG too large even at 1/8 is refused on its header
    jpeg = bytearray(_phone_jpeg(64, 64))
    sof = jpeg.index(b"\xff\xc0")
    jpeg[sof + 5 : sof + 9] = (60000).to_bytes(2, "big") * 2
    with pytest.raises(InvalidArgument, match="60000x60000: larger than the limit"):
        decode(bytes(jpeg), "x.jpg", AvatarConfig(max_pixels=1280 * 720))


def test_opencv_pixel_limit_is_set_as_a_backstop():
    assert int(os.environ["CV_IO_MAX_IMAGE_PIXELS"]) <= AvatarConfig().max_pixels


def test_video_frames_are_sized_to_the_budget():
    cfg = AvatarConfig()
    w, h = video_frame_size(1280, 720, cfg.max_frames, cfg)
    assert cfg.max_frames * w * h * 3 <= cfg.max_video_bytes
    assert w % 2 == 0 and h % 2 == 0 and abs(w / h - 16 / 9) < 0.05
    assert video_frame_size(640, 360, 25, cfg) == (640, 360)  # a short small video keeps its size
    assert max(video_frame_size(3840, 2160, 10, cfg)) <= cfg.max_side


def _video(path: Path, frames: int, size: tuple[int, int]) -> bytes:
    return drifting_clip(path, frames, size).read_bytes()


def test_a_long_720p_video_decodes_within_the_budget(tmp_path):
    cfg = AvatarConfig(max_video_bytes=16 * 1024 * 1024, max_frames=120)
    frames = decode(_video(tmp_path / "v.mp4", 100, (1280, 720)), "v.mp4", cfg).frames
    assert frames.shape[0] == 100
    assert frames.nbytes <= cfg.max_video_bytes
    with pytest.raises(InvalidArgument, match="more than 50"):
        decode((tmp_path / "v.mp4").read_bytes(), "v.mp4", AvatarConfig(max_frames=50))


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.slow
async def test_worst_legal_video_upload_raises_renderer_peak_rss_by_at_most_512_mib(tmp_path):
    """A renderer process; a 750-frame 720p video (the documented maximum frame count) uploaded
    over gRPC; the peak RSS (VmHWM) before and after."""
    from talkmesh.client import TalkmeshClient
    from talkmesh.launcher import Mesh

    video = tmp_path / "long.mp4"
    _video(video, AvatarConfig().max_frames, (1280, 720))
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "avatars")}
    async with Mesh(env=env, log_dir=tmp_path / "logs") as mesh:
        pid = mesh.processes["renderer"].proc.pid
        await asyncio.sleep(1.0)
        before = _vm_hwm_kib(pid)
        async with TalkmeshClient(mesh.gateway) as client:
            try:
                info = await client.register_avatar(video)
            except grpc.aio.AioRpcError as exc:  # a refusal is fine too; the bound is what matters
                info = None
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc
        after = _vm_hwm_kib(pid)
    grew_mib = (after - before) / 1024
    print(
        f"\nrenderer peak RSS {before / 1024:.0f} -> {after / 1024:.0f} MiB (+{grew_mib:.0f} MiB) "
        f"for a {video.stat().st_size / 1024:.0f} KiB 750-frame 1280x720 upload; "
        f"stored {info.width}x{info.height}x{info.frame_count}"
        if info
        else "refused",
        file=sys.stderr,
    )
    assert grew_mib <= 512
