"""Per-frame speech activity, relative to the stream itself: voiced and loudness whatever the level.

Every video frame gets three facts about its own source samples (zero look-ahead, source clock):

* ``rms_dbfs``: the plain RMS level of the samples (dBFS, floored at -120), as measured;
* ``voiced``: the frame's *speech-band level* is clearly above the stream's *noise floor*;
* ``loudness`` (0..1): where the speech-band level sits between the voicing threshold and the
  stream's recent speech peak (automatic gain): 1 is as loud as this speaker has recently been.

Speech-band level: the RMS of the frame's samples between ``band_low_hz`` (150 Hz by default) and
8 kHz, from a Hann-windowed spectrum of the frame's own samples. Mains hum (50/60 Hz) and rumble
fall below the band and do not count.

Noise floor: the lowest speech-band level of the last ``floor_window_seconds`` of frames
(including this one). Speech has dips between syllables and words in which only the background
is left, so over a couple of seconds the minimum is the background: steady room noise or hiss is
the floor and never voiced, while the floor drops at once when the background does.

Voicing threshold: ``max(floor + voiced_margin_db, min_voiced_dbfs)``; a frame is voiced above it,
and for ``hangover_seconds`` after (the frames of a short dip between two syllables stay voiced, as
they are in clean speech, where the dip stays above the threshold). The absolute minimum keeps
digital silence and near-silence (dither, a faint tail) unvoiced, hangover or not.

Speech peak: the loudest level above the threshold so far, decaying by
``peak_decay_db_per_second`` (so a speaker who gets quieter is followed, and one loud cough does not
shrink what comes after for long). Loudness maps ``[max(floor, top - loudness_range_db), top]`` to
``[0, 1]`` (clipped), where ``top = max(peak - peak_headroom_db, threshold + min_span_db)``: the
louder syllables reach 1, and the scale never shrinks to a few dB (fluctuations just above the
threshold stay small). Clean TTS speech (peak near -13 dBFS) gets about the fixed scale the
renderer used before (-50..-18 dBFS); a quiet speaker reaches 1 on their own peaks; a loud one is
not pinned at 1. Unvoiced frames have loudness 0.

All state is per stream (one ``ActivityMeter`` per Extract stream, i.e. per live turn or Speak),
and every step depends only on frame positions, so streamed output equals offline output. A
stream may start from the state another one ended with (``LevelState``: the floor window's last
levels and the peak, at most ``floor_window_seconds`` of floats), which a live session's gateway
sends from one turn to the next (``FeatureConfig.activity_state``): the floor is known from the
first frame on, so a turn's first speech frame is voiced (a fresh stream's floor is its own first
frames, which are then never above it: about 160 ms unvoiced at each start). The hangover does
not carry over (the pause between two streams is longer than it).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

from services.audio_features import dsp
from talkmesh.common.clock import frame_start_sample, frames_for_samples
from talkmesh.common.config import ConfigError

# The speech band's top: little speech energy lies above, and it keeps the level comparable across
# sample rates (16 kHz input has nothing above 8 kHz anyway).
SPEECH_BAND_TOP_HZ = 8000.0


@dataclass(frozen=True)
class ActivityConfig:
    """How ``voiced`` and ``loudness`` are decided (see services/audio_features/activity.py)."""

    # The speech-band level ignores energy below this (mains hum at 50/60 Hz, rumble).
    band_low_hz: float = 150.0
    # Noise floor: the lowest speech-band level over this much of the stream so far.
    floor_window_seconds: float = 2.0
    # Voiced: the speech-band level is this far above the noise floor ...
    voiced_margin_db: float = 6.0
    # ... and above this absolute level (digital silence and near-silence are never voiced).
    min_voiced_dbfs: float = -60.0
    # A frame within this long after one above the threshold stays voiced (dips between syllables),
    # unless it is below min_voiced_dbfs.
    hangover_seconds: float = 0.08
    # Loudness 0..1 spans at most this many dB below its top (and never below the noise floor) ...
    loudness_range_db: float = 32.0
    # ... and its top is at least this many dB above the voicing threshold (noise never fills it).
    min_span_db: float = 12.0
    # Loudness reaches 1 (its top) this far below the speech peak: the louder syllables all reach 1.
    peak_headroom_db: float = 5.0
    # The speech peak falls back this fast when nothing as loud comes.
    peak_decay_db_per_second: float = 3.0

    def validate(self) -> None:
        if not 0.0 <= self.band_low_hz <= 1000.0:
            raise ConfigError.at("band_low_hz", "must be within [0, 1000]")
        if not 0.1 <= self.floor_window_seconds <= 60.0:
            raise ConfigError.at("floor_window_seconds", "must be within [0.1, 60]")
        if not 0.0 <= self.voiced_margin_db <= 60.0:
            raise ConfigError.at("voiced_margin_db", "must be within [0, 60]")
        if not dsp.SILENCE_DBFS <= self.min_voiced_dbfs <= 0.0:
            raise ConfigError.at("min_voiced_dbfs", "must be within [-120, 0]")
        if not 0.0 <= self.hangover_seconds <= 1.0:
            raise ConfigError.at("hangover_seconds", "must be within [0, 1]")
        if not 1.0 <= self.min_span_db <= self.loudness_range_db <= 120.0:
            raise ConfigError.at("loudness_range_db", "must be within [min_span_db, 120] (min_span_db >= 1)")
        if not 0.0 <= self.peak_headroom_db <= 40.0:
            raise ConfigError.at("peak_headroom_db", "must be within [0, 40]")
        if not 0.0 <= self.peak_decay_db_per_second <= 100.0:
            raise ConfigError.at("peak_decay_db_per_second", "must be within [0, 100]")


@lru_cache(maxsize=16)
def _band(n: int, sample_rate: int, low_hz: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Bins of an ``n``-sample rfft inside the speech band, their one-sided weights, and the
    normalisation ``n * sum(w**2)`` of the Hann window (Parseval)."""
    freqs = np.arange(n // 2 + 1) * sample_rate / n
    bins = np.flatnonzero((freqs >= low_hz) & (freqs <= min(SPEECH_BAND_TOP_HZ, sample_rate / 2)))
    weights = np.where((bins == 0) | (2 * bins == n), 1.0, 2.0)
    window = dsp.hann(n)
    bins.setflags(write=False)
    weights.setflags(write=False)
    return bins, weights, n * float(np.dot(window, window))


def band_rms_dbfs(samples: np.ndarray, sample_rate: int, low_hz: float) -> float:
    """RMS level of ``samples`` between ``low_hz`` and 8 kHz in dBFS (floored at -120): a Hann-windowed
    spectrum of the samples, power summed over the band (white noise reads its band's share of
    its RMS, a tone in the band its RMS)."""
    n = len(samples)
    if n < 2:
        return dsp.SILENCE_DBFS
    bins, weights, norm = _band(n, sample_rate, low_hz)
    if len(bins) == 0:
        return dsp.SILENCE_DBFS
    spectrum = np.fft.rfft(np.asarray(samples, dtype=np.float64) * dsp.hann(n))[bins]
    ms = float(np.dot(weights, spectrum.real**2 + spectrum.imag**2)) / norm
    if ms <= 0.0:
        return dsp.SILENCE_DBFS
    return max(dsp.SILENCE_DBFS, 10.0 * math.log10(ms))


@dataclass(frozen=True)
class LevelState:
    """What a ``LevelTracker`` carries into the next stream: its last speech-band levels (oldest
    first, at most its floor window of them) and its speech peak (-inf: none yet)."""

    levels: tuple[float, ...] = ()
    peak: float = -math.inf


@dataclass(frozen=True)
class Activity:
    index: int
    rms_dbfs: float
    voiced: bool
    loudness: float


class LevelTracker:
    """The stream's noise floor and speech peak, one speech-band level per frame, in frame order."""

    def __init__(self, config: ActivityConfig, fps: Fraction, start: LevelState | None = None) -> None:
        self.config = config
        self._window = max(1, round(config.floor_window_seconds * fps))
        self._decay = config.peak_decay_db_per_second / float(fps)
        self._hangover = round(config.hangover_seconds * fps)
        self._last_voiced = -(10**9)
        self._mins: deque[tuple[int, float]] = deque()  # increasing levels: the window's minimum first
        self._recent: deque[float] = deque(maxlen=self._window)  # the window's levels (the state)
        self._next = 0
        self.peak = -math.inf
        self.floor = dsp.SILENCE_DBFS
        if start is not None:
            # the previous stream's last frames are this one's frames -n..-1
            levels = start.levels[-self._window :]
            self._next = -len(levels)
            for level in levels:
                self._add(level)
            self.peak = start.peak

    def state(self) -> LevelState:
        """Where the next stream of the same speaker starts from (``LevelTracker(start=...)``)."""
        return LevelState(tuple(self._recent), self.peak)

    def _add(self, level: float) -> int:
        """Frame ``i`` of ``level`` joins the floor's window; returns ``i``."""
        i = self._next
        self._next += 1
        self._recent.append(level)
        mins = self._mins
        while mins and mins[-1][1] >= level:
            mins.pop()
        mins.append((i, level))
        if mins[0][0] <= i - self._window:
            mins.popleft()
        self.floor = mins[0][1]
        return i

    def step(self, level: float) -> tuple[bool, float]:
        """``(voiced, loudness)`` of the next frame given its speech-band level."""
        cfg = self.config
        i = self._add(level)
        threshold = max(self.floor + cfg.voiced_margin_db, cfg.min_voiced_dbfs)
        above = level > threshold
        self.peak = max(level, self.peak - self._decay) if above else self.peak - self._decay
        if above:
            self._last_voiced = i
        elif level <= cfg.min_voiced_dbfs or i - self._last_voiced > self._hangover:
            return False, 0.0
        top = max(self.peak - cfg.peak_headroom_db, threshold + cfg.min_span_db)
        bottom = max(self.floor, top - cfg.loudness_range_db)
        return True, min(1.0, max(0.0, (level - bottom) / (top - bottom)))


class ActivityMeter:
    """Activity per video frame over the frame's own source samples: zero look-ahead."""

    def __init__(
        self, sample_rate: int, fps: Fraction, config: ActivityConfig, start: LevelState | None = None
    ) -> None:
        self.sample_rate = sample_rate
        self.fps = fps
        self.config = config
        self.tracker = LevelTracker(config, fps, start)
        self._pending = np.zeros(0, dtype=np.float32)  # samples of frame self._next onwards
        self._pending_start = 0
        self._next = 0
        self.samples = 0

    def _frame(self, i: int, samples: np.ndarray) -> Activity:
        voiced, loudness = self.tracker.step(band_rms_dbfs(samples, self.sample_rate, self.config.band_low_hz))
        return Activity(i, dsp.rms_dbfs(samples), voiced, loudness)

    def push(self, x: np.ndarray) -> list[Activity]:
        self.samples += len(x)
        self._pending = np.concatenate([self._pending, x]) if len(self._pending) else x
        out = []
        while True:
            end = frame_start_sample(self._next + 1, self.sample_rate, self.fps)
            if end > self.samples:
                break
            cut = end - self._pending_start
            out.append(self._frame(self._next, self._pending[:cut]))
            self._pending = self._pending[cut:]
            self._pending_start = end
            self._next += 1
        return out

    def finish(self) -> list[Activity]:
        total = frames_for_samples(self.samples, self.sample_rate, self.fps)
        out = []
        while self._next < total:
            end = frame_start_sample(self._next + 1, self.sample_rate, self.fps) - self._pending_start
            out.append(self._frame(self._next, self._pending[:end]))
            self._pending = self._pending[end:]
            self._pending_start += end
            self._next += 1
        return out
