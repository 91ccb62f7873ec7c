"""Decoding an uploaded avatar: a photo (PNG, JPEG, WebP, BMP) or a short video, to BGR frames.

Image sizes are checked on the header before decoding (a small file can declare a huge image).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from services.renderer.config import AvatarConfig
from talkmesh.common.errors import InvalidArgument

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
VIDEO_EXTS = {".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"}


def decode(data: bytes, filename: str, cfg: AvatarConfig) -> np.ndarray:
    """[N, H, W, 3] uint8 BGR frames, or InvalidArgument with the reason."""
    ext = Path(filename).suffix.lower()
    if not data:
        raise InvalidArgument("data", "the upload is empty")
    if ext in IMAGE_EXTS or (not ext and data[:4] in (b"\x89PNG", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xe1")):
        arr = np.frombuffer(data, np.uint8)
        dims = image_dimensions(data)
        if dims is None:  # a format whose header we do not parse: measure a 1/8 scale decode
            header = cv2.imdecode(arr, cv2.IMREAD_REDUCED_COLOR_8)
            if header is None:
                raise InvalidArgument("data", f"{filename or 'upload'} is not a decodable image (corrupt or truncated)")
            dims = (header.shape[1] * 8, header.shape[0] * 8)
        if dims[0] * dims[1] > cfg.max_pixels:
            # checked on the header, before decoding: a small file can declare a huge image
            raise InvalidArgument(
                "data", f"image is {dims[0]}x{dims[1]}: larger than the limit of {cfg.max_pixels} pixels"
            )
        if data[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-4096:]:
            # some libjpeg builds decode a truncated file with a grey bottom and only a warning
            raise InvalidArgument("data", f"{filename or 'upload'} is not a decodable image (truncated JPEG)")
        img = cv2.imdecode(arr, cv2.IMREAD_COLOR)
        if img is None:
            raise InvalidArgument("data", f"{filename or 'upload'} is not a decodable image (corrupt or truncated)")
        if img.shape[0] * img.shape[1] > cfg.max_pixels:
            raise InvalidArgument("data", f"image has {img.shape[1]}x{img.shape[0]} pixels, over {cfg.max_pixels}")
        return _even(img)[None]
    if ext in VIDEO_EXTS:
        return _decode_video(data, ext, cfg)
    raise InvalidArgument(
        "meta.filename",
        f"unsupported file type {ext or '(none)'}; images: "
        f"{', '.join(sorted(IMAGE_EXTS))}; videos: {', '.join(sorted(VIDEO_EXTS))}",
    )


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, WebP or BMP header without decoding; None if unknown."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in _JPEG_SOF:
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        return None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
        if chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if chunk == b"VP8 ":
            return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
        return None
    if data[:2] == b"BM" and len(data) >= 26:
        return int.from_bytes(data[18:22], "little", signed=True), abs(
            int.from_bytes(data[22:26], "little", signed=True)
        )
    return None


def _even(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % 2, : w - w % 2]


def _decode_video(data: bytes, ext: str, cfg: AvatarConfig) -> np.ndarray:
    with tempfile.NamedTemporaryFile(suffix=ext) as tmp:
        tmp.write(data)
        tmp.flush()
        cap = cv2.VideoCapture(tmp.name)
        try:
            if not cap.isOpened():
                raise InvalidArgument("data", "not a decodable video (corrupt, truncated or unknown codec)")
            w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
            h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
            if w * h > cfg.max_pixels:
                raise InvalidArgument("data", f"video frames have {w}x{h} pixels, over {cfg.max_pixels}")
            frames = []
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                frames.append(_even(frame))
                if len(frames) > cfg.max_frames:
                    raise InvalidArgument("data", f"video has more than {cfg.max_frames} frames")
        finally:
            cap.release()
    if not frames:
        raise InvalidArgument("data", "not a decodable video (no frames could be read)")
    return np.stack(frames)
