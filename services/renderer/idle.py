"""Idle life for still photos: blinks and a slow, slight head sway, so a photo never looks frozen.

Blinks warp the real eyelids: the skin above each eye is stretched down over it (one small
``cv2.remap`` per eye on blink frames only) and blended back with a feathered mask, so the lash
line closes over the eye instead of a patch of colour being painted on it. Eyes come from OpenCV's
Haar eye cascade inside the face box, with a geometric fallback.

Head sway is one sub-pixel affine warp of the whole frame (rotation of a fraction of a degree,
under a pixel of translation, breathing-scale zoom). Everything is a pure function of the clock
tick, so a session that continues at the next tick continues the motion without a jump.
"""

from __future__ import annotations

import math
import os
import threading

import cv2
import numpy as np

from services.renderer.backends.base import Avatar
from services.renderer.blend import blend_into, feathered_ellipse

BLINK_PERIOD_S = 4.3
# lid closure over the frames of one blink (at 25 fps: 120 ms closed-ish, a slower opening)
BLINK_CURVE = (0.45, 1.0, 0.8, 0.35)

_cascade_lock = threading.Lock()


def find_eyes(frame: np.ndarray, face: tuple[int, int, int, int]) -> list[tuple[float, float]]:
    """Centres of the two eyes (image left first): Haar eye cascade, else face-box geometry."""
    x1, y1, x2, y2 = face
    w, h = x2 - x1, y2 - y1
    guess = [(x1 + 0.31 * w, y1 + 0.41 * h), (x1 + 0.69 * w, y1 + 0.41 * h)]
    top = frame[max(0, y1) : max(0, y1 + h // 2 + h // 10), max(0, x1) : max(0, x2)]
    if top.size == 0:
        return guess
    path = os.path.join(cv2.data.haarcascades, "haarcascade_eye.xml")  # type: ignore[attr-defined]
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        return guess
    gray = cv2.equalizeHist(cv2.cvtColor(top, cv2.COLOR_BGR2GRAY))
    side = max(8, w // 8)
    with _cascade_lock:
        found = cascade.detectMultiScale(gray, 1.1, 5, minSize=(side, side), maxSize=(w // 2, w // 2))
    eyes = list(guess)
    for half in (0, 1):
        cands = [
            (x1 + ex + ew / 2.0, y1 + ey + eh / 2.0)
            for ex, ey, ew, eh in found
            if (ex + ew / 2.0 < w / 2.0) == (half == 0)
        ]
        if cands:
            # the candidate nearest the geometric guess (rejects nostrils and eyebrows)
            eyes[half] = min(cands, key=lambda c: (c[0] - guess[half][0]) ** 2 + (c[1] - guess[half][1]) ** 2)
    if abs(eyes[0][1] - eyes[1][1]) > 0.12 * h or not 0.25 * w < eyes[1][0] - eyes[0][0] < 0.6 * w:
        return guess  # an implausible pair: trust the geometry
    return eyes


class _Eye:
    """Precomputed blink geometry for one eye: ROI, base grid, lid profile, blend mask."""

    def __init__(self, centre: tuple[float, float], half_w: float, half_h: float, shape: tuple[int, int]) -> None:
        cx, cy = centre
        self.x1 = max(0, int(cx - 1.5 * half_w))
        self.x2 = min(shape[1], int(cx + 1.5 * half_w) + 1)
        self.y1 = max(0, int(cy - 4.0 * half_h))
        self.y2 = min(shape[0], int(cy + 3.0 * half_h) + 1)
        w, h = self.x2 - self.x1, self.y2 - self.y1
        self.valid = w >= 6 and h >= 6
        self.xx, self.yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        lcx, lcy = cx - self.x1, cy - self.y1
        d = np.clip(np.abs(self.xx[0] - lcx) / (1.15 * half_w), 0.0, 1.0)
        self.profile = np.sqrt(1.0 - d * d).astype(np.float32)  # lid travel across the eye
        self.brow = 0.0  # ROI top: the brow stays
        self.lid_top = lcy - half_h  # upper lid margin (lash line) when open
        self.lid_bottom = lcy + 0.7 * half_h  # lower lid margin
        self.meet = lcy + 0.45 * half_h  # where the lids meet when closed
        self.base = float(h - 1)  # ROI bottom: the cheek stays
        self.mask = feathered_ellipse(h, w, feather=0.5)

    def close(self, frame: np.ndarray, closure: float) -> None:
        roi = frame[self.y1 : self.y2, self.x1 : self.x2]
        c = closure * self.profile[None, :]
        lid = self.lid_top + c * (self.meet - self.lid_top)  # output row of the lash line
        src_lower = self.lid_top + c * (self.lid_bottom - self.lid_top)
        yy = self.yy
        above = self.brow + (yy - self.brow) * (self.lid_top - self.brow) / np.maximum(lid - self.brow, 1e-3)
        below = src_lower + (yy - lid) * (self.base - src_lower) / np.maximum(self.base - lid, 1e-3)
        map_y = np.where(yy < lid, above, below).astype(np.float32)
        warped = cv2.remap(roi, self.xx, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        blend_into(frame, warped, (self.x1, self.y1, self.x2, self.y2), self.mask)


class IdleLife:
    """Subtle life for still photos: slow head sway and breathing, and a blink every few seconds."""

    def __init__(self, avatar: Avatar, fps: float) -> None:
        self.fps = fps
        x1, y1, x2, y2 = (int(v) for v in avatar.face_boxes[0])
        self.centre = ((x1 + x2) / 2.0, (y1 + y2) / 2.0)
        w = x2 - x1
        cached = avatar.extras.get("idle")
        if cached is None:
            eyes = find_eyes(np.asarray(avatar.frames[0]), (x1, y1, x2, y2))
            cached = {"eyes": np.array(eyes, np.float32)}
            avatar.extras["idle"] = cached
        shape = (int(avatar.frames.shape[1]), int(avatar.frames.shape[2]))
        self.eyes = [_Eye((float(ex), float(ey)), 0.11 * w, 0.045 * w, shape) for ex, ey in cached["eyes"]]
        self.period = max(len(BLINK_CURVE) + 1, int(BLINK_PERIOD_S * fps))

    def closure(self, tick: int) -> float:
        k = tick % self.period
        return BLINK_CURVE[k] if k < len(BLINK_CURVE) else 0.0

    def apply(self, frame: np.ndarray, tick: int) -> np.ndarray:
        t = tick / self.fps
        closure = self.closure(tick)
        if closure > 0:
            frame = np.array(frame, copy=True)
            for eye in self.eyes:
                if eye.valid:
                    eye.close(frame, closure)
        angle = 0.2 * math.sin(2 * math.pi * t / 7.1)
        dx = 0.6 * math.sin(2 * math.pi * t / 5.3)
        dy = 0.4 * math.sin(2 * math.pi * t / 3.7 + 1.0)
        m = cv2.getRotationMatrix2D(self.centre, angle, 1.0 + 0.002 * math.sin(2 * math.pi * t / 4.1))
        m[0, 2] += dx
        m[1, 2] += dy
        return cv2.warpAffine(
            frame, m, (frame.shape[1], frame.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
        )
