"""h264_nvenc through PyAV: NVIDIA's hardware encoder, p1 preset with ultra-low-latency tuning."""

from __future__ import annotations

import errno
import logging
from fractions import Fraction

from services.encoder.backends.base import VideoBackend, VideoCodecSettings
from services.encoder.config import VideoConfig
from talkmesh.common.errors import ResourceExhausted

log = logging.getLogger(__name__)

CODEC_NAME = "h264_nvenc"
#: What runs out when NVENC cannot open another encoder: the driver's per-GPU limit of concurrent
#: sessions on consumer (GeForce) cards (a handful, 8 on recent drivers; data-centre and RTX
#: professional parts have none), or the GPU's memory. FFmpeg reports both as ENOMEM ("OpenEncodeSessionEx failed: out
#: of memory (10)").
SESSION_LIMIT = "concurrent NVENC sessions per GPU"


def is_session_limit(exc: BaseException, codec_name: str) -> bool:
    """True when opening ``codec_name`` failed because NVENC could not open another session."""
    if "nvenc" not in codec_name:
        return False
    return isinstance(exc, MemoryError) or getattr(exc, "errno", None) == errno.ENOMEM


def session_limit_error(gpu: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"video encoder: h264_nvenc could not open another encoder session on GPU {gpu} (the {SESSION_LIMIT} "
        "of consumer GeForce cards, or the GPU's memory, is exhausted); retry later, "
        "or set video.fallback_to_x264 to encode such streams on the CPU",
        retry_after=1.0, quota=SESSION_LIMIT, subject=f"gpu {gpu}",
    )  # fmt: skip


class NvencBackend(VideoBackend):
    name = CODEC_NAME
    scarce_sessions = True

    def __init__(self, config: VideoConfig) -> None:
        self.config = config

    def open_error(self, exc: BaseException) -> Exception | None:
        if is_session_limit(exc, CODEC_NAME):
            return session_limit_error(self.config.nvenc.gpu)
        return None

    def settings(self, width: int, height: int, fps: Fraction) -> VideoCodecSettings:
        cfg = self.config
        n = cfg.nvenc
        gop = max(1, round(float(fps) * cfg.gop_seconds))
        options = {
            "preset": n.preset,
            "tune": n.tune,
            "profile": cfg.profile,
            "rc": n.rc,
            "gpu": str(n.gpu),
            # Emit each frame's packet immediately: no B-frames, no lookahead, no output delay.
            "bf": "0",
            "zerolatency": "1",
            "delay": "0",
            "rc-lookahead": "0",
            "forced-idr": "1",  # a forced keyframe is an IDR (live sessions splice there)
        }
        if cfg.level:
            options["level"] = cfg.level
        bit_rate = 0
        if n.rc == "constqp":
            options["qp"] = str(n.cq)
        elif n.bitrate_kbps > 0:
            bit_rate = n.bitrate_kbps * 1000
            options["maxrate"] = str(bit_rate)
            options["bufsize"] = str(bit_rate)
        else:
            options["cq"] = str(n.cq)
        return VideoCodecSettings(
            codec_name=CODEC_NAME, pix_fmt="yuv420p", options=options, bit_rate=bit_rate, gop_size=gop
        )


def nvenc_open_error(gpu: int = 0) -> str | None:
    """None when an h264_nvenc encoder opens and encodes a frame here, else FFmpeg's reason.

    Blocking (it may initialise CUDA): call it from a worker thread.
    """
    import av
    import numpy as np

    try:
        ctx = av.CodecContext.create(CODEC_NAME, "w")
        assert isinstance(ctx, av.video.codeccontext.VideoCodecContext)
        ctx.width = 256
        ctx.height = 256
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.options = {"preset": "p1", "gpu": str(gpu)}
        ctx.open()
        frame = av.VideoFrame.from_ndarray(np.zeros((384, 256), np.uint8), format="yuv420p")
        frame.pts = 0
        packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    except (av.FFmpegError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if packets else "the encoder opened but produced no packet"


def probe_nvenc(gpu: int = 0) -> bool:
    """True when an h264_nvenc encoder opens and encodes a frame here (a GPU and driver exist).

    Blocking (it may initialise CUDA): call it from a worker thread.
    """
    reason = nvenc_open_error(gpu)
    if reason is not None:
        # Normal on machines without an NVIDIA GPU; select_backend says so in plain words.
        log.debug("h264_nvenc did not open: %s", reason)
        return False
    return True
