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

CAVITY_BGR = np.array([28, 16, 22], np.float32)
TEETH_BGR = np.array([205, 210, 214], np.float32)


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
            # The gap between the upper teeth line and the lowered lower lip: a soft dark cavity
            # whose top rows carry a faint hint of teeth.
            alpha = np.zeros((int(roi_h), int(roi_w)), np.float32)
            top = line + 0.22 * mh
            half_h = 0.42 * jaw + 0.06 * mh
            centre = (round(cx * 4), round((top + half_h) * 4))
            axes = (max(1, round(0.33 * mw * scale * 4)), max(1, round(half_h * 4)))
            cv2.ellipse(alpha, centre, axes, 0, 0, 360, 1.0, -1, cv2.LINE_AA, shift=2)
            soft = cv2.GaussianBlur(alpha, (5, 5), 0)[..., None]
            colour = np.broadcast_to(CAVITY_BGR, warped.shape).copy()
            t0 = int(top)
            teeth_h = max(1, int(0.15 * jaw))
            colour[t0 : t0 + teeth_h] = 0.5 * TEETH_BGR + 0.5 * CAVITY_BGR
            w = warped.astype(np.float32)
            warped = np.clip(w + (colour - w) * soft * 0.95, 0, 255).astype(np.uint8)
        blend_into(frame, warped, (x1, y1, x2, y2), pre["mask"])
