# ruff: noqa: RUF001 - IPA is meant literally
"""One call's text never reaches the next call's output (eSpeak keeps its state in globals)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.tts.engine import EspeakEngine, EspeakParams

# sentence-final punctuation followed by what eSpeak reads as words: the trailing clause stayed inside
# eSpeak when phonemizing stopped at an empty (not NULL) text pointer
TRAILING = ["Hi! 🎉", "Hi. %", "Hello there. ☃", "Hi! #", "Bonjour ! 🎉"]


@pytest.fixture
async def engine() -> AsyncIterator[EspeakEngine]:
    engine = EspeakEngine()
    await engine.start()
    try:
        yield engine
    finally:
        await engine.close()


async def _speak(engine: EspeakEngine, text: str) -> tuple[list[str], int]:
    """The phonemes eSpeak reports while speaking ``text``, and the number of samples."""
    blocks = [b async for b in engine.synthesize(text, EspeakParams("en-us"))]
    return [p.phoneme for b in blocks for p in b.phonemes if p.phoneme], sum(b.samples.size for b in blocks)


@pytest.mark.parametrize("first", TRAILING)
async def test_phonemize_leaves_nothing_for_the_next_call(engine: EspeakEngine, first: str) -> None:
    alone = await engine.phonemize("Bye.", "en-us")
    assert alone == ["bˈaɪ"]
    before = await engine.phonemize(first, "en-us")
    assert len(before) == 2  # the trailing symbol is this call's, spoken as its own clause
    assert await engine.phonemize("Bye.", "en-us") == alone


async def test_phonemize_reads_the_trailing_symbol_in_its_own_call(engine: EspeakEngine) -> None:
    assert await engine.phonemize("Hi! 🎉", "en-us") == ["hˈaɪ", "pˈɑːɹɾi pˈɑːpɚ"]


@pytest.mark.parametrize("first", TRAILING)
async def test_synthesis_after_a_trailing_symbol_is_unchanged(engine: EspeakEngine, first: str) -> None:
    """The synthesis path (espeak_Synth) after a synth call and after a phonemize call.

    eSpeak's audio varies by a few samples from call to call, so the phonemes are compared, and
    the length within 1% (a leaked word would add a third of a second or more)."""
    phonemes, samples = await _speak(engine, "Bye.")
    assert phonemes == ["b", "ˈaɪ"]
    for before in (_speak, lambda e, t: e.phonemize(t, "en-us")):
        await before(engine, first)
        after, after_samples = await _speak(engine, "Bye.")
        assert after == phonemes
        assert abs(after_samples - samples) < samples / 100
