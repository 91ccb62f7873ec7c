"""Video encoder backends and their selection (NVENC when the start-up probe succeeds, else x264)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

from services.encoder.backends.base import VideoBackend, VideoCodecSettings
from services.encoder.backends.nvenc import NvencBackend, probe_nvenc
from services.encoder.backends.x264 import X264Backend
from services.encoder.config import VideoConfig

__all__ = [
    "NvencBackend",
    "VideoBackend",
    "VideoCodecSettings",
    "X264Backend",
    "open_errors",
    "probe_nvenc",
    "select_backend",
]

log = logging.getLogger(__name__)


class NvencUnavailable(RuntimeError):
    """video.encoder is "nvenc" but the probe failed."""


def select_backend(config: VideoConfig, probe: Callable[[int], bool]) -> VideoBackend:
    """The backend for ``config.encoder``; ``probe(gpu)`` is only called for "auto" and "nvenc"."""
    if config.encoder == "x264":
        return X264Backend(config)
    if probe(config.nvenc.gpu):
        return NvencBackend(config)
    if config.encoder == "nvenc":
        raise NvencUnavailable("video.encoder is 'nvenc' but h264_nvenc could not be opened on this host")
    log.info("no NVIDIA encoder found on this machine: encoding video with x264 on the CPU")
    return X264Backend(config)


@contextlib.contextmanager
def open_errors(backend: VideoBackend) -> Iterator[None]:
    """Opening ``backend``'s encoder: an FFmpeg error the backend knows (NVENC's session limit) becomes
    its status (RESOURCE_EXHAUSTED); any other is raised as it is."""
    import av

    try:
        yield
    except av.FFmpegError as exc:
        status = backend.open_error(exc)
        if status is not None:
            raise status from exc
        raise
