"""The optional BiSeNet face parser of MuseTalk's blend (``musetalk.face_parser``).

MuseTalk pastes its generated face through a mask made from a face-parsing network (BiSeNet,
face-parsing.PyTorch, 19 classes; ``python -m tools.export_face_parser`` writes the ONNX file):
the face crop is resized to 512x512 (bilinear), parsed, and the chosen classes make the mask; only
its lower half (MuseTalk keeps the talking area below half the crop's height) is kept, and it is
blurred with a kernel a tenth of the crop wide. The modes are MuseTalk's:

- ``raw``: skin (1), mouth (11), upper and lower lip (12, 13);
- ``neck``: ``raw`` and the neck (14);
- ``jaw`` (MuseTalk 1.5's default): the skin grown by a cone-shaped dilation (at 512 px: 16 rows up,
  6 down, up to 10 columns to each side), narrowed at the cheeks (an erosion outside the central
  160 of 512 columns), without the nose (10), with the mouth and lips.

The mask here is in the renderer's model crop (the face box + padding) and fades to zero at the
crop's border, so no box edge shows in the paste.
"""

from __future__ import annotations

import cv2
import numpy as np

from services.renderer.backends.onnx_models import OnnxModel, Signature, TensorSpec

SIZE = 512
N_CLASSES = 19
SKIN, NOSE, MOUTH, UPPER_LIP, LOWER_LIP, NECK = 1, 10, 11, 12, 13, 14
FACE_PARSER = Signature(
    inputs=(TensorSpec("image", (None, 3, SIZE, SIZE)),),
    outputs=(TensorSpec("logits", (None, N_CLASSES, SIZE, SIZE)),),
)
#: MuseTalk keeps the mask below this fraction of the crop's height
UPPER_BOUNDARY = 0.5
#: half-width of the central band of the 512 px parse where the jaw's dilation is kept whole
CHEEK_BAND = 80


def jaw_kernel(cone: int = 21, tail: int = 12) -> np.ndarray:
    """The cone-then-column structuring element of the ``jaw`` dilation ([cone + tail] square):
    rows from the middle of the cone down widen by two pixels a row, the tail keeps the last width."""
    n = cone + tail
    k = np.zeros((n, n), np.uint8)
    c = n // 2
    for row in range(cone // 2, n):
        half = min(row, cone - 1) - cone // 2
        k[row, max(0, c - half) : c + half + 1] = 1
    return k


def class_mask(parsing: np.ndarray, mode: str) -> np.ndarray:
    """uint8 {0, 255} [512, 512] of a class map for ``mode`` (``raw``, ``neck``, ``jaw``)."""
    lips = np.isin(parsing, (MOUTH, UPPER_LIP, LOWER_LIP))
    if mode == "raw":
        keep = lips | (parsing == SKIN)
    elif mode == "neck":
        keep = lips | np.isin(parsing, (SKIN, NECK))
    elif mode == "jaw":
        skin = (parsing == SKIN).astype(np.uint8) * 255
        grown = cv2.dilate(skin, jaw_kernel(), iterations=1)
        narrow = cv2.erode(grown, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (35, 3)), iterations=2)
        cols = np.arange(parsing.shape[1])
        centre = parsing.shape[1] // 2
        cheeks = (cols < centre - CHEEK_BAND) | (cols >= centre + CHEEK_BAND)
        region = np.where(cheeks[None, :], narrow, grown) > 0
        keep = (region & (parsing != NOSE)) | lips
    else:
        raise ValueError(f"face parser mode {mode!r}")
    return keep.astype(np.uint8) * 255


def border_fade(size: int, border: int) -> np.ndarray:
    """[size, size] weight: 1 inside, ramping to 0 over the last ``border`` pixels of every edge."""
    x = np.arange(size, dtype=np.float32) + 0.5
    ramp = np.clip(np.minimum(x, size - x) / border, 0.0, 1.0)
    return (ramp[:, None] * ramp[None, :]).astype(np.float32)


class FaceParser:
    """Blend masks of face crops from a BiSeNet ONNX model."""

    def __init__(self, model: OnnxModel, mode: str = "jaw", batch: int = 4) -> None:
        self.model = model
        self.mode = mode
        self.batch = max(1, batch)

    def parse(self, crops_bgr: np.ndarray) -> np.ndarray:
        """Class maps [N, 512, 512] (int64) of [N, S, S, 3] uint8 BGR crops."""
        out = []
        for start in range(0, len(crops_bgr), self.batch):
            chunk = crops_bgr[start : start + self.batch]
            rgb = np.stack([cv2.resize(c[..., ::-1], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for c in chunk])
            image = np.ascontiguousarray(rgb.transpose(0, 3, 1, 2), dtype=np.float32) * (1.0 / 255.0)
            out.append(self.model.run({"image": image})[0].argmax(axis=1))
        return np.concatenate(out)

    def masks(self, crops_bgr: np.ndarray, size: int) -> np.ndarray:
        """Blend weights [N, size, size] float32 in [0, 1], one per crop."""
        parsed = self.parse(crops_bgr)
        kernel = int(0.1 * size // 2 * 2) + 1
        fade = border_fade(size, max(2, size // 32))
        out = np.empty((len(parsed), size, size), np.float32)
        for i, p in enumerate(parsed):
            m = cv2.resize(class_mask(p, self.mode), (size, size), interpolation=cv2.INTER_NEAREST)
            m[: int(size * UPPER_BOUNDARY)] = 0
            blurred = cv2.GaussianBlur(m, (kernel, kernel), 0).astype(np.float32) / 255.0
            out[i] = blurred * fade
        return out
