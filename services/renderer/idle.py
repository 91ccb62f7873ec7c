"""Idle life for still photos: blinks and a slow, slight head sway, so a photo never looks frozen.

Blinks warp the real eyelids: the skin above each eye is stretched down over it (one small
``cv2.remap`` per eye on blink frames only) and blended back with a feathered mask, so the lash
line closes over the eye instead of a patch of colour being painted on it. Eyes come from the
face-mesh landmarks (or, without them, OpenCV's Haar eye cascade inside the face box, with a
geometric fallback). Blinks come at irregular intervals (2 to 6 s, a fixed pseudo-random sequence
per avatar), and never on the first frames of a clip.

Head sway and breathing move the head and shoulders only: a sub-pixel affine motion weighted by a
smooth mask of the head and body built from the face (one ``remap`` of that region), so the
background stays still. Everything is a pure function of the clock tick, so a session that
continues at the next tick continues the motion without a jump.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import cv2
import numpy as np

from services.renderer.backends.base import Avatar
from services.renderer.blend import blend_into, feathered_ellipse

BLINK_INTERVAL_S = (2.0, 6.0)  # seconds between blinks, drawn uniformly per avatar
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


LEFT_EYE = (33, 133, 159, 145)  # outer corner, inner corner, upper lid, lower lid
RIGHT_EYE = (263, 362, 386, 374)


def blink_starts(seed: int, fps: float, until_tick: int) -> np.ndarray:
    """Ticks at which blinks start: irregular intervals from a per-avatar pseudo-random sequence."""
    rng = np.random.default_rng(seed)
    lo, hi = (max(1, int(v * fps)) for v in BLINK_INTERVAL_S)
    gaps = rng.integers(lo, hi + 1, size=until_tick // lo + 2)
    return np.cumsum(gaps)


def body_mask(face: tuple[int, int, int, int], shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Smooth [0, 1] weight of the head and shoulders (from the face box) and its bounding box."""
    h, w = shape
    x1, y1, x2, y2 = face
    fw, fh = x2 - x1, y2 - y1
    cx = (x1 + x2) / 2
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (int(cx), int(y1 + 0.45 * fh)), (int(0.8 * fw), int(0.95 * fh)), 0, 0, 360, 1.0, -1)
    neck_top = y1 + fh
    body = np.array(
        [[cx - 0.45 * fw, neck_top], [cx + 0.45 * fw, neck_top], [cx + 1.8 * fw, neck_top + 1.2 * fh],
         [cx + 2.2 * fw, h], [cx - 2.2 * fw, h], [cx - 1.8 * fw, neck_top + 1.2 * fh]], np.int32
    )  # fmt: skip
    cv2.fillPoly(mask, [body], 1.0)
    sigma = max(2.0, 0.12 * fw)
    mask = np.asarray(cv2.GaussianBlur(mask, (0, 0), sigma), np.float32)
    ys, xs = np.nonzero(mask > 0.004)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return mask[box[1] : box[3], box[0] : box[2]], box


class IdleLife:
    """Subtle life for still photos: slow head sway and breathing, and irregular blinks."""

    def __init__(self, avatar: Avatar, fps: float, clip_start: int = 0) -> None:
        self.fps = fps
        self.clip_start = clip_start
        x1, y1, x2, y2 = (int(v) for v in avatar.face_boxes[0])
        self.centre = ((x1 + x2) / 2.0, (y1 + y2) / 2.0)
        w = x2 - x1
        shape = (int(avatar.frames.shape[1]), int(avatar.frames.shape[2]))
        cached = avatar.extras.get("idle")
        if cached is None:
            if avatar.landmarks is not None and avatar.report.get("detector") != "haar":
                lm = avatar.landmarks[0]
                eyes: list[Any] = [lm[list(e[:2])].mean(0) for e in (LEFT_EYE, RIGHT_EYE)]
                sizes: list[Any] = [[np.linalg.norm(lm[e[0]] - lm[e[1]]) / 2, np.linalg.norm(lm[e[2]] - lm[e[3]]) / 2]
                         for e in (LEFT_EYE, RIGHT_EYE)]  # fmt: skip
            else:
                eyes = find_eyes(np.asarray(avatar.frames[0]), (x1, y1, x2, y2))
                sizes = [[0.11 * w, 0.045 * w]] * 2
            mask, box = body_mask((x1, y1, x2, y2), shape)
            cached = {
                "eyes": np.array(eyes, np.float32),
                "eye_sizes": np.array(sizes, np.float32),
                "mask": mask,
                "mask_box": np.array(box, np.int32),
            }
            avatar.extras["idle"] = cached
        self.eyes = [
            _Eye((float(ex), float(ey)), float(max(hw, 2.0)), float(max(hh, 0.35 * hw, 1.0)), shape)
            for (ex, ey), (hw, hh) in zip(cached["eyes"], cached["eye_sizes"], strict=True)
        ]
        self.mask = cached["mask"]
        self.mask_box = tuple(int(v) for v in cached["mask_box"])
        bx1, by1, bx2, by2 = self.mask_box
        self.grid = np.meshgrid(np.arange(bx1, bx2, dtype=np.float32), np.arange(by1, by2, dtype=np.float32))
        self.seed = int.from_bytes(avatar.id.encode()[:8].ljust(8, b"0"), "little")
        self._starts = np.zeros(0, np.int64)

    def closure(self, tick: int) -> float:
        if len(self._starts) == 0 or tick >= int(self._starts[-1]):
            self._starts = blink_starts(self.seed, self.fps, 2 * tick + 1000)
        i = int(np.searchsorted(self._starts, tick, side="right")) - 1
        if i < 0:
            return 0.0
        start = int(self._starts[i])
        if start <= self.clip_start:  # never a blink on the first frame of a clip
            return 0.0
        k = tick - start
        return BLINK_CURVE[k] if k < len(BLINK_CURVE) else 0.0

    def apply(self, frame: np.ndarray, tick: int) -> np.ndarray:
        t = tick / self.fps
        closure = self.closure(tick)
        frame = np.array(frame, copy=True)
        if closure > 0:
            for eye in self.eyes:
                if eye.valid:
                    eye.close(frame, closure)
        angle = math.radians(0.25 * math.sin(2 * math.pi * t / 7.1))
        dx = 0.6 * math.sin(2 * math.pi * t / 5.3)
        dy = 0.4 * math.sin(2 * math.pi * t / 3.7 + 1.0) + 0.5 * math.sin(2 * math.pi * t / 4.1)  # breathing
        zoom = 0.002 * math.sin(2 * math.pi * t / 4.1)
        cx, cy = self.centre
        xx, yy = self.grid
        # where each pixel of the moved head and body comes from (inverse of a small similarity)
        c, s = math.cos(angle) * (1 - zoom), math.sin(angle) * (1 - zoom)
        sx = cx + c * (xx - cx - dx) + s * (yy - cy - dy)
        sy = cy - s * (xx - cx - dx) + c * (yy - cy - dy)
        m = self.mask
        map_x = (xx + (sx - xx) * m).astype(np.float32)
        map_y = (yy + (sy - yy) * m).astype(np.float32)
        bx1, by1, bx2, by2 = self.mask_box
        frame[by1:by2, bx1:bx2] = cv2.remap(frame, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        return frame
