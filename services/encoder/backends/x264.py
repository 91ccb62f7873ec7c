"""libx264 through PyAV: the software default, tuned for latency (ultrafast + zerolatency)."""

from __future__ import annotations

import math
from fractions import Fraction

from services.encoder.backends.base import VideoBackend, VideoCodecSettings
from services.encoder.config import VideoConfig


class X264Backend(VideoBackend):
    name = "libx264"

    def __init__(self, config: VideoConfig) -> None:
        self.config = config

    def settings(self, width: int, height: int, fps: Fraction) -> VideoCodecSettings:
        cfg = self.config
        x = cfg.x264
        gop = max(1, round(float(fps) * cfg.gop_seconds))
        options = {
            "preset": x.preset,
            "tune": x.tune,
            "profile": cfg.profile,
            # No B-frames and no lookahead: each frame's packet leaves the encoder with the frame.
            "bf": "0",
            "threads": str(x.threads),
            # Repeat SPS/PPS on keyframes so any GOP can start decoding.
            "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:repeat-headers=1",
        }
        if cfg.level:
            options["level"] = cfg.level
        bit_rate = 0
        if x.bitrate_kbps > 0:
            bit_rate = x.bitrate_kbps * 1000
            options["maxrate"] = str(bit_rate)
            # One second of VBV keeps the bitrate steady without starving keyframes.
            options["bufsize"] = str(bit_rate)
        else:
            options["crf"] = _fmt(x.crf)
        return VideoCodecSettings(
            codec_name="libx264", pix_fmt="yuv420p", options=options, bit_rate=bit_rate, gop_size=gop
        )


def _fmt(value: float) -> str:
    return str(int(value)) if math.isclose(value, round(value)) else f"{value:.2f}"
