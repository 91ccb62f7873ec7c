"""Checks the gateway makes of a request's media options before any stage runs, for Speak's
``output`` and a live session's ``config`` alike (each names its own fields under its prefix)."""

from __future__ import annotations

from talkmesh.common.errors import InvalidArgument
from talkmesh.common.registry import SIZE_PRESETS, spec
from talkmesh.v1 import encoder_pb2 as epb


def check_media_options(prefix: str, *, size: str, renderer_backend: str, audio_codec: int) -> None:
    """The size preset, renderer backend and audio codec a request names, or InvalidArgument
    naming ``<prefix>.size`` etc. (empty or 0: the server's default)."""
    if size and size not in SIZE_PRESETS:
        raise InvalidArgument(f"{prefix}.size", f"{size!r} is not one of {', '.join(SIZE_PRESETS)}")
    known = spec("renderer").backends
    if renderer_backend and renderer_backend not in known:
        raise InvalidArgument(
            f"{prefix}.renderer_backend", f"{renderer_backend!r} is not one of {', '.join(known)}"
        )
    if audio_codec not in epb.AudioCodec.values():
        raise InvalidArgument(f"{prefix}.audio_codec", f"unknown audio codec {audio_codec}")
