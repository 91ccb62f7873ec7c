"""The video encoder backend interface: one method, ``settings``.

A backend only decides *how* H.264 is produced (which FFmpeg encoder, which options). Opening the
codec, feeding frames, muxing with the audio track and cutting fragments is the same code for
every backend (``services.encoder.session``), so NVENC and x264 streams differ only in the bits
inside the video samples.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from fractions import Fraction


@dataclass(frozen=True)
class VideoCodecSettings:
    """What the muxing code needs to open a video encoder."""

    codec_name: str  # FFmpeg encoder name, e.g. "libx264" or "h264_nvenc"
    pix_fmt: str  # encoder input format; frames are converted to it
    options: dict[str, str] = field(default_factory=dict)  # AVOptions of the encoder
    bit_rate: int = 0  # bits per second, 0: the options decide (CRF / CQ)
    gop_size: int = 0  # keyframe interval in frames


class VideoBackend(abc.ABC):
    #: the encoder's name as reported in logs, metrics and MediaChunk.video_encoder
    name: str = ""
    #: its sessions are a budget the streams share (NVENC's per-GPU limit): none is kept idle
    #: (no spare sessions, services/encoder/spares.py)
    scarce_sessions: bool = False

    def open_error(self, exc: BaseException) -> Exception | None:
        """The error to report when the encoder failed to open with ``exc`` and there is no fallback
        (e.g. NVENC's session limit -> RESOURCE_EXHAUSTED); None re-raises ``exc`` as it is."""
        return None

    @abc.abstractmethod
    def settings(self, width: int, height: int, fps: Fraction) -> VideoCodecSettings:
        """The codec and options for a ``width`` x ``height`` stream at ``fps``."""
