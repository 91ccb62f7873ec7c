"""The mouth rig of the default renderer: a piecewise-affine warp of the lower face over the face
mesh, precomputed per avatar, and an inner mouth derived from the avatar's own colours.

Geometry lives in a canonical frame per avatar: origin at the mouth centre, x along the eye line,
one canonical pixel ~ one image pixel of the reference frame (capped for very large faces). Every
avatar frame has a similarity from that frame to the image (from its landmarks), so one rig serves
all frames of a video whose head pans and rotates.

The rig's vertices are the face-mesh landmarks of the lower face, a pinned line a little beyond the
jaw line and a fixed ring around it. A mouth pose displaces them: the lower lip and the jaw drop by
the opening (the chin with them, sliding over the neck inside the pinned line; the jaw's motion dies
out towards its angles, so the face's outline and the background beside it stay put), the upper lip
lifts a little, the corners move out or in with the width (rounded "o/u" narrower, "e/i" wider; the
cheeks between the corners and the face's edge take that up). The lips are cut between the upper
lip (with any teeth the photo shows, which stay with it) and the lower lip; the gap that opens is
filled with a dark inner mouth whose colours are the avatar's own darkest lip colours.

The exact inverse warp (destination pixel -> source pixel) is rasterised over the displaced
triangles at precompute time for a grid of poses (opening x width); a frame interpolates its pose
from the four neighbouring grid maps, carries the result into the frame with one ``warpAffine`` and
samples the image with one ``remap`` of the small region. For a still photo the whole grid is
carried onto the photo once (``place``, kept in memory by the backend), so a frame only mixes four
placed maps and remaps the mouth's box. Outside the ring nothing changes; on the ring the
displacement is zero, so there is no seam to blend.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import cv2
import numpy as np

from services.renderer.avatars.face_models import (
    CHIN,
    EYE_OUTER_LEFT,
    EYE_OUTER_RIGHT,
    LIP_LOWER_INNER,
    LIP_UPPER_INNER,
    MOUTH_LEFT,
    MOUTH_RIGHT,
)
from services.renderer.backends.base import Avatar, MouthShape

UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
NOSE_BOTTOM = 2

OPEN_GRID = np.linspace(0.0, 1.0, 5).astype(np.float32)
SPREAD_GRID = np.array([-0.4, 0.0, 0.2], np.float32)  # relative change of the mouth's width
_OPEN, _SPREAD = tuple(float(v) for v in OPEN_GRID), tuple(float(v) for v in SPREAD_GRID)
#: The precomputed rig's version (the avatar store rebuilds rigs cached under another): 2 has the
#: smaller jaw drop and the soft inner-mouth outline (a product trial: at close framing the mouth
#: opened to a quarter of the face, a hard-edged dark slab).
RIG_VERSION = "mesh-warp-2"
JAW_DROP = 0.24  # lower-lip travel at full opening, in mouth widths (0.32 before: a yawn at close framing)
LIP_LIFT = 0.08  # upper-lip travel, as a fraction of the lower lip's
MAX_CANONICAL_MOUTH = 80.0  # canonical pixels across the mouth, at most
SUPERSAMPLE = 4
EDGE_SHADE, DEEP_SHADE = 0.6, 0.35  # inner mouth: darkened lip shadow at its edge and deepest
GAP_SOFTNESS = 0.9  # canonical pixels of blur on the inner mouth's outline
# the jaw line from one cheek beside the mouth, round the chin, to the other
JAW_LINE = (132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361)
NECK_BAND = 0.45  # pinned line beyond the jaw line, in mouth widths: the chin's drop is taken up inside
LAT_FLAT = 0.35  # the jaw moves fully within this many mouth widths of the centre, then less to the face's edge


def spread(shape: MouthShape) -> float:
    """Relative change of mouth width for a pose: wider for "e/i", narrower for rounded "o/u"."""
    return 0.3 * (shape.width - 0.5) - 0.22 * shape.round


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return np.asarray(t * t * (3 - 2 * t))


@dataclass
class Rig:
    maps: np.ndarray  # [n_open, n_spread, H, W, 4] float32: canonical dx, dy, gap alpha, gap depth
    origin: tuple[float, float]  # canonical coordinates of map pixel (0, 0)
    to_image: np.ndarray  # [N, 2, 3] float64: canonical -> image affine per avatar frame
    colours: np.ndarray  # [2, 3] float32 BGR: inner mouth at its edge and at its deepest

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "maps": self.maps,
            "origin": np.array(self.origin, np.float32),
            "to_image": self.to_image,
            "colours": self.colours,
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> Rig:
        o = a["origin"]
        return cls(a["maps"], (float(o[0]), float(o[1])), a["to_image"], a["colours"])


# -- precompute ---------------------------------------------------------------------------------------
def frame_transforms(landmarks: np.ndarray, scale: float) -> np.ndarray:
    """[N, 2, 3] canonical -> image similarities: mouth centre, eye-line angle, interocular scale.

    ``scale`` is canonical pixels per interocular distance.
    """
    eye = landmarks[:, EYE_OUTER_RIGHT] - landmarks[:, EYE_OUTER_LEFT]
    theta = np.arctan2(eye[:, 1], eye[:, 0])
    iod = np.linalg.norm(eye, axis=1)
    centre = landmarks[:, (MOUTH_LEFT, MOUTH_RIGHT, LIP_UPPER_INNER, LIP_LOWER_INNER)].mean(1)
    k = iod / scale
    c, s = np.cos(theta) * k, np.sin(theta) * k
    out = np.zeros((len(landmarks), 2, 3), np.float64)
    out[:, 0, 0], out[:, 0, 1], out[:, 0, 2] = c, -s, centre[:, 0]
    out[:, 1, 0], out[:, 1, 1], out[:, 1, 2] = s, c, centre[:, 1]
    return out


def to_canonical(landmarks: np.ndarray, to_image: np.ndarray) -> np.ndarray:
    """[N, 468, 2] image landmarks -> canonical coordinates, per frame."""
    lin = to_image[:, :, :2]
    inv = np.linalg.inv(lin)
    rel = landmarks - to_image[:, None, :, 2]
    return np.asarray(np.einsum("nij,nkj->nki", inv, rel), np.float32)


def build_rig(avatar: Avatar) -> Rig:
    assert avatar.landmarks is not None
    lm = avatar.landmarks.astype(np.float64)
    kept = avatar.kept if avatar.kept is not None else np.ones(len(lm), bool)
    ref = lm[kept] if kept.any() else lm
    iod = float(np.median(np.linalg.norm(ref[:, EYE_OUTER_RIGHT] - ref[:, EYE_OUTER_LEFT], axis=1)))
    mouth_over_iod = float(np.median(np.linalg.norm(ref[:, MOUTH_RIGHT] - ref[:, MOUTH_LEFT], axis=1))) / max(iod, 1e-6)
    scale = min(iod, MAX_CANONICAL_MOUTH / max(mouth_over_iod, 1e-3))
    to_image = frame_transforms(lm, scale)
    canon = to_canonical(lm, to_image)
    pts = canon[kept].mean(0) if kept.any() else canon.mean(0)
    maps, origin = _pose_maps(pts)
    first = int(np.argmax(kept)) if kept.any() else 0
    colours = _inner_mouth_colours(np.asarray(avatar.frames[min(first, len(avatar.frames) - 1)]), lm[first])
    return Rig(maps, origin, to_image, colours)


def _inner_mouth_colours(frame: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The avatar's own darkest lip colours: the inner mouth's edge and its deepest shade."""
    h, w = frame.shape[:2]
    poly = np.round(lm[list(UPPER_OUTER) + list(LOWER_OUTER[::-1])] * 4).astype(np.int32)
    x1, y1 = np.clip(poly.min(0) // 4 - 1, 0, [w - 1, h - 1])
    x2, y2 = np.clip(poly.max(0) // 4 + 2, 1, [w, h])
    mask = np.zeros((y2 - y1, x2 - x1), np.uint8)
    cv2.fillPoly(mask, [poly - np.array([x1 * 4, y1 * 4])], 255, cv2.LINE_8, shift=2)
    pix = frame[y1:y2, x1:x2][mask > 0].astype(np.float32)
    if len(pix) < 8:
        return np.array([[40, 40, 70], [20, 18, 30]], np.float32)
    luma = pix @ np.array([0.114, 0.587, 0.299], np.float32)
    order = np.argsort(luma)
    # shades of the lips' own darkest colours (the shadowed corners), darkened further inside
    edge = pix[order[: max(2, len(order) // 12)]].mean(0) * EDGE_SHADE
    deep = pix[order[: max(2, len(order) // 50)]].mean(0) * DEEP_SHADE
    return np.stack([edge, deep]).astype(np.float32)


def _pose_maps(pts: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Inverse warp maps for every pose of the grid, over the canonical region of the lower face."""
    up_in, lo_in = pts[list(UPPER_INNER)].copy(), pts[list(LOWER_INNER)].copy()
    mouth_w = float(np.linalg.norm(pts[MOUTH_RIGHT] - pts[MOUTH_LEFT]))
    # a closed mouth: keep the lips at least a pixel apart so the cut between them is well formed
    lo_in[1:-1, 1] = np.maximum(lo_in[1:-1, 1], up_in[1:-1, 1] + 1.0)
    gap = lo_in[1:-1, 1] - up_in[1:-1, 1]
    # the cut: just above the lower lip; what lies above it (teeth, if shown) stays with the upper lip
    cut = lo_in[1:-1].copy()
    cut[:, 1] -= np.minimum(1.0, 0.3 * gap)
    chin_y = float(pts[CHIN, 1])
    lip_lo = max(2.0, float(pts[17, 1] - pts[14, 1]))
    lip_up = max(2.0, float(pts[14, 1] - pts[0, 1]) / 2)
    # canonical region: the jaw's width, from the nose to below the chin
    x_half = max(1.2 * mouth_w, float(np.abs(pts[[172, 397, 136, 365], 0]).max()) + 0.2 * mouth_w)
    top = float(pts[NOSE_BOTTOM, 1]) - 0.1 * mouth_w
    bottom = chin_y + NECK_BAND * mouth_w + 0.15 * mouth_w
    ox, oy = -x_half, top
    W, H = math.ceil(2 * x_half) + 1, math.ceil(bottom - top) + 1
    # vertices: landmarks inside the region (not the lips' own lists), the lips, the cut, a ring
    lips = set(UPPER_INNER) | set(LOWER_INNER) | set(UPPER_OUTER) | set(LOWER_OUTER)
    inner_margin = 0.08 * mouth_w
    others = [
        i for i in range(len(pts))
        if i not in lips and ox + inner_margin < pts[i, 0] < ox + W - 1 - inner_margin
        and oy + inner_margin < pts[i, 1] < oy + H - 1 - inner_margin
    ]  # fmt: skip
    xs_line = np.concatenate([[pts[MOUTH_LEFT, 0]], (up_in[1:-1, 0] + lo_in[1:-1, 0]) / 2, [pts[MOUTH_RIGHT, 0]]])
    ys_line = np.concatenate([[pts[MOUTH_LEFT, 1]], (up_in[1:-1, 1] + lo_in[1:-1, 1]) / 2, [pts[MOUTH_RIGHT, 1]]])
    order = np.argsort(xs_line)
    xs_line, ys_line = xs_line[order], ys_line[order]

    def line(x: np.ndarray) -> np.ndarray:
        return np.interp(x, xs_line, ys_line)

    verts: list[np.ndarray] = []
    group: list[int] = []  # 0 upper, 1 lower, 2 fixed
    for i in others:
        verts.append(pts[i])
        group.append(1 if pts[i, 1] > line(np.array([pts[i, 0]]))[0] else 0)
    for arr, g in (
        (pts[list(UPPER_OUTER)], 0),
        (up_in, 0),
        (cut, 0),
        (lo_in[1:-1], 1),
        (pts[list(LOWER_OUTER)[1:-1]], 1),
    ):
        for p in arr:
            verts.append(p)
            group.append(g)
    # the jaw line pushed out by the neck band: pinned, so the chin slides over the neck inside it
    # and nothing beyond it moves (the collar, the background beside the jaw)
    centre = np.array([0.0, float(pts[NOSE_BOTTOM, 1])])
    contour = pts[list(JAW_LINE)].astype(np.float64)
    contour = np.concatenate([contour, (contour[1:] + contour[:-1]) / 2])
    out_dir = contour - centre
    out_dir /= np.maximum(np.linalg.norm(out_dir, axis=1, keepdims=True), 1e-6)
    for q in contour + NECK_BAND * mouth_w * out_dir:
        if ox + inner_margin < q[0] < ox + W - 1 - inner_margin and oy + inner_margin < q[1] < bottom - inner_margin:
            verts.append(q)
            group.append(2)
    n_ring = max(8, int((W + H) / max(4.0, mouth_w / 4)))
    for t in np.linspace(0, 1, n_ring, endpoint=False):
        for px, py in ((t * (W - 1), 0), (W - 1, t * (H - 1)), ((1 - t) * (W - 1), H - 1), (0, (1 - t) * (H - 1))):
            verts.append(np.array([ox + px, oy + py]))
            group.append(2)
    V = np.array(verts, np.float64)
    G = np.array(group)
    cut_idx = len(others) + 2 * len(UPPER_OUTER) + np.arange(len(cut))
    low_idx = cut_idx + len(cut)
    corner_l = len(others) + len(UPPER_OUTER)  # upper-inner list starts with corner 78 ...
    corner_r = corner_l + len(UPPER_INNER) - 1  # ... and ends with 308
    V, G, keep_map = _dedupe(V, G)
    cut_idx, low_idx = keep_map[cut_idx], keep_map[low_idx]
    corner_l, corner_r = int(keep_map[corner_l]), int(keep_map[corner_r])
    tris = _delaunay(V, (ox, oy, W, H))

    hw = mouth_w / 2
    x, y = V[:, 0], V[:, 1]
    p = np.sqrt(np.clip(1 - (x / hw) ** 2, 0, 1))
    below = y - line(x)
    # how far the face reaches on each side at the jaw (its angle and the cheek beside the mouth):
    # the jaw's motion and the corners' spread die out before it, so the face's outline stays put
    edge_l = max(float(-pts[[58, 172], 0].max()), 0.6 * mouth_w)
    edge_r = max(float(pts[[288, 397], 0].min()), 0.6 * mouth_w)
    edge = np.where(x < 0, edge_l, edge_r)
    lat = 1 - _smoothstep((np.abs(x) - LAT_FLAT * mouth_w) / np.maximum(edge - LAT_FLAT * mouth_w, 1.0))
    toward_chin = np.clip(below / max(chin_y - float(line(np.array([0.0]))[0]), 1.0), 0, 1)
    jaw = (1 - 0.1 * toward_chin) * lat
    t = _smoothstep(below / lip_lo)
    lower_dy = (1 - t) * p + t * jaw
    upper_dy = -LIP_LIFT * p * (1 - _smoothstep(-below / (1.5 * lip_up)))
    open_dy = np.where(G == 1, lower_dy, np.where(G == 0, upper_dy, 0.0)) * JAW_DROP * mouth_w
    spread_dx = x * np.exp(-((x / (0.8 * mouth_w)) ** 2)) * np.exp(-((below / (1.2 * (lip_lo + lip_up))) ** 2))
    spread_dx *= 1 - _smoothstep((np.abs(x) - hw) / np.maximum(edge - hw, 1.0))
    spread_dx = np.where(G == 2, 0.0, spread_dx)

    maps = np.zeros((len(OPEN_GRID), len(SPREAD_GRID), H, W, 4), np.float32)
    for a, o in enumerate(OPEN_GRID):
        for b, s in enumerate(SPREAD_GRID):
            D = np.stack([s * spread_dx, o * open_dy], axis=1)
            maps[a, b] = _rasterise(V, V + D, tris, (ox, oy, W, H), cut_idx, low_idx, corner_l, corner_r)
    return maps, (ox, oy)


def _dedupe(V: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Drops vertices within 0.2 canonical pixels of an earlier one (keeps index mapping)."""
    keep: list[int] = []
    mapping = np.zeros(len(V), np.int64)
    for i, v in enumerate(V):
        if keep:
            d = np.linalg.norm(V[keep] - v, axis=1)
            j = int(np.argmin(d))
            if d[j] < 0.2:
                mapping[i] = j
                continue
        mapping[i] = len(keep)
        keep.append(i)
    return V[keep], G[keep], mapping


def _delaunay(V: np.ndarray, box: tuple[float, float, int, int]) -> np.ndarray:
    ox, oy, W, H = box
    sub = cv2.Subdiv2D((math.floor(ox) - 2, math.floor(oy) - 2, W + 4, H + 4))
    index = {}
    for i, (vx, vy) in enumerate(V):
        sub.insert((float(vx), float(vy)))
        index[(round(float(vx), 3), round(float(vy), 3))] = i
    tris = []
    for t in sub.getTriangleList():
        ids = [index.get((round(float(t[k]), 3), round(float(t[k + 1]), 3))) for k in (0, 2, 4)]
        if None not in ids:
            tris.append(ids)
    return np.array(tris, np.int64)


def _rasterise(
    src: np.ndarray,
    dst: np.ndarray,
    tris: np.ndarray,
    box: tuple[float, float, int, int],
    cut_idx: np.ndarray,
    low_idx: np.ndarray,
    corner_l: int,
    corner_r: int,
) -> np.ndarray:
    """[H, W, 4]: for every canonical pixel of the displaced mesh, the displacement back to its
    source (dx, dy), the inner-mouth coverage and its depth (0 at the gap's edge, 1 deepest)."""
    ox, oy, W, H = box
    ids = np.zeros((H, W), np.int32)
    affines = np.zeros((len(tris) + 1, 2, 3), np.float64)
    affines[0] = [[1, 0, 0], [0, 1, 0]]
    for k, (i, j, m) in enumerate(tris, start=1):
        d = dst[[i, j, m]]
        s = src[[i, j, m]]
        area = (d[1, 0] - d[0, 0]) * (d[2, 1] - d[0, 1]) - (d[2, 0] - d[0, 0]) * (d[1, 1] - d[0, 1])
        if abs(area) < 1e-9:
            continue
        affines[k] = cv2.getAffineTransform(d.astype(np.float32), s.astype(np.float32))
        poly = np.round((d - [ox, oy]) * 16).astype(np.int32)
        cv2.fillConvexPoly(ids, poly, k, cv2.LINE_8, shift=4)
    holes = ids == 0
    if holes.any():  # pixels on shared edges that no triangle claimed
        grown = cv2.dilate(ids.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int32)
        ids = np.where(holes, grown, ids)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    cx, cy = xx + ox, yy + oy
    A = affines[ids]
    sx = A[..., 0, 0] * cx + A[..., 0, 1] * cy + A[..., 0, 2]
    sy = A[..., 1, 0] * cx + A[..., 1, 1] * cy + A[..., 1, 2]
    out = np.zeros((H, W, 4), np.float32)
    out[..., 0] = sx - cx
    out[..., 1] = sy - cy
    # the gap: from the left corner along the cut (upper side) to the right corner, back along
    # the displaced lower lip
    poly = np.concatenate([dst[[corner_l]], dst[cut_idx], dst[[corner_r]], dst[low_idx][::-1]])
    big = np.zeros((H * SUPERSAMPLE, W * SUPERSAMPLE), np.uint8)
    cv2.fillPoly(big, [np.round((poly - [ox, oy]) * SUPERSAMPLE * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
    alpha = cv2.resize(big, (W, H), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    alpha = np.asarray(cv2.GaussianBlur(alpha, (0, 0), GAP_SOFTNESS), np.float32)  # (no cut-out edge)
    if alpha.max() > 0:
        dist = cv2.distanceTransform((big > 127).astype(np.uint8), cv2.DIST_L2, 3)
        dist = cv2.resize(dist, (W, H), interpolation=cv2.INTER_AREA)
        out[..., 3] = np.clip(dist / max(float(dist.max()), 1e-6), 0, 1)
    out[..., 2] = alpha
    return out


# -- per frame --------------------------------------------------------------------------------------
@dataclass
class Placed:
    """Pose maps carried onto one avatar frame: for the image box ``box`` (x1, y1, x2, y2), per
    pose of the grid (or for one pose), where each pixel samples the image (absolute x, y) and the
    inner mouth's coverage and depth there."""

    box: tuple[int, int, int, int]
    maps: np.ndarray  # [..., h, w, 2] float32 absolute image coordinates
    gap: np.ndarray  # [..., h, w, 2] float32 coverage, depth
    gap_boxes: np.ndarray  # [..., 4] int rows r0, r1, cols c0, c1 where coverage > 0 (r0 == r1: none)


def _weights(shape: MouthShape) -> tuple[int, int, float, float]:
    """Grid cell (a, b) of this pose and its position (ta, tb) inside it."""
    cell = []
    for v, grid in ((shape.open, _OPEN), (spread(shape), _SPREAD)):
        v = min(max(float(v), grid[0]), grid[-1])
        i = min(max(bisect.bisect_left(grid, v) - 1, 0), len(grid) - 2)
        cell.append((i, (v - grid[i]) / (grid[i + 1] - grid[i])))
    (a, ta), (b, tb) = cell
    return a, b, ta, tb


def _mix(arrays: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """sum(w * a) over the arrays whose weight is not ~0 (the weights sum to 1)."""
    pairs = [(a, w) for a, w in zip(arrays, weights, strict=True) if w > 1e-6]
    out: np.ndarray = pairs[0][0] * np.float32(pairs[0][1])
    for a, w in pairs[1:]:
        out = np.asarray(cv2.scaleAdd(a, w, out))
    return out


def _pose_map(rig: Rig, shape: MouthShape) -> np.ndarray:
    """Bilinear interpolation of the grid maps at this pose."""
    a, b, ta, tb = _weights(shape)
    m = rig.maps
    cells = [m[a, b], m[a, b + 1], m[a + 1, b], m[a + 1, b + 1]]
    return _mix(cells, [(1 - ta) * (1 - tb), (1 - ta) * tb, ta * (1 - tb), ta * tb])


def region(rig: Rig, frame_index: int, size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The image box (x1, y1, x2, y2) the rig can change on this avatar frame, clipped to it."""
    H, W = rig.maps.shape[2:4]
    ox, oy = rig.origin
    T = rig.to_image[frame_index]
    corners = np.array([[ox, oy, 1], [ox + W, oy, 1], [ox, oy + H, 1], [ox + W, oy + H, 1]]) @ T.T
    x1, y1 = np.floor(corners.min(0)).astype(int)
    x2, y2 = np.ceil(corners.max(0)).astype(int) + 1
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(size[0], x2), min(size[1], y2)
    if x2 - x1 < 2 or y2 - y1 < 2:
        return None
    return int(x1), int(y1), int(x2), int(y2)


def place(rig: Rig, frame_index: int, size: tuple[int, int], maps: np.ndarray | None = None) -> Placed | None:
    """Carries canonical pose maps (``maps``: [..., H, W, 4]; default: the whole grid) onto this
    avatar frame's image box (None: the box lies outside the image)."""
    box = region(rig, frame_index, size)
    if box is None:
        return None
    maps = rig.maps if maps is None else maps
    lead = maps.shape[:-3]
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    T = rig.to_image[frame_index]
    ox, oy = rig.origin
    # canonical map pixel -> box pixel
    M = T.copy()
    M[:, 2] = T[:, :2] @ np.array([ox, oy]) + T[:, 2] - [x1, y1]
    lin = T[:, :2].astype(np.float32)
    xx, yy = np.meshgrid(np.arange(x1, x2, dtype=np.float32), np.arange(y1, y2, dtype=np.float32))
    flat = maps.reshape(-1, *maps.shape[-3:])
    out_maps = np.empty((len(flat), h, w, 2), np.float32)
    out_gap = np.empty((len(flat), h, w, 2), np.float32)
    gap_boxes = np.zeros((len(flat), 4), np.int64)
    for k, canon in enumerate(flat):
        local = cv2.warpAffine(canon, M, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        dxc, dyc = local[..., 0], local[..., 1]
        out_maps[k, ..., 0] = xx + (lin[0, 0] * dxc + lin[0, 1] * dyc)
        out_maps[k, ..., 1] = yy + (lin[1, 0] * dxc + lin[1, 1] * dyc)
        out_gap[k] = local[..., 2:4]
        ys, xs = np.nonzero(local[..., 2] > 1e-3)
        if len(ys):
            gap_boxes[k] = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return Placed(
        box,
        out_maps.reshape(*lead, h, w, 2),
        out_gap.reshape(*lead, h, w, 2),
        gap_boxes.reshape(*lead, 4),
    )


def _at_pose(placed: Placed, shape: MouthShape) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A placed grid mixed at this pose: maps, gap, and the gap's box (r0, r1, c0, c1)."""
    a, b, ta, tb = _weights(shape)
    cells = [(a, b), (a, b + 1), (a + 1, b), (a + 1, b + 1)]
    weights = [(1 - ta) * (1 - tb), (1 - ta) * tb, ta * (1 - tb), ta * tb]
    maps = _mix([placed.maps[c] for c in cells], weights)
    gap = _mix([placed.gap[c] for c in cells], weights)
    boxes = [placed.gap_boxes[c].tolist() for c, w in zip(cells, weights, strict=True) if w > 1e-6]
    boxes = [bx for bx in boxes if bx[0] < bx[1]]
    if not boxes:
        return maps, gap, [0, 0, 0, 0]
    r0, r1 = min(bx[0] for bx in boxes), max(bx[1] for bx in boxes)
    return maps, gap, [r0, r1, min(bx[2] for bx in boxes), max(bx[3] for bx in boxes)]


def draw(frame: np.ndarray, rig: Rig, frame_index: int, shape: MouthShape, placed: Placed | None = None) -> np.ndarray:
    """``frame`` with the mouth in ``shape`` (a new array; the frame itself when nothing moves).

    ``placed``: this frame's whole grid, already placed (``place``); without it the pose's map is
    interpolated in canonical space and placed for this frame alone.
    """
    if shape.open < 0.01 and abs(spread(shape)) < 0.004:
        return frame
    if placed is None:
        one = place(rig, frame_index, (frame.shape[1], frame.shape[0]), _pose_map(rig, shape))
        if one is None:
            return frame
        box, maps, gap, gap_box = one.box, one.maps, one.gap, one.gap_boxes.tolist()
    else:
        box = placed.box
        maps, gap, gap_box = _at_pose(placed, shape)
    x1, y1, x2, y2 = box
    roi = cv2.remap(frame, maps, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)  # type: ignore[call-overload]
    r0, r1, c0, c1 = (int(v) for v in gap_box)
    if r0 < r1:
        alpha = gap[r0:r1, c0:c1, 0:1]
        depth = np.sqrt(gap[r0:r1, c0:c1, 1:2])
        edge, deep = rig.colours[0], rig.colours[1]
        colour = edge + (deep - edge) * depth
        part = roi[r0:r1, c0:c1].astype(np.float32)
        roi[r0:r1, c0:c1] = np.clip(part + (colour - part) * alpha + 0.5, 0, 255).astype(np.uint8)
    out = np.array(frame, copy=True)
    out[y1:y2, x1:x2] = roi
    return out
