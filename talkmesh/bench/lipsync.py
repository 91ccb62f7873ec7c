"""Measurements on decoded output video, shared by the renderer's quality tests and the bench:
speech energy per frame, mouth opening per frame (inner-lip gap from the face mesh, run on the
decoded frames), and their correlation at the best lag."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

FPS = 25


def decode(path: Path) -> tuple[list[np.ndarray], np.ndarray, int]:
    frames, audio, rate = [], [], 0
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.video[0]):
            frames.append(f.to_ndarray(format="bgr24"))
    with av.open(str(path)) as c:
        for a in c.decode(c.streams.audio[0]):
            audio.append(a.to_ndarray().astype(np.float32).reshape(-1))
            rate = a.sample_rate
    return frames, np.concatenate(audio), rate


def energy(audio: np.ndarray, rate: int, n: int, fps: int = FPS) -> np.ndarray:
    out = np.zeros(n)
    for i in range(n):
        seg = audio[i * rate // fps : (i + 1) * rate // fps]
        out[i] = np.sqrt(np.mean(seg**2)) if len(seg) else 0.0
    return out


LIPS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)


def mouth_region(landmarks: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Box around the lips, down to where the lower lip goes when the mouth is wide open."""
    lips = landmarks[list(LIPS)]
    mouth_w = float(np.linalg.norm(landmarks[291] - landmarks[61]))
    x1, y1 = lips.min(0) - 0.1 * mouth_w
    x2, y2 = lips.max(0) + np.array([0.1, 0.5]) * mouth_w
    return max(0, int(x1)), max(0, int(y1)), min(size[0], int(x2) + 1), min(size[1], int(y2) + 1)


def dark_area(frames: list[np.ndarray], rest: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels of ``box`` darker than half the lips' median luma, beyond those of the rest frame:
    the area of the open mouth, per frame."""
    x1, y1, x2, y2 = box
    weights = np.array([0.114, 0.587, 0.299], np.float32)
    rest_luma = rest[y1:y2, x1:x2].astype(np.float32) @ weights
    threshold = 0.5 * float(np.median(rest_luma))
    base = float((rest_luma < threshold).sum())
    return np.array([float(((f[y1:y2, x1:x2].astype(np.float32) @ weights) < threshold).sum()) - base for f in frames])


def lag_correlations(mouth: np.ndarray, speech: np.ndarray, lags: range = range(-2, 3)) -> dict[int, float]:
    """Correlation of mouth[t + lag] with speech[t] (positive lag: the mouth follows the sound)."""
    out = {}
    for lag in lags:
        a = mouth[max(0, lag) : len(mouth) + min(0, lag)]
        b = speech[max(0, -lag) : len(speech) + min(0, -lag)]
        out[lag] = float(np.corrcoef(a, b)[0, 1])
    return out
