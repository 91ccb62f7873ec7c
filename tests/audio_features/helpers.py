"""Test signals and a small deterministic stand-in for the Whisper encoder."""

from __future__ import annotations

import numpy as np

from services.audio_features.backends.base import WhisperEncoder


def speech_like(sample_rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A formant-synthesised, speech-like signal (float32 in [-1, 1]): voiced vowels with a gliding
    pitch, a fricative burst, pauses of digital silence, syllable-rate amplitude modulation."""
    rng = np.random.default_rng(seed)
    n = int(sample_rate * seconds)
    t = np.arange(n) / sample_rate
    f0 = 110.0 + 30.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    source = np.zeros(n)
    for k in range(1, 30):  # glottal pulse train as harmonics with a -12 dB/oct tilt
        source += np.sin(k * phase) / k**2
    out = np.zeros(n)
    for formant, bandwidth, gain in ((700.0, 110.0, 1.0), (1220.0, 120.0, 0.5), (2600.0, 160.0, 0.25)):
        spectrum = np.fft.rfft(source)
        freqs = np.fft.rfftfreq(n, 1 / sample_rate)
        out += gain * np.fft.irfft(spectrum / (1 + ((freqs - formant) / bandwidth) ** 2), n)
    syllables = 0.5 - 0.5 * np.cos(2 * np.pi * 4.0 * t)
    out *= syllables
    fricative = rng.standard_normal(n) * (np.abs(t - seconds * 0.6) < 0.08)
    out += 0.05 * np.diff(fricative, prepend=0.0)
    out[(t > seconds * 0.3) & (t < seconds * 0.4)] = 0.0  # a pause of digital silence
    out *= 0.5 / max(1e-9, float(np.abs(out).max()))
    return out.astype(np.float32)


def noise(sample_rate: int, seconds: float, seed: int = 1, level: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal(int(sample_rate * seconds)) * level, -1, 1).astype(np.float32)


def to_pcm(x: np.ndarray) -> bytes:
    return (np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")).tobytes()


def quantise(x: np.ndarray) -> np.ndarray:
    """What the service sees of ``x`` after the s16le round trip."""
    return np.frombuffer(to_pcm(x), dtype="<i2").astype(np.float32) / 32768.0


class FakeEncoder(WhisperEncoder):
    """A deterministic numpy stand-in for a Whisper encoder on a short (3 s) window.

    Like the real one it halves the time axis and mixes information across the whole window (a
    window-mean term), so a block or offset mistake in the streaming code changes the output.
    """

    name = "fake"
    provider = "numpy"

    def __init__(self, input_frames: int = 300, layers: int = 3, width: int = 8) -> None:
        self.input_frames = input_frames
        self.layers = layers
        self.width = width
        rng = np.random.default_rng(7)
        self.proj = rng.standard_normal((layers, 80, width)).astype(np.float32) / 9.0
        self.mix = rng.standard_normal((layers, 1, width)).astype(np.float32)
        self.calls = 0

    def encode(self, mel: np.ndarray) -> np.ndarray:
        self.calls += 1
        pooled = (mel[:, :, 0::2] + mel[:, :, 1::2]) / 2  # [B, 80, T/2]
        local = np.einsum("bct,lcw->bltw", pooled, self.proj)
        whole = pooled.mean(axis=(1, 2))[:, None, None, None] * self.mix[None]
        positions = np.arange(pooled.shape[2], dtype=np.float32)[None, None, :, None] / pooled.shape[2]
        return (np.tanh(local + whole) + positions).astype(np.float32)
