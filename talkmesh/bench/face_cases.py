"""Avatars made from the default portrait by known transforms, shared by the renderer's face tests
and its bench: a 4000x3000 scene, rotations of +-20 degrees, a mirror, a tight crop, two faces in
one image (the largest, the second), a short video panning and rotating the head."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from services.renderer.avatars import default_avatar_bytes


def portrait() -> np.ndarray:
    """The default avatar's portrait (BGR)."""
    return np.asarray(cv2.imdecode(np.frombuffer(default_avatar_bytes(), np.uint8), cv2.IMREAD_COLOR))


def rotation(angle: float, size: int = 512) -> np.ndarray:
    return np.asarray(cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0))


@dataclass
class Case:
    name: str
    frames: list[np.ndarray]  # the avatar's frames
    transforms: list[np.ndarray]  # portrait -> avatar frame, per frame
    face_index: int = 0


def transformed_portraits() -> list[Case]:
    img = portrait()
    cases = []
    rng = np.random.default_rng(1)
    scene = cv2.resize(rng.integers(40, 220, (30, 40, 3), dtype=np.uint8), (4000, 3000), interpolation=cv2.INTER_CUBIC)
    m = np.array([[2.5, 0, 2300], [0, 2.5, 1200]], np.float64)
    scene[1200 : 1200 + 1280, 2300 : 2300 + 1280] = cv2.resize(img, (1280, 1280), interpolation=cv2.INTER_CUBIC)
    cases.append(Case("scene-4000x3000", [scene], [m]))
    for angle in (20, -20):
        r = rotation(angle)
        cases.append(
            Case(f"rotated{angle:+d}", [cv2.warpAffine(img, r, (512, 512), borderMode=cv2.BORDER_REPLICATE)], [r])
        )
    mirror = np.array([[-1, 0, 511], [0, 1, 0]], np.float64)
    cases.append(Case("mirrored", [cv2.flip(img, 1)], [mirror]))
    crop = np.array([[1, 0, -160], [0, 1, -60]], np.float64)
    cases.append(Case("tight-crop", [np.ascontiguousarray(img[60:200, 160:290])], [crop]))
    small = cv2.resize(img, (384, 384), interpolation=cv2.INTER_AREA)
    twice = np.concatenate([img, cv2.copyMakeBorder(small, 64, 64, 0, 0, cv2.BORDER_REPLICATE)], axis=1)
    cases.append(Case("twice-largest", [twice], [np.eye(2, 3)]))
    cases.append(Case("twice-second", [twice], [np.array([[0.75, 0, 512], [0, 0.75, 64]])], face_index=1))
    frames, transforms = [], []
    for t in range(16):
        r = rotation(12 * np.sin(t / 4))
        r[0, 2] += 20 * np.sin(t / 5)
        r[1, 2] += 8 * np.cos(t / 6)
        frames.append(cv2.warpAffine(img, r, (512, 512), borderMode=cv2.BORDER_REPLICATE))
        transforms.append(r)
    cases.append(Case("video-pan-rotate", frames, transforms))
    return cases


def write_avatar(case: Case, tmp: Path) -> Path:
    if len(case.frames) == 1:
        path = tmp / f"{case.name}.png"
        cv2.imwrite(str(path), case.frames[0])
        return path
    path = tmp / f"{case.name}.mp4"
    h, w = case.frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25, (w, h))
    for f in case.frames:
        writer.write(f)
    writer.release()
    return path
