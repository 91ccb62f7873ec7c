"""Output size presets, pixel-format conversion and splitting frames into parts."""

from __future__ import annotations

import cv2
import numpy as np

from talkmesh.common.errors import InvalidArgument
from talkmesh.common.registry import SIZE_PRESETS
from talkmesh.v1 import common_pb2 as cpb

# Height of each preset; the width follows the avatar's aspect ratio. "512" scales the longer side to
# 512 (a square avatar, like the default portrait, renders at 512x512): no preset distorts the face.
_HEIGHTS = {"360p": 360, "480p": 480, "720p": 720}


def output_size(preset: str, native: tuple[int, int]) -> tuple[int, int]:
    """(width, height) for ``preset`` given the avatar's native (width, height); both even."""
    w, h = native
    if preset == "native":
        return w - w % 2, h - h % 2
    if preset == "512":
        scale = 512 / max(w, h)
        out_w, out_h = round(w * scale), round(h * scale)
        return max(2, out_w - out_w % 2), max(2, out_h - out_h % 2)
    if preset in _HEIGHTS:
        out_h = _HEIGHTS[preset]
        out_w = round(w * out_h / h)
        return out_w - out_w % 2, out_h
    raise InvalidArgument("config.size", f"unknown size preset {preset!r} ({', '.join(SIZE_PRESETS)})")


def resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = frame.shape[:2]
    if (w, h) == size:
        return frame
    interp = cv2.INTER_AREA if size[0] < w else cv2.INTER_LINEAR
    return cv2.resize(frame, size, interpolation=interp)


def encode_pixels(frame_bgr: np.ndarray, pixel_format: int) -> bytes:
    if pixel_format == cpb.PIXEL_FORMAT_RGB24:
        return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB).tobytes()
    return cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2YUV_I420).tobytes()


def split(data: bytes, part_bytes: int) -> list[bytes]:
    if len(data) <= part_bytes:
        return [data]
    return [data[i : i + part_bytes] for i in range(0, len(data), part_bytes)]
