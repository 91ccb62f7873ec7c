"""Idle life for still photos: blinks and a slow, slight head sway, so a photo never looks frozen.

Blinks warp the real eyelids: the skin above each eye is stretched down over it (one small
``cv2.remap`` per eye on blink frames only) and blended back with a feathered mask, so the lash
line closes over the eye instead of a patch of colour being painted on it. Eyes come from the
face-mesh landmarks (or, without them, OpenCV's Haar eye cascade inside the face box, with a
geometric fallback). Blinks come at irregular intervals (2 to 6 s, a fixed pseudo-random sequence
per avatar), and never on the first frames of a clip.

Head sway and breathing move the head and shoulders only: a sub-pixel affine motion weighted by a
smooth mask of the head and body built from the face (one ``remap`` of that region), so the
background stays still. The motion loops every 32 s; the moved body is re-rendered only on the
ticks where some pixel would otherwise lag by more than ``STEP_PX`` (about one tick in 3.5) and
reused in between, and a frame redoes only what the backend changed (the mouth) and the blinking
eyes, with the same maps: per frame that is a copy and a few small remaps, not a full-body warp.
Everything is a pure function of the clock tick, so a session that continues at the next tick
continues the motion without a jump; and the moved bodies are shared by every session of the avatar
(``MovedPhotos``): every stream starts at tick 0, and many listeners of one avatar speak at once,
so a key tick is mostly moved once per avatar, not once per stream.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from services.renderer.backends.base import Avatar
from services.renderer.blend import blend_into, feathered_ellipse
from talkmesh.common.lru import Lru

BLINK_INTERVAL_S = (2.0, 6.0)  # seconds between blinks, drawn uniformly per avatar
# lid closure over the frames of one blink (at 25 fps: 120 ms closed-ish, a slower opening)
BLINK_CURVE = (0.45, 1.0, 0.8, 0.35)

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
    # a classifier of this call's own (once per avatar without landmarks): nothing shared to lock
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


LOOP_S = 32.0  # the head motion repeats exactly after this many seconds (a whole number of ticks)
# (amplitude, cycles per loop, phase): head roll in degrees, sway and bob in pixels, breathing (a
# rise and a slight zoom together) - periods 6.4, 5.3, 3.6 and 4 s, so the motion never looks regular
ROLL_DEG = (0.25, 5, 0.0)
SWAY_X = (0.6, 6, 0.0)
BOB_Y = (0.4, 9, 1.0)
BREATH_Y = (0.5, 8, 0.0)
BREATH_ZOOM = (0.002, 8, 0.0)
# The moved head and body are re-rendered when some pixel of them would move by more than this
# since the last rendering (a "key" tick); in between, frames reuse it. The motion is at most
# ~0.15 px per tick, so a key lasts ~3 ticks and no pixel ever jumps by more than this.
STEP_PX = 0.25
COARSE = 4  # the displacement field is computed on a grid this many pixels apart, then interpolated
PAD = 2  # coarse samples beyond the mask box on each side


def _wave(spec: tuple[float, int, float], phase: np.ndarray) -> np.ndarray:
    amplitude, cycles, offset = spec
    return np.asarray(amplitude * np.sin(cycles * phase + offset))


def motion(tick: np.ndarray, loop: int) -> np.ndarray:
    """[..., 2, 3] inverse similarity per tick: (dx, dy) from a pixel's position relative to the face
    centre ``(X, Y, 1)`` to where the moved head and body take it from."""
    phase = 2 * np.pi * (np.asarray(tick) % loop) / loop
    angle = np.radians(_wave(ROLL_DEG, phase))
    dx = _wave(SWAY_X, phase)
    dy = _wave(BOB_Y, phase) + _wave(BREATH_Y, phase)
    zoom = _wave(BREATH_ZOOM, phase)
    c, s = np.cos(angle) * (1 - zoom), np.sin(angle) * (1 - zoom)
    m = np.zeros((*phase.shape, 2, 3))
    m[..., 0, 0], m[..., 0, 1], m[..., 0, 2] = c - 1, s, -c * dx - s * dy
    m[..., 1, 0], m[..., 1, 1], m[..., 1, 2] = -s, c - 1, s * dx - c * dy
    return m


def key_ticks(corners: np.ndarray, loop: int, step: float = STEP_PX) -> np.ndarray:
    """The ticks of one loop at which the moved body is re-rendered: whenever a corner of its box
    (relative to the centre; the weight mask never exceeds 1 and the displacement is affine, so
    the corners bound every pixel) has moved by more than ``step`` since the last key."""
    disp = motion(np.arange(loop), loop) @ np.concatenate([corners, np.ones((len(corners), 1))], 1).T
    keys = [0]
    ref = disp[0]
    for t in range(1, loop):
        if float(np.abs(disp[t] - ref).max()) > step:
            keys.append(t)
            ref = disp[t]
    return np.array(keys, np.int64)


def changed_box(frame: np.ndarray, rest: np.ndarray) -> tuple[int, int, int, int] | None:
    """The box (x1, y1, x2, y2) outside which ``frame`` equals ``rest`` (None: they are equal).

    Compares whole machine words (8 bytes where the row allows): the box may be a few pixels
    wider than the change, never narrower.
    """
    if frame is rest or (
        frame.shape == rest.shape
        and frame.strides == rest.strides
        and frame.__array_interface__["data"][0] == rest.__array_interface__["data"][0]
    ):
        return None
    h, w = rest.shape[:2]
    if frame.shape != rest.shape or frame.dtype != rest.dtype:
        return (0, 0, w, h)
    row = frame[0].nbytes
    word = next(k for k in (8, 4, 2, 1) if row % k == 0)
    if frame.flags.c_contiguous and rest.flags.c_contiguous:
        a, b = frame.reshape(h, row).view(f"u{word}"), rest.reshape(h, row).view(f"u{word}")
    else:
        a, b, word = frame.reshape(h, row), rest.reshape(h, row), 1
    neq = a != b
    rows = np.flatnonzero(neq.any(1))
    if len(rows) == 0:
        return None
    y1, y2 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(neq[y1:y2].any(0))
    px = row // w  # bytes per pixel
    return int(cols[0]) * word // px, y1, -(-(int(cols[-1]) + 1) * word // px), y2


def _remap(src: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """``src`` sampled at ``maps`` ([h, w, 2] float32 absolute x, y), bilinear, reflected at the edges."""
    out = cv2.remap(src, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)  # type: ignore[call-overload]
    return np.asarray(out)


#: Moved photos an avatar keeps at most, whatever their size (the byte bound is ``MovedPhotos``'s).
MAX_MOVED_PHOTOS = 4096


class MovedPhotos:
    """The photo moved as at each key tick (the costly full-body remap), shared by the sessions of
    one avatar, keyed by (loop length, key tick). The most recently used are kept, up to
    ``max_bytes`` (0: none): the keys where new streams start (tick 0) stay while streams start.
    Sessions render in worker threads: one lock guards the map."""

    def __init__(self, max_bytes: int) -> None:
        self._photos: Lru[tuple[int, int], np.ndarray] | None = (
            Lru(MAX_MOVED_PHOTOS, max_weight=max_bytes, weigh=lambda photo: photo.nbytes) if max_bytes > 0 else None
        )
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._photos is not None

    def get(self, loop: int, key: int) -> np.ndarray | None:
        if self._photos is None:
            return None
        with self._lock:
            return self._photos.get((loop, key))

    def put(self, loop: int, key: int, moved: np.ndarray) -> None:
        if self._photos is not None:
            with self._lock:
                self._photos.put((loop, key), moved)

    def __len__(self) -> int:
        return len(self._photos) if self._photos is not None else 0


class IdleLife:
    """Subtle life for still photos: slow head sway and breathing, and irregular blinks.

    The head and body move by a similarity weighted by a smooth mask (per pixel ``m * (S(p) - p)``,
    the background stays still). That remap of the whole body is the costly part, so it is done on
    the key ticks only (see ``STEP_PX``) and kept; a frame copies it and redoes only what differs
    from the photo (the mouth the backend drew, the eyes while blinking) with the same maps, so
    those regions move exactly with the rest.
    """

    def __init__(
        self,
        avatar: Avatar,
        fps: float,
        clip_start: int = 0,
        *,
        cache_bytes: int = 0,
        on_cache: Callable[[bool], None] | None = None,
    ) -> None:
        """``cache_bytes``: how much of the avatar's moved photos its sessions share (``MovedPhotos``,
        made by the first session); ``on_cache`` hears whether a key tick's photo was found there."""
        self.fps = fps
        self.clip_start = clip_start
        x1, y1, x2, y2 = (int(v) for v in avatar.face_boxes[0])
        self.centre = ((x1 + x2) / 2.0, (y1 + y2) / 2.0)
        w = x2 - x1
        shape = (int(avatar.frames.shape[1]), int(avatar.frames.shape[2]))
        cached = avatar.extras.get("idle")
        if cached is None:  # the avatar's first session (several may build it at once: one wins)
            if avatar.landmarks is not None and avatar.report.get("detector") != "haar":
                lm = avatar.landmarks[0]
                eyes: list[Any] = [lm[list(e[:2])].mean(0) for e in (LEFT_EYE, RIGHT_EYE)]
                sizes: list[Any] = [[np.linalg.norm(lm[e[0]] - lm[e[1]]) / 2, np.linalg.norm(lm[e[2]] - lm[e[3]]) / 2]
                         for e in (LEFT_EYE, RIGHT_EYE)]  # fmt: skip
            else:
                eyes = find_eyes(np.asarray(avatar.frames[0]), (x1, y1, x2, y2))
                sizes = [[0.11 * w, 0.045 * w]] * 2
            mask, box = body_mask((x1, y1, x2, y2), shape)
            bx1, by1, bx2, by2 = box
            cx, cy = self.centre
            # the coarse grid: COARSE pixels apart, PAD samples beyond the box on each side, so that
            # cv2.resize by exactly COARSE lands it on the box's pixels without clamping at its edges
            bw, bh = bx2 - bx1, by2 - by1
            gw, gh = math.ceil(bw / COARSE) + 2 * PAD, math.ceil(bh / COARSE) + 2 * PAD
            o = PAD * COARSE  # the mask continues beyond the box as at its edge (~0, or the image's edge)
            padded = np.pad(mask, ((o, gh * COARSE - bh - o), (o, gw * COARSE - bw - o)), mode="edge")
            small = cv2.resize(padded, (gw, gh), interpolation=cv2.INTER_AREA)
            sx = bx1 - PAD * COARSE + (np.arange(gw, dtype=np.float32) + 0.5) * COARSE - 0.5
            sy = by1 - PAD * COARSE + (np.arange(gh, dtype=np.float32) + 0.5) * COARSE - 0.5
            gx, gy = np.meshgrid(sx, sy)
            cached = {
                "eyes": np.array(eyes, np.float32),
                "eye_sizes": np.array(sizes, np.float32),
                "mask": mask,
                "mask_box": np.array(box, np.int32),
                # on the coarse grid: where each sample is, and the three fields whose per-tick mix
                # is its displacement
                "grid": np.stack([gx, gy], axis=-1),
                "basis": np.stack([small * (gx - cx), small * (gy - cy), small], axis=-1),
                "keys": {},
                "moved": MovedPhotos(cache_bytes),
            }
            # sessions are built in worker threads: the first to get here is the one all share
            cached = avatar.extras.setdefault("idle", cached)
        self.eyes = [
            _Eye((float(ex), float(ey)), float(max(hw, 2.0)), float(max(hh, 0.35 * hw, 1.0)), shape)
            for (ex, ey), (hw, hh) in zip(cached["eyes"], cached["eye_sizes"], strict=True)
        ]
        self.mask = cached["mask"]
        self.mask_box = tuple(int(v) for v in cached["mask_box"])
        self.basis = cached["basis"]
        self.grid = cached["grid"]  # [gh, gw, 2] float32
        self.shared: MovedPhotos = cached["moved"]
        self.on_cache = on_cache if self.shared.enabled else None
        self.rest = np.asarray(avatar.frames[0])
        self.loop = max(1, round(LOOP_S * fps))
        # sessions are built in worker threads: read the shared cache once, into a local
        keys = cached["keys"].get(self.loop)
        if keys is None:
            if len(cached["keys"]) >= 8:  # the loop length follows the client's fps: keep a few, not one per rate
                cached["keys"].clear()
            bx1, by1, bx2, by2 = self.mask_box
            corners = np.array([[bx1, by1], [bx2, by1], [bx1, by2], [bx2, by2]], np.float64) - self.centre
            keys = cached["keys"][self.loop] = key_ticks(corners, self.loop)
        self.keys = keys
        # plain lists for the per-frame lookups: ``bisect`` takes ~0.6 us where ``np.searchsorted``
        # takes ~5 us and lets go of the GIL, so under many sessions each lookup waited for it back
        self._key_list: list[int] = keys.tolist()
        self.seed = int.from_bytes(avatar.id.encode()[:8].ljust(8, b"0"), "little")
        self._starts: list[int] = []
        self._key = -1
        self._moved = self.rest
        self._maps: np.ndarray | None = None
        self._margin = 0
        # what the last ``apply`` returned differs from ``base`` (the moved photo of its key tick,
        # shared by the frames up to the next key) only inside the ``redone`` boxes (even corners)
        self.base: np.ndarray = self.rest
        self.redone: list[tuple[int, int, int, int]] = []

    def closure(self, tick: int) -> float:
        if not self._starts or tick >= self._starts[-1]:
            self._starts = blink_starts(self.seed, self.fps, 2 * tick + 1000).tolist()
        i = bisect.bisect_right(self._starts, tick) - 1
        if i < 0:
            return 0.0
        start = self._starts[i]
        if start <= self.clip_start:  # never a blink on the first frame of a clip
            return 0.0
        k = tick - start
        return BLINK_CURVE[k] if k < len(BLINK_CURVE) else 0.0

    def key(self, tick: int) -> int:
        """The loop position whose motion this tick shows (the last key tick at or before it)."""
        pos = tick % self.loop
        return self._key_list[bisect.bisect_right(self._key_list, pos) - 1]

    def _move_to(self, key: int) -> None:
        """The photo's head and body moved as at loop position ``key`` (kept until the next): made
        once per avatar while the shared ``MovedPhotos`` keep it; the maps are made when needed."""
        (a, b, c), (d, e, f) = motion(np.array(key), self.loop).tolist()
        moved = self.shared.get(self.loop, key)
        if self.on_cache is not None:
            self.on_cache(moved is not None)
        maps = None
        if moved is None:
            bx1, by1, bx2, by2 = self.mask_box
            maps = self._maps_for(key)
            moved = np.array(self.rest, copy=True)
            moved[by1:by2, bx1:bx2] = _remap(self.rest, maps)
            moved.flags.writeable = False
            self.shared.put(self.loop, key, moved)
        # how far a pixel's samples can lie from it (the corners bound the displacement); twice
        # that plus the bilinear footprint, for samples reflected at the image's edge
        reach = max(max(abs(a * x + b * y + c), abs(d * x + e * y + f)) for x, y in self._corners())
        # all at once, after anything that may fail: the state always belongs to one key
        self._moved, self._maps, self._margin, self._key = moved, maps, 2 * math.ceil(reach) + 3, key

    def _key_maps(self) -> np.ndarray:
        """The current key's maps, made the first time a frame needs them."""
        if self._maps is None:
            self._maps = self._maps_for(self._key)
        return self._maps

    def _maps_for(self, key: int) -> np.ndarray:
        """[h, w, 2] float32 over the mask box: where each pixel samples the photo at loop position ``key``."""
        (a, b, c), (d, e, f) = motion(np.array(key), self.loop).tolist()
        # the displacement is smooth (the mask is blurred over ~10 % of the face): mixed on the
        # coarse grid, added to where its samples are, and interpolated up to every pixel (exact
        # for the pixel grid itself: bilinear interpolation reproduces a linear function)
        coarse = self.basis @ np.array([[a, d], [b, e], [c, f]], np.float32) + self.grid
        gh, gw = coarse.shape[:2]
        bx1, by1, bx2, by2 = self.mask_box
        o = PAD * COARSE
        full = cv2.resize(coarse, (gw * COARSE, gh * COARSE), interpolation=cv2.INTER_LINEAR)
        return full[o : o + by2 - by1, o : o + bx2 - bx1]

    def _corners(self) -> list[tuple[float, float]]:
        bx1, by1, bx2, by2 = self.mask_box
        cx, cy = self.centre
        return [(x - cx, y - cy) for x in (bx1, bx2) for y in (by1, by2)]

    def _redo(
        self, out: np.ndarray, src: np.ndarray, box: tuple[int, int, int, int]
    ) -> tuple[int, int, int, int] | None:
        """Moves ``src`` into ``out`` over ``box`` (grown by the motion's reach, and to even
        coordinates), with the key's maps; returns the box written (None: nothing)."""
        h, w = out.shape[:2]
        k = self._margin
        # even corners: a 4:2:0 conversion of the box alone then equals the whole frame's there
        x1, y1 = max(0, box[0] - k) & ~1, max(0, box[1] - k) & ~1
        x2, y2 = min(w, (box[2] + k + 1) & ~1), min(h, (box[3] + k + 1) & ~1)
        if x1 >= x2 or y1 >= y2:
            return None
        out[y1:y2, x1:x2] = src[y1:y2, x1:x2]  # what lies outside the body does not move
        bx1, by1, bx2, by2 = self.mask_box
        ix1, iy1, ix2, iy2 = max(x1, bx1), max(y1, by1), min(x2, bx2), min(y2, by2)
        if ix1 < ix2 and iy1 < iy2:
            sub = self._key_maps()[iy1 - by1 : iy2 - by1, ix1 - bx1 : ix2 - bx1]
            out[iy1:iy2, ix1:ix2] = _remap(src, sub)
        return x1, y1, x2, y2

    def maps(self, tick: int) -> np.ndarray:
        """[h, w, 2] float32: where each pixel of the mask box samples the frame at this tick."""
        self._at(tick)
        return self._key_maps()

    def _at(self, tick: int) -> None:
        key = self.key(tick)
        if key != self._key:
            self._move_to(key)

    def reference(self, frame: np.ndarray, tick: int) -> np.ndarray:
        """What ``apply`` returns, the slow way: the eyes closed, then the whole body remapped."""
        maps = self.maps(tick)
        out = np.array(frame, copy=True)
        closure = self.closure(tick)
        if closure > 0:
            for eye in self.eyes:
                if eye.valid:
                    eye.close(out, closure)
        bx1, by1, bx2, by2 = self.mask_box
        out[by1:by2, bx1:bx2] = _remap(out, maps)
        return out

    def apply(self, frame: np.ndarray, tick: int) -> np.ndarray:
        """The frame for ``tick``: ``frame`` (the photo, or the photo with a mouth drawn on it)
        with its eyes blinking and its head and body moved. May return a shared read-only array."""
        self._at(tick)
        boxes = []
        changed = changed_box(frame, self.rest)
        if changed is not None:
            boxes.append(changed)
        closure = self.closure(tick)
        if closure > 0:
            frame = np.array(frame, copy=True)
            for eye in self.eyes:
                if eye.valid:
                    eye.close(frame, closure)
                    boxes.append((eye.x1, eye.y1, eye.x2, eye.y2))
        self.base = self._moved
        self.redone = []
        if not boxes:
            return self._moved
        out = np.array(self._moved, copy=True)
        for box in boxes:
            written = self._redo(out, frame, box)
            if written is not None:
                self.redone.append(written)
        return out
