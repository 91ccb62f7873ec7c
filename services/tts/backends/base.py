"""The TTS backend interface: one clause of text in, PCM blocks with phoneme timings out."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from services.tts.engine import PcmBlock


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
        return self._voices.get(name)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Finds the voices (and loads what must be loaded before the first request)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases resources."""

    @abc.abstractmethod
    def synthesize(self, text: str, voice: VoiceInfo, settings: VoiceSettings) -> AsyncGenerator[PcmBlock, None]:
        """Speaks one clause; yields its audio as it is produced."""
