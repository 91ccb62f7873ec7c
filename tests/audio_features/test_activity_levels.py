"""The mouth follows speech, not the recording: background noise, mains hum and the speaker's level.

Each recording goes through the feature stage (ACTIVITY, as the "viseme" renderer asks for it) and
the renderer's mouth animator, and the mouth opening of its pauses and speech bursts is compared
with the clean recording's. A user trial found the old fixed thresholds (voiced above -45 dBFS,
loudness -50..-18 dBFS) opened the mouth in the pauses of a recording with hiss (-34 dBFS) or
50 Hz hum (-29 dBFS), and barely opened it for a quiet speaker (peak -32 dBFS).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from services.audio_features.streaming import FeatureKind, Frame, StreamOptions, extract_offline
from services.renderer.mouth import MouthAnimator
from talkmesh.common.clock import fps_fraction

from .helpers import quantise

FPS = 25
SPEECH = ((0.5, 1.5), (2.5, 3.5))  # bursts, in seconds; the rest (to 4 s) is pause
EDGE = 0.12  # left out next to each edge: the mouth's attack and release


def bursts(sample_rate: int, seconds: float = 4.0) -> np.ndarray:
    """Speech-like bursts (as the trial's recordings): a gliding 140 Hz harmonic tone, syllables at
    4 Hz, peak 0.3 (-10.5 dBFS), digital silence between the bursts."""
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
    gate = np.zeros(len(t), bool)
    for a, b in SPEECH:
        gate |= (t >= a) & (t < b)
    return (0.3 * x / np.max(np.abs(x)) * envelope * gate).astype(np.float32)


def white(n: int, dbfs: float, seed: int = 0) -> np.ndarray:
    return (10 ** (dbfs / 20) * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def hum(n: int, sample_rate: int, dbfs: float, hz: float = 50.0) -> np.ndarray:
    """Mains hum at ``dbfs`` RMS."""
    return (10 ** (dbfs / 20) * np.sqrt(2) * np.sin(2 * np.pi * hz * np.arange(n) / sample_rate)).astype(np.float32)


def scaled_to_peak(x: np.ndarray, dbfs: float) -> np.ndarray:
    return (x * 10 ** (dbfs / 20) / np.abs(x).max()).astype(np.float32)


def activity(x: np.ndarray, sample_rate: int) -> list[Frame]:
    return extract_offline(quantise(x), StreamOptions(FeatureKind.ACTIVITY, fps_fraction(FPS), sample_rate))


def mouth(frames: list[Frame], sample_rate: int) -> np.ndarray:
    """The renderer's mouth opening per frame (no viseme track: a live audio turn)."""
    animator = MouthAnimator(sample_rate, float(FPS))
    return np.array([animator.step(f.index, f.voiced, f.loudness).open for f in frames])


def spans(n: int, speech: bool) -> np.ndarray:
    t = np.arange(n) / FPS
    inside = np.zeros(n, bool)
    core = np.zeros(n, bool)
    for a, b in SPEECH:
        inside |= (t >= a - EDGE) & (t < b + EDGE)
        core |= (t >= a + EDGE) & (t < b - EDGE)
    return core if speech else ~inside


RECORDINGS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "white noise at -34 dBFS": lambda x, sr: x + white(len(x), -34.0),
    "50 Hz hum at -29 dBFS": lambda x, sr: x + hum(len(x), sr, -29.0),
    "60 Hz hum at -29 dBFS": lambda x, sr: x + hum(len(x), sr, -29.0, 60.0),
    "quiet speaker, peak -32 dBFS": lambda x, sr: scaled_to_peak(x, -32.0),
    "quiet speaker with hiss": lambda x, sr: scaled_to_peak(x, -26.0) + white(len(x), -50.0),
    "loud speaker, peak -1 dBFS": lambda x, sr: scaled_to_peak(x, -1.0),
}


@pytest.mark.parametrize("sample_rate", [16000, 24000])
@pytest.mark.parametrize("name", list(RECORDINGS))
def test_the_mouth_rests_in_pauses_and_opens_on_speech_whatever_the_recording(name: str, sample_rate: int) -> None:
    clean = bursts(sample_rate)
    reference = mouth(activity(clean, sample_rate), sample_rate)
    speech, pause = spans(len(reference), True), spans(len(reference), False)
    open_clean = reference[speech].mean()
    assert open_clean > 0.35 and reference[pause].max() < 0.02  # the yardstick itself

    frames = activity(RECORDINGS[name](clean, sample_rate), sample_rate)
    opening = mouth(frames, sample_rate)
    voiced = np.array([f.voiced for f in frames])
    assert not voiced[pause].any(), f"pauses read voiced: {np.flatnonzero(voiced & pause)}"
    assert opening[pause].mean() < 0.2 * open_clean and opening[pause].max() < 0.3 * open_clean
    assert voiced[speech].mean() > 0.6
    assert opening[speech].mean() > 0.6 * open_clean, (opening[speech].mean(), open_clean)
    assert opening[speech].max() > 0.9 * reference[speech].max(), "the loudest syllables open the mouth fully"
    assert opening[speech].mean() < 1.25 * open_clean, "not pinned open"


def test_a_quiet_and_a_loud_speaker_get_the_same_loudness_and_digital_silence_none() -> None:
    clean = bursts(16000)
    levels = {
        peak: np.array([f.loudness for f in activity(scaled_to_peak(clean, peak), 16000)])
        for peak in (-32.0, -10.0, -1.0)
    }
    speech = spans(len(levels[-10.0]), True)
    for peak in (-32.0, -1.0):
        assert np.abs(levels[peak][speech] - levels[-10.0][speech]).mean() < 0.05, peak
    loud = levels[-1.0][speech]
    assert 0.3 < (loud == 1.0).mean() < 0.8, "loud speech spans the scale, it is not all at 1"
    silent = activity(np.zeros(16000, np.float32), 16000)
    assert not any(f.voiced or f.loudness for f in silent)
    faint = activity(white(16000, -75.0), 16000)
    assert not any(f.voiced for f in faint), "near-silence (below min_voiced_dbfs) is never voiced"


def test_the_floor_follows_the_background_as_it_changes() -> None:
    """Noise from the first frame on is never voiced; when it stops, quiet speech is voiced at once;
    noise that starts after digital silence reads voiced for at most the floor window (2 s) and the
    hangover."""
    sr = 16000
    part = 4 * sr
    x = np.zeros(3 * part, np.float32)
    x[:part] = scaled_to_peak(bursts(sr), -12.0) + white(part, -34.0)  # 0-4 s: speech in noise
    x[part : 2 * part] = scaled_to_peak(bursts(sr), -32.0)  # 4-8 s: quiet speech, no noise
    x[2 * part :] = white(part, -34.0, seed=1)  # 8-12 s: noise alone
    frames = activity(x, sr)
    voiced = np.array([f.voiced for f in frames])
    t = np.arange(len(frames)) / FPS
    speech = np.concatenate([spans(100, True)] * 2 + [np.zeros(100, bool)])
    pause = np.concatenate([spans(100, False)] * 2 + [np.zeros(100, bool)])
    assert not voiced[pause].any()
    assert voiced[speech & (t < 4)].mean() > 0.6
    assert voiced[speech & (t >= 4)].mean() > 0.8
    assert not voiced[t >= 10.1].any(), "the noise is the floor once it has lasted the window (+ hangover)"


def test_espeak_speech_in_noise_and_hum_and_quietly_keeps_its_voiced_frames() -> None:
    """Real TTS speech (eSpeak NG, 22050 Hz) under the trial's three conditions: the frames voiced in
    the clean speech stay voiced (most of them) and the pauses added around it stay unvoiced."""
    from services.tts.engine import EspeakEngine, EspeakParams

    async def speak() -> np.ndarray:
        engine = EspeakEngine()
        await engine.start()
        try:
            blocks = [b.samples async for b in engine.synthesize("Papa, bring me the big blue map.", EspeakParams())]
        finally:
            await engine.close()
        return np.concatenate(blocks).astype(np.float32) / 32768.0

    sr = 22050
    said = asyncio.run(speak())
    x = np.concatenate([np.zeros(sr, np.float32), said, np.zeros(sr, np.float32)])
    pause = np.zeros(int(np.ceil(len(x) * FPS / sr)), bool)
    pause[: int(0.8 * FPS)] = True
    pause[-int(0.8 * FPS) :] = True
    clean = activity(x, sr)
    voiced_clean = np.array([f.voiced for f in clean])
    open_clean = mouth(clean, sr)
    assert voiced_clean.sum() > 20 and not voiced_clean[pause].any()
    for name in ("white noise at -34 dBFS", "50 Hz hum at -29 dBFS", "quiet speaker, peak -32 dBFS"):
        frames = activity(RECORDINGS[name](x, sr), sr)
        voiced = np.array([f.voiced for f in frames])
        opening = mouth(frames, sr)
        assert not voiced[pause].any(), name
        assert voiced[voiced_clean].mean() > 0.6, name
        assert opening[voiced_clean].mean() > 0.6 * open_clean[voiced_clean].mean(), name
