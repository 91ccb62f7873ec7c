"""Ids, names and text that clients send: checked (ids, text) or cleaned (display names) at every
service.

An id (request, avatar, session, voice) is at most ``MAX_ID_CHARS`` printable characters; an
avatar id also names a directory, so it must not contain a path separator or start with a dot.
A display name (``AvatarMeta.name``) is a label: control, format (bidi overrides, zero-width) and
separator characters are dropped, runs of white space become one space, at most
``MAX_NAME_CHARS`` characters remain. A file name is at most ``MAX_FILENAME_CHARS`` printable
characters (only its extension is used). Over-long values are INVALID_ARGUMENT naming the field,
never echoed back (a 100k-character id must not reach a path, a log line or a status trailer).
Text to speak may hold any character but controls other than tab and line breaks, and surrogates.
Voice settings (rate, pitch, volume: ``VOICE_SETTING_RANGES``) are multiples where 0 means 1.0; TTS
and the live gateway check them with ``check_voice_settings``.
"""

from __future__ import annotations

import math
import unicodedata
from typing import Protocol

from talkmesh.common.errors import InvalidArgument

MAX_ID_CHARS = 128
#: A live session's id: the gateway's signed id (its owner's address sealed, a nonce and a MAC),
#: longer than a client's ids; a longer one is no session's.
MAX_SESSION_ID_CHARS = 256
MAX_NAME_CHARS = 128
MAX_FILENAME_CHARS = 255

#: Unicode categories removed from display names: controls, format characters (bidi overrides,
#: zero-width joiners), private use, unassigned, surrogates, line and paragraph separators.
_DROPPED = {"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"}


def _printable(value: str) -> bool:
    return all(unicodedata.category(c) not in _DROPPED for c in value)


def check_id(field: str, value: str) -> str:
    """``value`` unchanged, or InvalidArgument naming ``field`` (the value is not echoed): at most
    ``MAX_ID_CHARS`` printable characters."""
    if len(value) > MAX_ID_CHARS or not _printable(value):
        raise InvalidArgument(field, f"must be at most {MAX_ID_CHARS} printable characters")
    return value


#: Punctuation marks a speech engine reads as words ("50 %", "a & b", "me@home"); other punctuation
#: only shapes the speech around words and says nothing alone.
_WORD_MARKS = frozenset("#%&*@/\\§¶")


def has_speech(text: str) -> bool:
    """Whether ``text`` holds something to say: a letter, digit or symbol (emoji, "$", "+") or a
    mark read as a word (``#%&*@/\\§¶``). Only white space, invisible characters (zero-width space)
    and punctuation ("...", "。。。") say nothing: eSpeak would render silence, or a mark's
    name ("exclamation mark")."""
    return any(unicodedata.category(ch)[0] in "LNS" or ch in _WORD_MARKS for ch in text)


def check_text(field: str, text: str, max_chars: int, *, allow_empty: bool = False, offset: int = 0) -> str:
    """``text`` unchanged, or InvalidArgument naming ``field``: empty or with nothing to say (see
    ``has_speech``; unless ``allow_empty``), over ``max_chars``, or holding a control character
    other than tab and line breaks, or a surrogate (its position counted from ``offset``: a streamed
    piece's characters count from the start of the stream's text)."""
    if not allow_empty and not has_speech(text):
        raise InvalidArgument(
            field,
            "must not be empty"
            + ("" if not text.strip() else " (it has nothing to say: only punctuation or invisible characters)"),
        )
    if len(text) > max_chars:
        raise InvalidArgument(field, f"{len(text)} characters exceed the limit of {max_chars}")
    for i, ch in enumerate(text):
        cat = unicodedata.category(ch)
        if (cat == "Cc" and ch not in "\t\n\r") or cat == "Cs":
            raise InvalidArgument(field, f"contains the control character U+{ord(ch):04X} at position {offset + i}")
    return text


#: The allowed range of each VoiceSettings field (types.proto); 0 is the default (1.0) for each.
VOICE_SETTING_RANGES: dict[str, tuple[float, float]] = {"rate": (0.25, 4.0), "pitch": (0.25, 4.0), "volume": (0.0, 2.0)}


class VoiceSettingsLike(Protocol):
    rate: float
    pitch: float
    volume: float


def multiple(field: str, value: float, low: float, high: float) -> float:
    """A prosody multiple: 0 means 1.0 (unchanged); else within ``low..high``, or InvalidArgument."""
    if math.isnan(value) or math.isinf(value):
        raise InvalidArgument(field, "must be a finite number")
    if value == 0:
        return 1.0
    if not low <= value <= high:
        raise InvalidArgument(field, f"{value:g} is outside {low:g}..{high:g} (0 = default)")
    return float(value)


def check_voice_settings(field: str, settings: VoiceSettingsLike) -> tuple[float, float, float]:
    """(rate, pitch, volume) as multiples (0 becomes 1.0), or InvalidArgument naming
    ``<field>.rate`` etc."""
    rate, pitch, volume = (
        multiple(f"{field}.{name}", getattr(settings, name), *VOICE_SETTING_RANGES[name])
        for name in ("rate", "pitch", "volume")
    )
    return rate, pitch, volume


def check_filename(field: str, value: str) -> str:
    if len(value) > MAX_FILENAME_CHARS or not _printable(value):
        raise InvalidArgument(field, f"must be at most {MAX_FILENAME_CHARS} printable characters")
    return value


def clean_name(field: str, value: str) -> str:
    """A display name with unprintable characters dropped and white space collapsed."""
    if len(value) > 4 * MAX_NAME_CHARS:
        raise InvalidArgument(field, f"must be at most {MAX_NAME_CHARS} characters")
    kept = "".join(c for c in value if unicodedata.category(c) not in _DROPPED or c in "\t\n\r")
    cleaned = " ".join(kept.split())
    if len(cleaned) > MAX_NAME_CHARS:
        raise InvalidArgument(field, f"must be at most {MAX_NAME_CHARS} characters")
    return cleaned
