"""Decoding what talkmesh produced, with PyAV, for assertions."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av


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
