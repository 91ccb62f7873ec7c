"""The features against independent references computed with librosa and scipy (test-only deps)."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import scipy.signal
import soxr

from services.audio_features import dsp
from services.audio_features.activity import ActivityConfig
from services.audio_features.streaming import (
    FeatureKind,
    StreamOptions,
    extract_offline,
)
from talkmesh.common.clock import fps_fraction, frame_start_sample

from .helpers import noise, quantise, speech_like

SIGNALS = {
    "speech": lambda: quantise(speech_like(16000, 2.5)),
    "noise": lambda: quantise(noise(16000, 1.7)),
}


def librosa_whisper_log10(x: np.ndarray) -> np.ndarray:
    """Whisper's front end before the clamp, from librosa's STFT and filters (float64)."""
    stft = librosa.stft(x.astype(np.float64), n_fft=400, hop_length=160, window="hann", center=True, pad_mode="reflect")
    power = np.abs(stft[:, :-1]) ** 2
    mel = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80, dtype=np.float64) @ power
    return np.log10(np.maximum(mel, 1e-10))


def librosa_whisper(x: np.ndarray) -> np.ndarray:
    log = librosa_whisper_log10(x)
    return (np.maximum(log, log.max() - 8.0) + 4.0) / 4.0


def librosa_wav2lip(x: np.ndarray) -> np.ndarray:
    """Wav2Lip's audio.melspectrogram, rebuilt from librosa + scipy (reflect padding, as in librosa 0.7)."""
    emphasised = scipy.signal.lfilter([1, -0.97], [1], x.astype(np.float64))
    magnitude = np.abs(
        librosa.stft(emphasised, n_fft=800, hop_length=200, win_length=800, center=True, pad_mode="reflect")
    )
    mel = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600, dtype=np.float64) @ magnitude
    db = 20 * np.log10(np.maximum(1e-5, mel)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def wav2lip_chunks(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    """Wav2Lip inference's windowing loop, as published (float multiplier, stops at the first clamp)."""
    chunks = []
    multiplier = 80.0 / fps
    i = 0
    while True:
        start = int(i * multiplier)
        if start + 16 > mel.shape[1]:
            chunks.append(mel[:, mel.shape[1] - 16 :])
            break
        chunks.append(mel[:, start : start + 16])
        i += 1
    return chunks


def test_mel_filters_match_librosa() -> None:
    ours = dsp.mel_filters(dsp.WHISPER)
    ref = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80, dtype=np.float64)
    assert ours.shape == (80, 201)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    ref = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600, dtype=np.float64)
    np.testing.assert_allclose(dsp.mel_filters(dsp.WAV2LIP), ref, atol=1e-12)


@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_whisper_log_mel_matches_librosa(signal: str) -> None:
    x = SIGNALS[signal]()
    ours = dsp.whisper_log_mel(x)
    ref = librosa_whisper(x)
    assert ours.shape == ref.shape == (80, len(x) // 160)
    assert np.abs(ours - ref).max() < 1e-4


@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_streamed_whisper_log_mel_running_clamp_bound(signal: str) -> None:
    """Streamed frames equal the reference except for the documented running-max clamp: a value
    differs only below the reference floor, by at most (max - running max) / 4, never after the
    loudest column."""
    x = SIGNALS[signal]()
    frames = extract_offline(x, StreamOptions(FeatureKind.WHISPER_LOG_MEL, fps_fraction(25), 16000))
    assert len(frames) == int(np.ceil(len(x) * 25 / 16000))
    assert all(f.features is not None and f.features.shape == (80, 4) for f in frames)
    streamed = np.concatenate([f.features for f in frames if f.features is not None], axis=1)
    padded = np.zeros(len(frames) * 640, dtype=np.float64)
    padded[: len(x)] = x  # the service zero-pads to the end of the last video frame
    log = librosa_whisper_log10(padded)
    ref = (np.maximum(log, log.max() - 8) + 4) / 4
    assert streamed.shape == ref.shape
    running = np.maximum.accumulate(log.reshape(80, -1, 4).max(axis=(0, 2)))  # per video frame
    bound = np.repeat(log.max() - running, 4) / 4  # per column
    diff = ref - streamed
    assert diff.min() > -1e-4
    assert np.all(diff <= bound[None, :] + 1e-4)
    after = np.repeat(running >= log.max(), 4)
    assert np.abs(diff[:, after]).max() < 1e-4
    # values above the reference floor are exact everywhere
    above = log > log.max() - 8
    assert np.abs(diff[above]).max() < 1e-4


@pytest.mark.parametrize("signal", sorted(SIGNALS))
def test_wav2lip_mel_matches_librosa(signal: str) -> None:
    x = SIGNALS[signal]()
    ref = librosa_wav2lip(x)
    ours = dsp.wav2lip_mel(x)
    assert ours.shape == ref.shape == (80, 1 + len(x) // 200)
    assert np.abs(ours - ref).max() < 1e-3


@pytest.mark.parametrize("fps", [25.0, 30.0])
def test_streamed_wav2lip_windows_match_the_original_loop(fps: float) -> None:
    x = SIGNALS["speech"]()
    frames = extract_offline(x, StreamOptions(FeatureKind.WAV2LIP_MEL, fps_fraction(fps), 16000))
    assert len(frames) == int(np.ceil(len(x) * fps / 16000))
    chunks = wav2lip_chunks(librosa_wav2lip(x), fps)
    # The original stops at its first clamped window; every later frame gets that same last window.
    for i, frame in enumerate(frames):
        assert frame.features is not None and frame.features.shape == (80, 16)
        assert frame.features.dtype == np.float32
        expected = chunks[min(i, len(chunks) - 1)]
        assert np.abs(frame.features - expected).max() < 1e-3, f"frame {i}"


def test_digital_silence_is_finite() -> None:
    x = np.zeros(16000, dtype=np.float32)
    for kind in (FeatureKind.WHISPER_LOG_MEL, FeatureKind.WAV2LIP_MEL, FeatureKind.ACTIVITY):
        frames = extract_offline(x, StreamOptions(kind, fps_fraction(25), 16000))
        assert len(frames) == 25
        for f in frames:
            assert f.rms_dbfs == dsp.SILENCE_DBFS and not f.voiced
            if f.features is not None:
                assert np.isfinite(f.features).all()
        if kind == FeatureKind.WAV2LIP_MEL:
            assert all(np.all(f.features == -4.0) for f in frames if f.features is not None)
        if kind == FeatureKind.WHISPER_LOG_MEL:  # log10(1e-10) = -10 -> (-10 + 4) / 4
            assert all(np.allclose(f.features, -1.5) for f in frames if f.features is not None)


def test_short_audio_pads_the_wav2lip_window_with_silence() -> None:
    x = quantise(speech_like(16000, 0.1))  # 9 mel frames < 16
    frames = extract_offline(x, StreamOptions(FeatureKind.WAV2LIP_MEL, fps_fraction(25), 16000))
    assert len(frames) == 3
    ref = librosa_wav2lip(x)
    for f in frames:
        assert f.features is not None
        assert np.abs(f.features[:, : ref.shape[1]] - ref).max() < 1e-3
        assert np.all(f.features[:, ref.shape[1] :] == -4.0)


@pytest.mark.parametrize("sample_rate", [22050, 24000, 44100, 48000])
def test_resampled_features_match_reference_on_soxr_resampled_audio(sample_rate: int) -> None:
    """Features of 24 kHz input equal the reference on the whole clip resampled by soxr (what librosa
    uses by default): the streaming resampler neither drifts nor depends on chunking."""
    x = quantise(speech_like(sample_rate, 1.3))
    x16 = soxr.resample(x, sample_rate, 16000, quality="HQ")
    assert len(x16) == round(len(x) * 16000 / sample_rate)
    frames = extract_offline(x, StreamOptions(FeatureKind.WAV2LIP_MEL, fps_fraction(25), sample_rate))
    chunks = wav2lip_chunks(librosa_wav2lip(x16), 25)
    for i, frame in enumerate(frames):
        assert frame.features is not None
        assert np.abs(frame.features - chunks[min(i, len(chunks) - 1)]).max() < 1e-3


def reference_activity(x: np.ndarray, sample_rate: int, fps: float, cfg: ActivityConfig) -> list[tuple[bool, float]]:
    """``(voiced, loudness)`` per frame, computed directly from activity.py's definition: speech-band
    power from scipy's Hann periodogram, the floor as the minimum of the window's levels, the
    hangover counted from the last frame above the threshold."""
    f = fps_fraction(fps)
    levels: list[float] = []
    out = []
    peak = -np.inf
    last_voiced = -(10**9)
    for i in range(int(np.ceil(len(x) * fps / sample_rate - 1e-9))):
        seg = x[frame_start_sample(i, sample_rate, f) : frame_start_sample(i + 1, sample_rate, f)].astype(np.float64)
        power = 0.0
        if len(seg) >= 2:
            freqs, psd = scipy.signal.periodogram(seg, sample_rate, window="hann", detrend=False)
            band = (freqs >= cfg.band_low_hz) & (freqs <= min(8000.0, sample_rate / 2))
            power = float(psd[band].sum() * sample_rate / len(seg))
        level = max(dsp.SILENCE_DBFS, 10 * np.log10(power)) if power > 0 else dsp.SILENCE_DBFS
        levels.append(level)
        floor = min(levels[-round(cfg.floor_window_seconds * fps) :])
        threshold = max(floor + cfg.voiced_margin_db, cfg.min_voiced_dbfs)
        peak -= cfg.peak_decay_db_per_second / fps
        if level > threshold:
            peak = max(peak, level)
            last_voiced = i
        elif level <= cfg.min_voiced_dbfs or i - last_voiced > round(cfg.hangover_seconds * fps):
            out.append((False, 0.0))
            continue
        top = max(peak - cfg.peak_headroom_db, threshold + cfg.min_span_db)
        bottom = max(floor, top - cfg.loudness_range_db)
        out.append((True, float(np.clip((level - bottom) / (top - bottom), 0, 1))))
    return out


@pytest.mark.parametrize(("sample_rate", "fps"), [(22050, 25.0), (24000, 29.97), (44100, 30.0)])
def test_activity_is_the_rms_of_each_frames_source_samples(sample_rate: int, fps: float) -> None:
    x = quantise(speech_like(sample_rate, 1.21))
    x[: len(x) // 5] += quantise(noise(sample_rate, 1.21, level=0.003))[: len(x) // 5]  # a noisy start
    frames = extract_offline(x, StreamOptions(FeatureKind.ACTIVITY, fps_fraction(fps), sample_rate))
    count = int(np.ceil(len(x) * fps / sample_rate - 1e-9))
    assert len(frames) == count
    f = fps_fraction(fps)
    expected_activity = reference_activity(x, sample_rate, fps, ActivityConfig())
    for i, frame in enumerate(frames):
        seg = x[frame_start_sample(i, sample_rate, f) : frame_start_sample(i + 1, sample_rate, f)].astype(np.float64)
        rms = np.sqrt(np.mean(seg**2))
        expected = 20 * np.log10(rms) if rms > 0 else dsp.SILENCE_DBFS
        assert frame.rms_dbfs == pytest.approx(max(expected, dsp.SILENCE_DBFS), abs=1e-6)
        voiced, loudness = expected_activity[i]
        assert frame.voiced == voiced, i
        assert frame.loudness == pytest.approx(loudness, abs=1e-6), i
        assert frame.features is None
    assert any(f.voiced for f in frames) and not all(f.voiced for f in frames)
    assert any(0.05 < f.loudness < 0.95 for f in frames) and max(f.loudness for f in frames) == 1.0
