"""Feathered masks and alpha blending: paste a rendered region back with no visible box edge."""

from __future__ import annotations

import numpy as np


def feathered_ellipse(height: int, width: int, feather: float = 0.35) -> np.ndarray:
    """A float32 [H, W, 1] mask: 1 in the middle, falling smoothly to exactly 0 at the border.

    ``feather`` is the fraction of each half-axis over which the mask fades (a smoothstep, so the
    blend has no first-derivative jump either).
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    r = np.sqrt(((yy - cy) / (height / 2.0)) ** 2 + ((xx - cx) / (width / 2.0)) ** 2)
    inner = 1.0 - feather
    t = np.clip((1.0 - r) / max(feather, 1e-6), 0.0, 1.0)
    t = np.where(r <= inner, 1.0, t)
    mask = t * t * (3.0 - 2.0 * t)
    return mask.astype(np.float32)[..., None]


def blend_into(frame: np.ndarray, patch: np.ndarray, box: tuple[int, int, int, int], mask: np.ndarray) -> None:
    """In place: frame[box] = patch * mask + frame[box] * (1 - mask). ``box`` is x1, y1, x2, y2."""
    x1, y1, x2, y2 = box
    roi = frame[y1:y2, x1:x2]
    out = roi.astype(np.float32)
    out += (patch.astype(np.float32) - out) * mask
    frame[y1:y2, x1:x2] = np.clip(out + 0.5, 0, 255).astype(np.uint8)

