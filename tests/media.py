"""Decoding what talkmesh produced, with PyAV, for assertions; the clips tests upload as avatars."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from services.renderer.avatars import default_avatar_bytes


@dataclass
class MediaInfo:
    video_codec: str
    audio_codec: str
    width: int
    height: int
    fps: Fraction
    frames: int
    video_seconds: float
    audio_seconds: float
    video_pts: list[float]


def probe(source: bytes | Path) -> MediaInfo:
    """Decodes every video frame and audio frame; durations from timestamps of decoded frames."""
    f = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    with av.open(f) as container:
        v = container.streams.video[0]
        a = container.streams.audio[0]
        vcodec, acodec = v.codec_context.name, a.codec_context.name
        fps = v.average_rate or v.guessed_rate or Fraction(0)
        width, height = v.codec_context.width, v.codec_context.height
        pts: list[float] = []
        audio_end = 0.0
        for frame in container.decode(v, a):
            if isinstance(frame, av.VideoFrame):
                pts.append(float(frame.pts * frame.time_base))
            else:
                audio_end = max(audio_end, float(frame.pts * frame.time_base) + frame.samples / frame.sample_rate)
    pts.sort()
    step = float(1 / fps) if fps else 0.0
    video_seconds = (pts[-1] + step) if pts else 0.0
    return MediaInfo(vcodec, acodec, width, height, Fraction(fps), len(pts), video_seconds, audio_end, pts)


def portrait() -> np.ndarray:
    """The bundled default avatar (a 512x512 portrait), decoded to BGR."""
    img = cv2.imdecode(np.frombuffer(default_avatar_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return np.asarray(img)


def drifting_clip(
    path: Path,
    frames: int,
    size: tuple[int, int] = (512, 512),
    *,
    drift: tuple[float, float] = (2.0, 1.0),
    periods: tuple[float, float] = (5.0, 7.0),
    faceless: int = 0,
    fps: int = 25,
) -> Path:
    """An MP4 (mp4v) at ``path`` of the bundled portrait drifting by a few pixels, as a video avatar
    moves: the portrait scaled to the clip's height and centred on a grey canvas of ``size``
    (width, height), frame *i* moved by ``drift * (sin(i / periods[0]), cos(i / periods[1]))``
    pixels; the last ``faceless`` frames show no face."""
    width, height = size
    canvas = np.full((height, width, 3), 90, np.uint8)
    face = cv2.resize(portrait(), (min(width, height), min(width, height)))
    y, x = (height - face.shape[0]) // 2, (width - face.shape[1]) // 2
    canvas[y : y + face.shape[0], x : x + face.shape[1]] = face
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        if i >= frames - faceless:
            writer.write(np.full_like(canvas, 128))
            continue
        dx, dy = drift[0] * np.sin(i / periods[0]), drift[1] * np.cos(i / periods[1])
        m = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
        writer.write(cv2.warpAffine(canvas, m, size, borderMode=cv2.BORDER_REFLECT))
    writer.release()
    return path
