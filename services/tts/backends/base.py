"""The TTS backend interface: one clause of text in, PCM blocks with phoneme timings out.

Everything a backend and the service exchange lives here: the audio it yields (``PcmBlock`` with
``PhonemeEvent`` timings), the voice it speaks (``VoiceInfo``) and how (``VoiceSettings``).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PhonemeEvent:
    """A phoneme (IPA, as eSpeak spells it; "" for a pause) starting at ``sample``."""

    sample: int
    phoneme: str


@dataclass(frozen=True)
class PcmBlock:
    """Audio as synthesized (mono int16) plus the phonemes that start inside it.

    Sample positions count from the start of the clause being synthesized.
    """

    samples: np.ndarray
    phonemes: tuple[PhonemeEvent, ...] = ()


class VoiceUnavailable(Exception):
    """The engine cannot speak with this voice after all (the service answers NOT_FOUND)."""


@dataclass(frozen=True)
class VoiceSettings:
    """Multiples of the voice's normal rate, pitch and volume (1.0 = unchanged)."""

    rate: float = 1.0
    pitch: float = 1.0
    volume: float = 1.0


@dataclass(frozen=True)
class VoiceInfo:
    id: str  # "<engine>:<name>"
    name: str
    language: str
    engine: str
    sample_rate: int


class TTSBackend(abc.ABC):
    """A speech engine. ``synthesize`` streams one clause; positions count from the clause start.

    The clause's audio ends when the iterator ends; a backend that knows phoneme timings reports
    them in the blocks (each phoneme in the block its audio starts in, or an earlier one).
    """

    engine: str

    def __init__(self) -> None:
        self._voices: dict[str, VoiceInfo] = {}

    def voices(self) -> list[VoiceInfo]:
        return list(self._voices.values())

    def voice(self, name: str) -> VoiceInfo | None:
        """The listed voice ``name`` (the part of the voice id after ``<engine>:``), or None."""
        return self._voices.get(name)

    def variants(self) -> list[str]:
        """The variants a voice name may end with after a ``+`` (``en-us+f3``); none by default."""
        return []

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Finds the voices (and loads what must be loaded before the first request)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases resources."""

    @abc.abstractmethod
    def synthesize(self, text: str, voice: VoiceInfo, settings: VoiceSettings) -> AsyncGenerator[PcmBlock, None]:
        """Speaks one clause; yields its audio as it is produced (VoiceUnavailable if it cannot)."""
