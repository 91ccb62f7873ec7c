"""Before/after strips of the default renderer for the docs: per avatar, the photo itself then five
mouth poses (half open, wide open, rounded "o", spread "e", a little open), cropped square around
the face. The avatars are transformed copies of the default portrait (``talkmesh.bench.face_cases``).

    python -m tools.face_strips docs/faces
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from services.renderer.avatars import AvatarStore
from services.renderer.backends.base import FrameJob, MouthShape
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from talkmesh.bench.face_cases import transformed_portraits, write_avatar
from talkmesh.common.telemetry import Telemetry

STRIPS = {"rotated+20": "rotated", "mirrored": "mirrored", "tight-crop": "tight-crop"}
POSES = (
    MouthShape(0.5, 0.5, 0.0),
    MouthShape(1.0, 0.5, 0.0),
    MouthShape(0.6, 0.2, 1.0),
    MouthShape(0.4, 1.0, 0.0),
    MouthShape(0.25, 0.5, 0.0),
)
TILE = 192


def _crop(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """A square around the face (1.4 face widths), grey beyond the image's edges (a tight crop)."""
    face_w = float(np.linalg.norm(landmarks[454] - landmarks[234]))
    cx, cy = landmarks[[234, 454, 152, 10]].mean(0)
    half = round(0.7 * face_w)
    pad = cv2.copyMakeBorder(frame, half, half, half, half, cv2.BORDER_CONSTANT, value=(128, 128, 128))
    x, y = round(float(cx)), round(float(cy))
    tile = pad[y : y + 2 * half, x : x + 2 * half]
    return cv2.resize(tile, (TILE, TILE), interpolation=cv2.INTER_AREA)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    args = p.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        config = RendererConfig(avatars=AvatarConfig(cache_dir=tmp))
        backend = VisemeBackend(config, Telemetry("face-strips"))
        store = AvatarStore(config.avatars, {"viseme": backend})
        for case in transformed_portraits():
            if case.name not in STRIPS:
                continue
            path = write_avatar(case, Path(tmp))
            avatar, _ = store.register(path.read_bytes(), path.name, case.name)
            assert avatar.landmarks is not None
            rest = np.asarray(avatar.frames[0])
            tiles = [_crop(rest, avatar.landmarks[0])]
            for i, shape in enumerate(POSES):
                frame = backend.render(avatar, [FrameJob("strip", i, 0, True, -20.0, mouth=shape)])[0]
                tiles.append(_crop(frame, avatar.landmarks[0]))
            out = args.out_dir / f"{STRIPS[case.name]}.png"
            cv2.imwrite(str(out), np.concatenate(tiles, axis=1))
            print(out)


if __name__ == "__main__":
    main()
