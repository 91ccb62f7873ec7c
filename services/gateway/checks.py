"""Checks the gateway makes of a request before any stage runs, for Speak and live sessions alike:
the media options (Speak's ``output``, a live session's ``config``: each names its own fields
under its prefix) and the first words of streamed text."""

from __future__ import annotations

from collections.abc import AsyncIterable

from talkmesh.common.errors import InvalidArgument
from talkmesh.common.markup import speakable_markdown
from talkmesh.common.names import has_speech
from talkmesh.common.registry import SIZE_PRESETS, spec
from talkmesh.v1 import encoder_pb2 as epb
from talkmesh.v1 import types_pb2


def check_text_format(field: str, value: int) -> None:
    if value not in types_pb2.TextFormat.values():
        raise InvalidArgument(field, f"unknown text format {value}")


def check_media_options(prefix: str, *, size: str, renderer_backend: str, audio_codec: int, idle_motion: int) -> None:
    """The size preset, renderer backend, audio codec and idle motion a request names, or
    InvalidArgument naming ``<prefix>.size`` etc. (empty or 0: the server's default)."""
    if size and size not in SIZE_PRESETS:
        raise InvalidArgument(f"{prefix}.size", f"{size!r} is not one of {', '.join(SIZE_PRESETS)}")
    known = spec("renderer").backends
    if renderer_backend and renderer_backend not in known:
        raise InvalidArgument(
            f"{prefix}.renderer_backend", f"{renderer_backend!r} is not one of {', '.join(known)}"
        )
    if audio_codec not in epb.AudioCodec.values():
        raise InvalidArgument(f"{prefix}.audio_codec", f"unknown audio codec {audio_codec}")
    if idle_motion not in types_pb2.IdleMotion.values():
        raise InvalidArgument(f"{prefix}.idle_motion", f"unknown idle motion {idle_motion}")


#: Markdown seen before the first words is filtered again at each piece up to this length, then
#: each time it has doubled (an adversary's thousands of one-mark pieces cost O(n log n), not O(n²)).
MARKDOWN_RECHECK_CHARS = 256


async def first_words(pieces: AsyncIterable[str], *, markdown: bool = False) -> tuple[str, bool]:
    """The text pieces up to the first with something to say (``has_speech``: not only white space
    or punctuation, which TTS refuses), joined, and whether one came before the input ended. What a
    Speak's text stream and a live text turn wait for before opening any stage (an LLM's "..."
    opens nothing). ``markdown``: what the text says as Markdown (``speakable_markdown``) counts, so
    a reply of only markup (a fence line, an emoji, a rule) says nothing either. Empty pieces are
    dropped; the rest count towards the caller's text limit, so the joined text is bounded by it."""
    seen = ""
    next_check = 0
    async for piece in pieces:
        seen += piece
        if not has_speech(piece):
            continue
        if not markdown:
            return seen, True
        if len(seen) >= next_check:
            if has_speech(speakable_markdown(seen)):
                return seen, True
            next_check = 0 if len(seen) < MARKDOWN_RECHECK_CHARS else 2 * len(seen)
    # (words in a piece after the last check, past MARKDOWN_RECHECK_CHARS)
    return seen, markdown and len(seen) >= MARKDOWN_RECHECK_CHARS and has_speech(speakable_markdown(seen))
