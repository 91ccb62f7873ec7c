"""Signal processing of the feature stage: mel filter banks, framing, Whisper log-mel, Wav2Lip mel.

Everything here is plain numpy and works on whole arrays ("offline"). The streaming extractors in
``streaming.py`` call the same functions on the same samples, which is what makes streamed output
equal offline output.

Facts honoured (from the Whisper and Wav2Lip front ends):

* Whisper: 16 kHz, n_fft 400, hop 160, periodic Hann window, centred frames with reflect padding,
  the last STFT frame dropped, power spectrum, 80 Slaney mel filters (area normalised, 0-8 kHz),
  ``log10(max(x, 1e-10))``, clamp to ``max - 8``, then ``(x + 4) / 4``.
* Wav2Lip: 16 kHz, pre-emphasis 0.97, n_fft 800, hop 200, win 800 (centred, reflect padding),
  magnitude spectrum, 80 Slaney mel filters 55-7600 Hz, ``20*log10(max(1e-5, mel)) - 20``, then
  ``clip(8*(S+100)/100 - 4, -4, 4)``.

Digital silence: both recipes have an amplitude floor (1e-10 on Whisper's power, 1e-5 on Wav2Lip's
magnitude) applied before the logarithm, so all-zero input gives finite values (Whisper: the clamp
floor; Wav2Lip: exactly -4). No dither is added: a dither would make the output differ from the
reference recipe. The NaN that Wav2Lip's inference script warns about ("add a small epsilon noise")
cannot occur here because nothing divides by the signal's peak or takes the log of an unfloored value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class MelSpec:
    """One mel front end: framing and filter bank parameters."""

    n_fft: int
    hop: int
    n_mels: int
    fmin: float
    fmax: float

    @property
    def pad(self) -> int:
        return self.n_fft // 2


WHISPER = MelSpec(n_fft=400, hop=160, n_mels=80, fmin=0.0, fmax=8000.0)
WAV2LIP = MelSpec(n_fft=800, hop=200, n_mels=80, fmin=55.0, fmax=7600.0)

WHISPER_LOG_FLOOR = 1e-10
WHISPER_DYNAMIC_RANGE = 8.0
WAV2LIP_PREEMPHASIS = 0.97
WAV2LIP_AMP_FLOOR = 1e-5  # exp(-100 / 20 * ln 10): min_level_db = -100
WAV2LIP_REF_LEVEL_DB = 20.0
WAV2LIP_MIN_LEVEL_DB = -100.0
WAV2LIP_MAX_ABS = 4.0
# What digital silence maps to in the Wav2Lip scale (the floor): used to pad windows of very short audio.
WAV2LIP_SILENCE = -WAV2LIP_MAX_ABS


# -- mel scale (Slaney) -----------------------------------------------------------------------------
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's auditory toolbox mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / _F_SP
    log = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
    return np.where(hz >= _MIN_LOG_HZ, log, linear)


def mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * _F_SP
    log = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
    return np.where(mel >= _MIN_LOG_MEL, log, linear)


@lru_cache(maxsize=8)
def mel_filters(spec: MelSpec, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular Slaney mel filters with area normalisation, ``[n_mels, 1 + n_fft // 2]`` float64."""
    fft_hz = np.linspace(0.0, sample_rate / 2.0, 1 + spec.n_fft // 2)
    edges_mel = np.linspace(hz_to_mel(np.array(spec.fmin)), hz_to_mel(np.array(spec.fmax)), spec.n_mels + 2)
    edges_hz = mel_to_hz(edges_mel)
    widths = np.diff(edges_hz)
    # distance of every FFT bin from every filter edge
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=8)
def hann(n: int) -> np.ndarray:
    """Periodic Hann window (the DFT-even one STFT front ends use)."""
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)
    w.setflags(write=False)
    return w


# -- framing --------------------------------------------------------------------------------------
def reflect_pad(x: np.ndarray, pad: int) -> np.ndarray:
    """Centred-STFT padding: ``pad`` samples mirrored (without the edge sample) on both sides."""
    return np.pad(np.asarray(x, dtype=np.float64), pad, mode="reflect")


def frame_columns(padded: np.ndarray, spec: MelSpec, first: int, count: int, base: int = 0) -> np.ndarray:
    """Windowed frames ``first .. first+count`` of a padded signal whose element 0 is index ``base``.

    Returns ``[count, n_fft]`` float64. Frame ``j`` covers padded indices ``[j*hop, j*hop + n_fft)``.
    """
    if count <= 0:
        return np.zeros((0, spec.n_fft))
    start = first * spec.hop - base
    view = np.lib.stride_tricks.sliding_window_view(padded[start:], spec.n_fft)[:: spec.hop][:count]
    if view.shape[0] != count:
        raise ValueError(f"need {count} frames from index {first}, only {view.shape[0]} available")
    return view * hann(spec.n_fft)


def power_mel(frames: np.ndarray, spec: MelSpec) -> np.ndarray:
    """Mel power spectrogram of windowed frames: ``[n_mels, count]``."""
    spectrum = np.fft.rfft(frames, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    return mel_filters(spec) @ power.T


def magnitude_mel(frames: np.ndarray, spec: MelSpec) -> np.ndarray:
    """Mel magnitude spectrogram of windowed frames: ``[n_mels, count]``."""
    return mel_filters(spec) @ np.abs(np.fft.rfft(frames, axis=1)).T


# -- Whisper --------------------------------------------------------------------------------------
def whisper_log10_columns(frames: np.ndarray) -> np.ndarray:
    """``log10(max(mel_power, 1e-10))`` of windowed Whisper frames, before clamping: ``[80, count]``."""
    return np.log10(np.maximum(power_mel(frames, WHISPER), WHISPER_LOG_FLOOR))


def whisper_scale(log10_mel: np.ndarray, reference_max: float) -> np.ndarray:
    """Whisper's clamp to ``reference_max - 8`` and ``(x + 4) / 4``."""
    return (np.maximum(log10_mel, reference_max - WHISPER_DYNAMIC_RANGE) + 4.0) / 4.0


def whisper_log10_mel(audio: np.ndarray) -> np.ndarray:
    """Unclamped Whisper log10 mel of 16 kHz audio: ``[80, len(audio) // 160]`` float64."""
    n = len(audio)
    if n == 0:
        return np.zeros((WHISPER.n_mels, 0))
    count = n // WHISPER.hop  # 1 + n // hop centred frames, the last one dropped
    frames = frame_columns(reflect_pad(audio, WHISPER.pad), WHISPER, 0, count)
    return whisper_log10_columns(frames)


def whisper_log_mel(audio: np.ndarray) -> np.ndarray:
    """The reference Whisper log-mel (clamp against the whole input's maximum): ``[80, n // 160]``."""
    log10 = whisper_log10_mel(audio)
    if log10.shape[1] == 0:
        return log10.astype(np.float32)
    return whisper_scale(log10, float(log10.max())).astype(np.float32)


# -- Wav2Lip --------------------------------------------------------------------------------------
def preemphasis(audio: np.ndarray, previous: float = 0.0) -> np.ndarray:
    """``y[n] = x[n] - 0.97 x[n-1]`` with ``x[-1] = previous`` (0 at the start, like lfilter)."""
    x = np.asarray(audio, dtype=np.float64)
    out = x.copy()
    if len(x):
        out[0] -= WAV2LIP_PREEMPHASIS * previous
        out[1:] -= WAV2LIP_PREEMPHASIS * x[:-1]
    return out


def wav2lip_scale_columns(frames: np.ndarray) -> np.ndarray:
    """Wav2Lip's normalised dB mel of windowed (pre-emphasised) frames: ``[80, count]`` in [-4, 4]."""
    mel = magnitude_mel(frames, WAV2LIP)
    db = 20.0 * np.log10(np.maximum(WAV2LIP_AMP_FLOOR, mel)) - WAV2LIP_REF_LEVEL_DB
    scaled = 2 * WAV2LIP_MAX_ABS * (db - WAV2LIP_MIN_LEVEL_DB) / (-WAV2LIP_MIN_LEVEL_DB) - WAV2LIP_MAX_ABS
    return np.clip(scaled, -WAV2LIP_MAX_ABS, WAV2LIP_MAX_ABS)


def wav2lip_mel(audio: np.ndarray) -> np.ndarray:
    """Wav2Lip's whole mel spectrogram of 16 kHz audio: ``[80, 1 + n // 200]`` float32."""
    n = len(audio)
    if n == 0:
        return np.zeros((WAV2LIP.n_mels, 0), dtype=np.float32)
    padded = reflect_pad(preemphasis(audio), WAV2LIP.pad)
    frames = frame_columns(padded, WAV2LIP, 0, 1 + n // WAV2LIP.hop)
    return wav2lip_scale_columns(frames).astype(np.float32)


WAV2LIP_WINDOW = 16


def wav2lip_window(mel: np.ndarray, start: int) -> np.ndarray:
    """The ``[80, 16]`` window at mel frame ``start``; windows past the end are clamped to the last 16
    frames as Wav2Lip's inference does. Audio shorter than 16 frames is right-padded with silence."""
    n = mel.shape[1]
    if n < WAV2LIP_WINDOW:
        out = np.full((mel.shape[0], WAV2LIP_WINDOW), WAV2LIP_SILENCE, dtype=np.float32)
        out[:, :n] = mel
        return out
    start = min(start, n - WAV2LIP_WINDOW)
    return np.ascontiguousarray(mel[:, start : start + WAV2LIP_WINDOW], dtype=np.float32)


# -- activity -------------------------------------------------------------------------------------
SILENCE_DBFS = -120.0


def rms_dbfs(samples: np.ndarray) -> float:
    """RMS level of float samples in [-1, 1] in dB full scale, floored at -120 dBFS (digital silence)."""
    if len(samples) == 0:
        return SILENCE_DBFS
    x = np.asarray(samples, dtype=np.float64)
    ms = float(np.dot(x, x)) / len(x)
    if ms <= 0.0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(ms))
