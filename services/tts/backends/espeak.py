"""The embedded eSpeak NG backend: streams audio straight from eSpeak's synth callback."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator

from services.tts.backends.base import PcmBlock, TTSBackend, VoiceInfo, VoiceSettings, VoiceUnavailable
from services.tts.engine import (
    PITCH_DEFAULT,
    RATE_DEFAULT_WPM,
    RATE_MAX_WPM,
    RATE_MIN_WPM,
    VOLUME_DEFAULT,
    EspeakEngine,
    EspeakParams,
    EspeakVoiceError,
)


def espeak_params(voice: str, settings: VoiceSettings) -> EspeakParams:
    """Maps multiples onto eSpeak's units, clamped to what eSpeak accepts (80..450 wpm, pitch 0..100)."""
    return EspeakParams(
        voice=voice,
        rate_wpm=min(RATE_MAX_WPM, max(RATE_MIN_WPM, round(RATE_DEFAULT_WPM * settings.rate))),
        pitch=min(100, max(0, round(PITCH_DEFAULT * settings.pitch))),
        volume=min(200, max(0, round(VOLUME_DEFAULT * settings.volume))),
    )


class EspeakBackend(TTSBackend):
    engine = "espeak"

    def __init__(self, engine: EspeakEngine) -> None:
        super().__init__()
        self._engine = engine

    async def start(self) -> None:
        for v in self._engine.voices:
            self._voices[v.language] = VoiceInfo(
                id=f"espeak:{v.language}",
                name=v.name,
                language=v.language,
                engine=self.engine,
                sample_rate=self._engine.sample_rate,
            )

    def voice(self, name: str) -> VoiceInfo | None:
        """Any spelling eSpeak NG knows the voice by: ``en-gb``, ``en_GB``, ``en-GB``, ``gmw/en``;
        with one of eSpeak's variants after a ``+`` (``en-us+f3``: a female voice), unlisted."""
        base, plus, variant = name.partition("+")
        found = self._engine.resolve(base)
        listed = self._voices.get(found.language) if found is not None else None
        if listed is None or not plus:
            return listed
        variant_file = self._engine.variant(variant)
        if variant_file is None:
            return None
        return dataclasses.replace(
            listed,
            id=f"{listed.id}+{variant_file}",
            name=f"{listed.name} ({variant_file})",
        )

    def variants(self) -> list[str]:
        """eSpeak's variant files (``voices/!v``), in any case after a ``+``: f1-f5, m1-m8, whisper..."""
        return sorted(self._engine.variants.values(), key=str.lower)

    async def synthesize(self, text: str, voice: VoiceInfo, settings: VoiceSettings) -> AsyncGenerator[PcmBlock, None]:
        try:
            # the name after "espeak:": the language, and the variant if any ("en-us+f3")
            name = voice.id.partition(":")[2]
            async for block in self._engine.synthesize(text, espeak_params(name, settings)):
                yield block
        except EspeakVoiceError as exc:
            raise VoiceUnavailable(str(exc)) from exc
