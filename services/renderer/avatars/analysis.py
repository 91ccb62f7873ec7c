"""Face analysis of an avatar: which face, where its landmarks are on every frame, how sure we are.

Photos: BlazeFace on the whole image (downscaled; tiled for large scenes; padded when the head
touches the border), the chosen face (largest, or by index or point), then the face mesh on a
rotated crop, refined once from its own landmarks. Videos: the first frame as a photo, then each
frame's crop from the previous frame's landmarks (re-detecting near the last position when the mesh
loses the face); landmarks are smoothed over time with a forward-backward One-Euro filter, and
frames where the face is lost are reported and marked, never animated.

Without the model files, OpenCV's Haar cascade finds face boxes and a lip-colour heuristic the mouth
(no landmarks); the renderer then uses a geometric mouth model.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources

import cv2
import numpy as np

from services.renderer.avatars.face_models import (
    CHIN,
    FACE_OVAL,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    Detection,
    FaceModels,
    HaarFaces,
    Roi,
    roi_from_eyes,
    roi_from_landmarks,
)
from talkmesh.common.errors import InvalidArgument
from talkmesh.common.faces import NO_FACE_ADVICE

# A face-mesh presence score under this marks the frame's face as lost.
MIN_MESH_SCORE = 0.5
# Videos: fewer kept frames than this fraction fails the registration.
MIN_KEPT_FRACTION = 0.5
# Outer lip contour (image-left corner first, upper lip then lower lip back).
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
NOSE_MID = 5  # MuseTalk centres its crop vertically on the nose (68-point index 29)
CHEEK_LEFT, CHEEK_RIGHT = 234, 454
TEMPLATE = "assets/face_template.npy"


@dataclass(frozen=True)
class FaceChoice:
    """Which face to animate when there are several: by index (largest first) or by a point."""

    index: int = 0
    point: tuple[float, float] | None = None
    #: frame pixels per pixel of the upload as shown (the point is in the upload's pixels, the
    #: frames may be stored scaled down: decode.Decoded.scale); face boxes in messages are the
    #: upload's too
    scale: float = 1.0


@dataclass
class FaceTrack:
    """Per-frame face geometry of an avatar (N frames)."""

    boxes: np.ndarray  # [N, 4] float32 face box x1, y1, x2, y2
    mouth_boxes: np.ndarray  # [N, 4] float32 outer-lip box
    landmarks: np.ndarray | None  # [N, 468, 2] float32 image pixels (None with the Haar fallback)
    scores: np.ndarray  # [N] float32 landmark confidence (face-mesh presence score), 0 where lost
    kept: np.ndarray  # [N] bool: the face was found on this frame
    faces_found: int = 1  # faces on the first frame
    face_index: int = 0  # the chosen one, in largest-first order
    detector: str = "mediapipe"
    crop_boxes: dict[str, np.ndarray] = field(default_factory=dict)  # backend -> [N, 4] float32

    @property
    def mean_confidence(self) -> float:
        return float(self.scores[self.kept].mean()) if self.kept.any() else 0.0


def _choose(dets: list[Detection], choice: FaceChoice, n_frames: int) -> tuple[Detection, int]:
    found = f"{len(dets)} face(s) found at {_boxes_text(dets, choice.scale)}"
    if choice.point is not None:
        x, y = choice.point
        inside = [i for i, d in enumerate(dets) if d.contains(x * choice.scale, y * choice.scale)]
        if not inside:
            raise InvalidArgument("meta.face_point", f"no face at ({x:g}, {y:g}); {found}")
        i = min(inside, key=lambda i: dets[i].area)
        return dets[i], i
    if not 0 <= choice.index < len(dets):
        raise InvalidArgument("meta.face_index", f"{choice.index} is out of range: {found}")
    return dets[choice.index], choice.index


def _boxes_text(dets: list[Detection], scale: float = 1.0) -> str:
    """The boxes in the upload's pixels (``scale``: frame pixels per upload pixel)."""
    return ", ".join("[" + ",".join(f"{v / scale:.0f}" for v in d.box[:4]) + "]" for d in dets)


def _no_face(found: int, total: int) -> InvalidArgument:
    return InvalidArgument(
        "data", f"no face found ({found} of {total} frame(s) have a detectable face): {NO_FACE_ADVICE}"
    )


class FaceAnalyzer:
    """Finds and follows one face through an avatar's frames (thread-safe; models are shared)."""

    def __init__(self, models: FaceModels | None) -> None:
        self.models = models
        self.haar = HaarFaces() if models is None else None
        self.detector = "mediapipe" if models is not None else "haar"

    # -- detection -----------------------------------------------------------------------------
    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Faces on one frame, largest first, confirmed by the face mesh where it is available."""
        if self.models is None:
            assert self.haar is not None
            return self.haar.detect(frame)
        dets = self.models.detector.detect(frame)
        if not dets:  # a head that fills the picture: give the detector some border around it
            h, w = frame.shape[:2]
            pad = max(h, w) // 2
            padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_CONSTANT)
            dets = [
                Detection(
                    (d.box[0] - pad, d.box[1] - pad, d.box[2] - pad, d.box[3] - pad),
                    d.score,
                    d.keypoints - np.float32(pad),
                )
                for d in self.models.detector.detect(padded)
            ]
        # the mesh confirms a face (BlazeFace alone finds faces in wallpaper at scores near 0.5)
        return [d for d in dets if self.mesh(frame, roi_from_eyes(d.box, d.keypoints[0], d.keypoints[1]))[1] > 0]

    def mesh(self, frame: np.ndarray, roi: Roi) -> tuple[np.ndarray, float]:
        """Landmarks [468, 2] on the crop, refined once from their own crop, and the score."""
        assert self.models is not None
        pts, score = self.models.mesh.run(frame, roi)
        if score < MIN_MESH_SCORE:
            return pts[:, :2], 0.0
        pts2, score2 = self.models.mesh.run(frame, roi_from_landmarks(pts))
        if score2 < MIN_MESH_SCORE:
            return pts[:, :2], score
        return pts2[:, :2], score2

    # -- whole avatars -------------------------------------------------------------------------
    def analyse(
        self,
        frames: np.ndarray,
        choice: FaceChoice = FaceChoice(),
        fps: float = 25.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> FaceTrack:
        n = len(frames)
        first = np.asarray(frames[0])
        dets = self.detect(first)
        if not dets:
            if n == 1:
                raise _no_face(0, 1)
            # a video whose first frame has no face: start from the first frame that has one
            start = next((i for i in range(1, n) if self.detect(np.asarray(frames[i]))), None)
            if start is None:
                raise _no_face(0, n)
            return self._analyse_from(frames, start, choice, fps, progress)
        return self._analyse_from(frames, 0, choice, fps, progress, dets)

    def _analyse_from(
        self,
        frames: np.ndarray,
        start: int,
        choice: FaceChoice,
        fps: float,
        progress: Callable[[int, int], None] | None,
        dets: list[Detection] | None = None,
    ) -> FaceTrack:
        n = len(frames)
        dets = dets if dets is not None else self.detect(np.asarray(frames[start]))
        chosen, index = _choose(dets, choice, n)
        if self.models is None:
            return self._haar_track(frames, chosen, len(dets), index)
        pts_all = np.zeros((n, 468, 2), np.float32)
        scores = np.zeros(n, np.float32)
        frame = np.asarray(frames[start])
        pts, score = self.mesh(frame, roi_from_eyes(chosen.box, chosen.keypoints[0], chosen.keypoints[1]))
        if score == 0.0:
            raise _no_face(0, n)
        pts_all[start], scores[start] = pts, score
        # follow the face forwards from ``start``, then backwards to the frames before it
        for order in (range(start + 1, n), range(start - 1, -1, -1)):
            last = pts
            for i in order:
                frame = np.asarray(frames[i])
                cur, score = self.mesh(frame, roi_from_landmarks(last))
                if score == 0.0 or _jumped(last, cur):
                    cur, score = self._redetect(frame, last)
                if score > 0.0:
                    pts_all[i], scores[i], last = cur, score, cur
                if progress is not None:
                    progress(i, n)
        kept = scores > 0
        found = int(kept.sum())
        if found < MIN_KEPT_FRACTION * n:
            raise _no_face(found, n)
        pts_all = _fill_lost(pts_all, kept)
        if n > 2:
            width = float(np.median(_face_width(pts_all[kept])))
            pts_all = one_euro_both_ways(pts_all, fps, scale=width)
        return self._landmark_track(pts_all, scores, kept, len(dets), index, fps)

    def _redetect(self, frame: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, float]:
        """The face nearest to where it was, found again from scratch (or a score of 0)."""
        centre = last.mean(0)
        width = float(_face_width(last[None])[0])
        best: tuple[np.ndarray, float] | None = None
        for d in self.detect(frame):
            dc = np.array([(d.box[0] + d.box[2]) / 2, (d.box[1] + d.box[3]) / 2])
            if np.linalg.norm(dc - centre) > 0.6 * width:
                continue  # another face, or the wrong place: not ours
            pts, score = self.mesh(frame, roi_from_eyes(d.box, d.keypoints[0], d.keypoints[1]))
            if score > 0 and (best is None or score > best[1]):
                best = (pts, score)
        return best if best is not None else (last, 0.0)

    def _landmark_track(
        self, pts: np.ndarray, scores: np.ndarray, kept: np.ndarray, faces: int, index: int, fps: float
    ) -> FaceTrack:
        oval = pts[:, FACE_OVAL]
        boxes = np.concatenate([oval.min(1), oval.max(1)], axis=1).astype(np.float32)
        lips = pts[:, LIPS_OUTER]
        mouth = np.concatenate([lips.min(1), lips.max(1)], axis=1).astype(np.float32)
        return FaceTrack(
            boxes=boxes,
            mouth_boxes=mouth,
            landmarks=pts.astype(np.float32),
            scores=scores,
            kept=kept,
            faces_found=faces,
            face_index=index,
            detector="mediapipe",
            crop_boxes={"wav2lip": wav2lip_boxes(pts), "musetalk": musetalk_boxes(pts)},
        )

    def _haar_track(self, frames: np.ndarray, chosen: Detection, faces: int, index: int) -> FaceTrack:
        assert self.haar is not None
        n = len(frames)
        boxes: list[tuple[float, float, float, float] | None] = [None] * n
        boxes[0] = chosen.box
        last = np.array(chosen.box)
        for i in range(1, n):
            near = [
                d for d in self.haar.detect(np.asarray(frames[i]))
                if np.abs(np.array(d.box) - last).max() < 0.5 * (last[2] - last[0])
            ]  # fmt: skip
            if near:
                boxes[i] = near[0].box
                last = np.array(near[0].box)
        kept = np.array([b is not None for b in boxes])
        if kept.sum() < MIN_KEPT_FRACTION * n:
            raise _no_face(int(kept.sum()), n)
        face = smooth_boxes(boxes)
        mouth = smooth_boxes([haar_mouth_box(np.asarray(f), tuple(b)) for f, b in zip(frames, face, strict=True)])
        return FaceTrack(
            boxes=face.astype(np.float32),
            mouth_boxes=mouth.astype(np.float32),
            landmarks=template_landmarks(mouth.astype(np.float32)),
            scores=kept.astype(np.float32),
            kept=kept,
            faces_found=faces,
            face_index=index,
            detector="haar",
        )


def template_landmarks(mouth_boxes: np.ndarray) -> np.ndarray:
    """[N, 468, 2] landmarks of a standard face placed on each frame's mouth box (upright).

    The template is the default portrait's face mesh in units of its interocular distance, with
    the mouth centre at the origin (services/renderer/assets/face_template.npy); the Haar fallback
    uses it so the renderer has one code path.
    """
    template = np.load(io.BytesIO(resources.files("services.renderer").joinpath(TEMPLATE).read_bytes()))
    mouth_w_template = float(np.linalg.norm(template[MOUTH_RIGHT] - template[MOUTH_LEFT]))
    centre = np.stack([(mouth_boxes[:, 0] + mouth_boxes[:, 2]) / 2, (mouth_boxes[:, 1] + mouth_boxes[:, 3]) / 2], 1)
    iod = (mouth_boxes[:, 2] - mouth_boxes[:, 0]) / mouth_w_template
    return np.asarray(centre[:, None, :] + template[None] * iod[:, None, None], np.float32)


def _face_width(pts: np.ndarray) -> np.ndarray:
    return np.asarray(np.linalg.norm(pts[:, CHEEK_RIGHT] - pts[:, CHEEK_LEFT], axis=-1))


def _jumped(a: np.ndarray, b: np.ndarray) -> bool:
    """The mesh latched onto something else: its centre moved by over half a face width."""
    width = float(_face_width(a[None])[0])
    return bool(np.linalg.norm(a.mean(0) - b.mean(0)) > 0.5 * max(width, 1.0))


def _fill_lost(pts: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """Landmarks of lost frames interpolated from the kept ones (only so geometry stays smooth;
    those frames are never animated)."""
    if kept.all():
        return pts
    idx = np.nonzero(kept)[0]
    out = pts.copy()
    flat = pts.reshape(len(pts), -1)
    t = np.arange(len(pts))
    filled = np.stack([np.interp(t, idx, flat[idx, k]) for k in range(flat.shape[1])], axis=1)
    out[:] = filled.reshape(pts.shape)
    return out


def one_euro(x: np.ndarray, fps: float, min_cutoff: float, beta: float, d_cutoff: float = 1.0) -> np.ndarray:
    """One-Euro filter (Casiez et al. 2012) along axis 0, elementwise over the other axes."""

    def alpha(cutoff: np.ndarray | float) -> np.ndarray | float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * fps)

    out = np.empty_like(x, dtype=np.float64)
    prev = x[0].astype(np.float64)
    dprev = np.zeros_like(prev)
    out[0] = prev
    a_d = alpha(d_cutoff)
    for i in range(1, len(x)):
        dx = (x[i] - prev) * fps
        dprev = dprev + a_d * (dx - dprev)
        a = alpha(min_cutoff + beta * np.abs(dprev))
        prev = prev + a * (x[i] - prev)
        out[i] = prev
    return out


def one_euro_both_ways(
    pts: np.ndarray, fps: float, scale: float, min_cutoff: float = 1.5, beta: float = 4.0
) -> np.ndarray:
    """Zero-lag smoothing for offline videos: the mean of a forward and a backward One-Euro pass.

    Coordinates are filtered in units of the face width, so the filter behaves the same at any
    resolution (jitter is removed, real head motion passes with little lag).
    """
    unit = pts / max(scale, 1.0)
    fwd = one_euro(unit, fps, min_cutoff, beta)
    bwd = one_euro(unit[::-1], fps, min_cutoff, beta)[::-1]
    return np.asarray((fwd + bwd) / 2 * max(scale, 1.0), np.float32)


# -- crops for the neural backends ----------------------------------------------------------------
def wav2lip_boxes(pts: np.ndarray) -> np.ndarray:
    """Wav2Lip's training crops were S3FD face boxes (brow to chin, cheek to cheek) plus 10 px of
    chin at ~200 px faces: from the landmarks, the face oval's width, from the mid-forehead to the
    chin plus 5 % of the face height."""
    oval = pts[:, FACE_OVAL]
    x1, x2 = oval[..., 0].min(1), oval[..., 0].max(1)
    top, chin = oval[..., 1].min(1), pts[:, CHIN, 1]
    h = chin - top
    y1 = top + 0.15 * h  # S3FD boxes start below the hairline
    y2 = chin + 0.05 * h
    return np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)


def musetalk_boxes(pts: np.ndarray) -> np.ndarray:
    """MuseTalk's preparation: the landmarks' horizontal extent, from the chin up to as far above
    the nose as the chin is below it (the nose sits at the crop's vertical centre)."""
    oval = pts[:, FACE_OVAL]
    x1, x2 = oval[..., 0].min(1), oval[..., 0].max(1)
    chin = pts[:, CHIN, 1]
    nose = pts[:, NOSE_MID, 1]
    y1 = nose - (chin - nose)
    return np.stack([x1, y1, x2, chin], axis=1).astype(np.float32)


# -- the Haar fallback --------------------------------------------------------------------------------
def haar_mouth_box(frame: np.ndarray, face: tuple[float, ...]) -> tuple[int, int, int, int]:
    """A geometric estimate from the face box, refined with lip colour (Lab a*, redness)."""
    x1, y1, x2, y2 = (round(v) for v in face[:4])
    w, h = x2 - x1, y2 - y1
    gx1, gx2 = x1 + int(0.27 * w), x1 + int(0.73 * w)
    gy1, gy2 = y1 + int(0.66 * h), y1 + int(0.90 * h)
    sx1, sx2 = max(0, gx1 - w // 10), min(frame.shape[1], gx2 + w // 10)
    sy1, sy2 = max(0, gy1 - h // 12), min(frame.shape[0], gy2 + h // 12)
    region = frame[sy1:sy2, sx1:sx2]
    if region.size == 0:
        return gx1, gy1, gx2, gy2
    a = cv2.cvtColor(region, cv2.COLOR_BGR2LAB)[..., 1].astype(np.float32)
    mask = (a > a.mean() + 1.0 * a.std()).astype(np.uint8)
    n, _labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    if n > 1:
        best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        bx, by, bw, bh, area = stats[best]
        if area > 0.01 * region.shape[0] * region.shape[1] and bw > 0.25 * w and bh < 0.3 * h:
            cx1, cy1 = sx1 + bx, sy1 + by
            return (
                int(min(gx1, cx1)),
                int(max(gy1, cy1 - bh // 2) if cy1 - bh // 2 > y1 + 0.55 * h else gy1),
                int(max(gx2, cx1 + bw)),
                int(max(gy2, cy1 + bh)),
            )
    return gx1, gy1, gx2, gy2


def smooth_boxes(boxes: Sequence[tuple[float, ...] | None], window: int = 5) -> np.ndarray:
    """Fills missing detections from neighbours, then a moving average over ``window`` frames."""
    idx = [i for i, b in enumerate(boxes) if b is not None]
    arr = np.zeros((len(boxes), 4), np.float32)
    known = np.array([boxes[i] for i in idx], np.float32)
    for k in range(4):
        arr[:, k] = np.interp(np.arange(len(boxes)), idx, known[:, k])
    if len(boxes) > 2 and window > 1:
        pad = window // 2
        padded = np.pad(arr, ((pad, pad), (0, 0)), mode="edge")
        kernel = np.ones(window, np.float32) / window
        arr = np.stack([np.convolve(padded[:, k], kernel, mode="valid") for k in range(4)], axis=1)
    return np.round(arr).astype(np.int32)
