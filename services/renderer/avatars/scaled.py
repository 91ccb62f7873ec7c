"""An avatar at an output size: the stored frames (a phone photo is 3000x4000) scaled down once to
the size a stream is rendered at, with every coordinate scaled with them, so a session renders,
moves and converts only the pixels it sends (at 512x512 a 3000x4000 photo rendered at 0.0x real
time, at its own size; scaled, like any 512x512 photo).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from services.renderer.backends.base import Avatar


def needs_scaling(avatar: Avatar, size: tuple[int, int]) -> bool:
    """Whether ``size`` (width, height) is smaller than the avatar's stored frames."""
    w, h = avatar.size
    return size[0] < w and size[1] < h


def scaled(avatar: Avatar, size: tuple[int, int]) -> Avatar:
    """``avatar`` with its frames resized to ``size`` (area-averaged) and its boxes and landmarks
    scaled to match; no backend precompute (each is made for the new size). Its ``variant`` names
    the size."""
    w, h = avatar.size
    out_w, out_h = size
    sx, sy = out_w / w, out_h / h
    frames = np.empty((len(avatar.frames), out_h, out_w, 3), np.uint8)
    for i, frame in enumerate(avatar.frames):
        cv2.resize(np.asarray(frame), (out_w, out_h), dst=frames[i], interpolation=cv2.INTER_AREA)
    frames.flags.writeable = False
    scale = np.array([sx, sy, sx, sy], np.float32)

    def boxes(b: np.ndarray) -> np.ndarray:
        """Box edges scale as they are (rounded for integer boxes)."""
        out = b.astype(np.float32) * scale
        return (np.round(out) if np.issubdtype(b.dtype, np.integer) else out).astype(b.dtype)

    # landmarks are points at pixel centres: (x + 0.5) * s - 0.5, as the area resize maps them
    centre = np.array([sx, sy], np.float32)

    return dataclasses.replace(
        avatar,
        frames=frames,
        face_boxes=boxes(avatar.face_boxes),
        mouth_boxes=boxes(avatar.mouth_boxes),
        landmarks=None if avatar.landmarks is None else ((avatar.landmarks + 0.5) * centre - 0.5).astype(np.float32),
        crop_boxes={k: boxes(v) for k, v in avatar.crop_boxes.items()},
        extras={},
        variant=f"{out_w}x{out_h}",
    )
