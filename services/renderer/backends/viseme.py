"""The default backend: a procedural viseme renderer that needs no model weights.

Per avatar it caches the geometry of a region around the mouth (down to the chin), base remap grids,
the jaw and lip displacement profiles and a feathered blend mask. Per frame it warps the real lips
and jaw of the face with one ``cv2.remap`` of that small region (jaw drop, mouth width, rounding),
draws the mouth interior (a dark cavity with a hint of upper teeth) with soft edges, and blends the
region back. Cost is dominated by a copy of the frame; the region itself is a few thousand pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from services.renderer.backends.base import Avatar, FrameJob, MouthShape, RenderBackend
from services.renderer.blend import blend_into, feathered_ellipse
from services.renderer.config import RendererConfig
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import audio_features_pb2 as fpb

# Mouth interior: a dark red-brown cavity, darkest in the middle, lighter towards the lips, with a
# hint of the upper teeth along its top edge and of the tongue at the bottom when wide open.
CAVITY_DEEP_BGR = np.array([16, 12, 34], np.float32)
CAVITY_EDGE_BGR = np.array([38, 34, 88], np.float32)
TEETH_BGR = np.array([196, 202, 210], np.float32)
TONGUE_BGR = np.array([70, 72, 150], np.float32)


class VisemeBackend(RenderBackend):
    name = "viseme"
    feature_type = fpb.FEATURE_TYPE_ACTIVITY

    def __init__(self, config: RendererConfig, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry

    def prepare(self, avatar: Avatar) -> None:
        mb = avatar.mouth_boxes.astype(np.float32)
        mw = float(np.median(mb[:, 2] - mb[:, 0]))
        mh = float(np.median(mb[:, 3] - mb[:, 1]))
        roi_w = round(2.1 * mw) // 2 * 2
        roi_h = round(5.0 * mh) // 2 * 2
        ox, oy = -roi_w // 2, -round(1.5 * mh)  # ROI origin relative to the mouth centre
        xx, yy = np.meshgrid(np.arange(roi_w, dtype=np.float32), np.arange(roi_h, dtype=np.float32))
        cx, line = roi_w / 2.0, float(-oy)
        hx = np.exp(-(((xx[0] - cx) / (0.62 * mw)) ** 2)).astype(np.float32)
        d = (yy[:, 0] - line) / mh
        vy = np.where(d < -0.2, 0.0, np.where(d < 0.35, (d + 0.2) / 0.55, np.clip(1 - (d - 0.35) / 3.1, 0, 1)))
        lips = np.exp(-((d / 0.9) ** 2)).astype(np.float32)  # rows where width/rounding act
        avatar.extras[self.name] = {
            "geom": np.array([roi_w, roi_h, ox, oy, mw, mh], np.float32),
            "xx": xx,
            "yy": yy,
            "hx": hx,
            "vy": vy.astype(np.float32),
            "lips": lips,
            "mask": feathered_ellipse(roi_h, roi_w, feather=0.45),
        }

    def render(self, avatar: Avatar, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        if self.name not in avatar.extras:
            self.prepare(avatar)
        pre = avatar.extras[self.name]
        out = []
        for job in jobs:
            frame = np.array(avatar.frames[job.avatar_frame], copy=True)
            self.draw(frame, avatar.mouth_boxes[job.avatar_frame], job.mouth or MouthShape(), pre)
            out.append(frame)
        return out

    @staticmethod
    def draw(frame: np.ndarray, mouth_box: np.ndarray, shape: MouthShape, pre: dict[str, Any]) -> None:
        roi_w, roi_h, ox, oy, mw, mh = (float(v) for v in pre["geom"])
        mcx = (int(mouth_box[0]) + int(mouth_box[2])) // 2
        mcy = (int(mouth_box[1]) + int(mouth_box[3])) // 2
        x1, y1 = mcx + int(ox), mcy + int(oy)
        x2, y2 = x1 + int(roi_w), y1 + int(roi_h)
        if x1 < 0 or y1 < 0 or x2 > frame.shape[1] or y2 > frame.shape[0]:
            return  # mouth too close to the border to animate; the frame stays as it is
        if shape.open < 0.01 and abs(shape.width - 0.5) < 0.02 and shape.round < 0.02:
            return
        roi = frame[y1:y2, x1:x2]
        cx, line = roi_w / 2.0, -oy
        jaw = shape.open * 1.0 * mh
        scale = 1.0 + 0.3 * (shape.width - 0.5) - 0.22 * shape.round
        hx, vy, lips = pre["hx"], pre["vy"], pre["lips"]
        xx, yy = pre["xx"], pre["yy"]
        local = lips[:, None] * hx[None, :]
        map_x = cx + (xx - cx) / (1.0 + (scale - 1.0) * local)
        map_y = yy - jaw * vy[:, None] * hx[None, :]
        warped = cv2.remap(roi, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if jaw >= 1.0:
            warped = _draw_cavity(warped, xx, yy, cx, line + 0.22 * mh, 0.42 * jaw + 0.06 * mh, 0.33 * mw * scale, jaw)
        blend_into(frame, warped, (x1, y1, x2, y2), pre["mask"])


def _draw_cavity(
    warped: np.ndarray,
    xx: np.ndarray,
    yy: np.ndarray,
    cx: float,
    top: float,
    half_h: float,
    half_w: float,
    jaw: float,
) -> np.ndarray:
    """Paints the open mouth: an ellipse hanging below ``top`` (the upper lip / teeth line).

    Only the ellipse's bounding rows and columns are touched; the edge is anti-aliased over about
    1.5 px so the cavity has no hard outline.
    """
    cy = top + half_h
    h, w = warped.shape[:2]
    r0, r1 = max(0, int(cy - half_h - 2)), min(h, int(cy + half_h + 3))
    c0, c1 = max(0, int(cx - half_w - 2)), min(w, int(cx + half_w + 3))
    if r1 <= r0 or c1 <= c0:
        return warped
    u = (xx[r0:r1, c0:c1] - cx) / max(half_w, 1.0)
    v = (yy[r0:r1, c0:c1] - cy) / max(half_h, 1.0)
    r2 = u * u + v * v
    # signed distance to the rim in pixels (approximately), turned into a soft coverage
    edge_px = (1.0 - np.sqrt(r2)) * min(half_w, half_h)
    alpha = np.clip(edge_px / 1.5 + 0.5, 0.0, 1.0)[..., None] * 0.96
    depth = np.clip(r2, 0.0, 1.0)[..., None]
    colour = CAVITY_DEEP_BGR + (CAVITY_EDGE_BGR - CAVITY_DEEP_BGR) * depth
    teeth = np.clip((-0.55 - v) / 0.45, 0.0, 1.0)[..., None] * min(1.0, jaw / 6.0) * 0.55
    colour = colour + (TEETH_BGR - colour) * teeth
    tongue = np.clip((v - 0.45) / 0.55, 0.0, 1.0)[..., None] * min(1.0, max(0.0, jaw - 8.0) / 10.0) * 0.5
    colour = colour + (TONGUE_BGR - colour) * tongue
    region = warped[r0:r1, c0:c1].astype(np.float32)
    out = warped.copy()
    out[r0:r1, c0:c1] = np.clip(region + (colour - region) * alpha + 0.5, 0, 255).astype(np.uint8)
    return out
