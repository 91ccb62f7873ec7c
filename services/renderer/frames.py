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


def encode_pixels(frame_bgr: np.ndarray, pixel_format: int, out: np.ndarray | None = None) -> bytes | None:
    """The frame in ``pixel_format`` as bytes, or converted into ``out`` (a frame ring's slot, of
    the converted frame's shape: rows x width for I420, height x width x 3 for RGB): None."""
    code = cv2.COLOR_BGR2RGB if pixel_format == cpb.PIXEL_FORMAT_RGB24 else cv2.COLOR_BGR2YUV_I420
    if out is None:
        return cv2.cvtColor(frame_bgr, code).tobytes()
    converted = cv2.cvtColor(frame_bgr, code, dst=out)
    if not np.shares_memory(converted, out):  # OpenCV made a new array (never for a slot of the right shape)
        out[...] = converted
    return None


class I420Regions:
    """I420 bytes of frames that differ from a shared base frame only inside known boxes.

    The base (a still photo, or the idle motion's moved photo of a key tick) is converted once;
    a frame equal to it re-uses its bytes, and any other is a copy of its I420 planes with only
    the boxes converted again. Boxes have even corners, so the 4:2:0 conversion of a box alone
    is exactly the whole frame's there (each 2x2 block of pixels makes its own chroma sample).
    """

    def __init__(self) -> None:
        self._base: np.ndarray | None = None
        self._planes = np.zeros(0, np.uint8)
        self._bytes = b""

    def encode(
        self, frame: np.ndarray, base: np.ndarray, boxes: list[tuple[int, int, int, int]], out: np.ndarray | None = None
    ) -> bytes | None:
        """``frame`` (BGR, even sides) as I420; it equals ``base`` outside ``boxes``. Written into
        ``out`` (a frame ring's slot, rows x width) if given, and then None."""
        if base is not self._base:
            self._planes = np.asarray(cv2.cvtColor(base, cv2.COLOR_BGR2YUV_I420))
            self._bytes = self._planes.tobytes()
            self._base = base
        if frame is base:
            if out is None:
                return self._bytes
            out[...] = self._planes
            return None
        h, w = frame.shape[:2]
        into_slot = out is not None
        if out is None:
            out = self._planes.copy()
        else:
            out[...] = self._planes
        y_plane = out[:h]
        chroma = out[h:].reshape(2, h // 2, w // 2)  # U, then V
        for x1, y1, x2, y2 in boxes:
            sub = np.asarray(cv2.cvtColor(np.ascontiguousarray(frame[y1:y2, x1:x2]), cv2.COLOR_BGR2YUV_I420))
            rh, rw = y2 - y1, x2 - x1
            y_plane[y1:y2, x1:x2] = sub[:rh]
            chroma[:, y1 // 2 : y2 // 2, x1 // 2 : x2 // 2] = sub[rh:].reshape(2, rh // 2, rw // 2)
        return None if into_slot else out.tobytes()


def split(data: bytes, part_bytes: int) -> list[bytes]:
    if len(data) <= part_bytes:
        return [data]
    return [data[i : i + part_bytes] for i in range(0, len(data), part_bytes)]
