"""The one clock of talkmesh: video frames and audio samples in exact integer arithmetic.

Time is counted in samples and frame indices, never in floating-point seconds. A frame rate is a
``Fraction`` (25, or 30000/1001 for 29.97), and

* video frame ``i`` covers audio samples ``[start(i), start(i + 1))`` with
  ``start(i) = floor(i * sample_rate / fps)``;
* ``n`` samples need ``ceil(n * fps / sample_rate)`` frames;
* sample ``s`` falls in the frame ``i`` with ``start(i) <= s < start(i + 1)``.

Every service uses these functions (the gateway's read-ahead and interleaving, the renderer's
viseme timing, the feature stage's windows, the encoder's timestamps and the live sessions'
pacing), so two stages can never disagree about which samples belong to which frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from talkmesh.common.errors import InvalidArgument

#: The frame rate of a stream whose request names none (0).
DEFAULT_FPS = 25
#: The frame rates of the stages that animate (gateway, feature stage, renderer, live sessions).
MIN_FPS, MAX_FPS = 1, 60
#: The speech PCM rates (s16le mono) the feature stage takes as they are, and so the rates a live
#: session's audio may have.
SPEECH_SAMPLE_RATES = (16000, 22050, 24000, 44100, 48000)
#: The rates a caller's own speech may have (Hz): live audio turns and SpeakStream's audio pieces.
MIN_CALLER_RATE, MAX_CALLER_RATE = 8000, 48000
#: The rates a stage's audio may have (Hz): the renderer's RenderConfig.sample_rate (its viseme
#: timing) and the encoder's EncodeConfig.sample_rate.
MIN_STAGE_RATE, MAX_STAGE_RATE = 8000, 192_000
#: The longest fMP4 fragment a request may ask for (milliseconds): the gateway's bound on
#: OutputOptions.fragment_ms and the encoder's limits.max_fragment_ms by default.
MAX_FRAGMENT_MS = 10_000
#: The most audio one message carries (seconds): a live audio turn's chunk, a SpeakStream audio
#: piece, a browser's audio message.
MAX_AUDIO_MESSAGE_SECONDS = 1

#: How audio files begin, where a caller's raw PCM is expected (raw PCM has no header; a recording
#: starts with these bytes by chance about once in 2**32): the header would play as samples, the
#: compressed rest as noise. WAV, MP3 with its ID3 tag, FLAC, Ogg, WebM or Matroska (a browser's
#: MediaRecorder), Apple's CAF, AMR; MP4/M4A/MOV/3GP by `ftyp` after the first box's size.
AUDIO_FILE_MAGIC = {b"RIFF": "a WAV file", b"ID3\x03": "an MP3 file", b"ID3\x04": "an MP3 file",
                    b"fLaC": "a FLAC file", b"OggS": "an Ogg file", b"\x1aE\xdf\xa3": "a WebM file",
                    b"caff": "a CAF file", b"#!AMR": "an AMR file"}  # fmt: skip


def audio_file_kind(head: bytes) -> str | None:
    """What audio file ``head`` (a caller's first PCM bytes, at least 8 for MP4) begins, if any."""
    if head[4:8] == b"ftyp":
        return "an MP4 (M4A) file"
    return next((kind for magic, kind in AUDIO_FILE_MAGIC.items() if head.startswith(magic)), None)


def fps_fraction(fps: float | Fraction | int) -> Fraction:
    """The exact rate of ``fps``: 25.0 -> 25, 12.5 -> 25/2, 29.97 -> 2997/100, and a float close to
    30000/1001 (29.97002997...) -> 30000/1001 (denominators up to 1001).

    Raises ValueError for a rate that is not finite and positive.
    """
    if isinstance(fps, Fraction):
        value = fps
    else:
        f = float(fps)
        if not math.isfinite(f) or f <= 0:
            raise ValueError(f"frame rate {fps!r} is not a finite positive number")
        value = Fraction(f).limit_denominator(1001)
    if value <= 0:
        raise ValueError(f"frame rate {fps!r} is not positive")
    return value


def request_fps(value: float, field: str = "config.fps") -> Fraction:
    """A request's frame rate, exactly: 0 selects ``DEFAULT_FPS``; INVALID_ARGUMENT naming ``field``
    for a rate outside ``MIN_FPS..MAX_FPS`` (or not a number)."""
    fps = float(value) or DEFAULT_FPS
    if not math.isfinite(fps) or not MIN_FPS <= fps <= MAX_FPS:
        raise InvalidArgument(field, f"{value:g} is outside {MIN_FPS}..{MAX_FPS} (0 selects {DEFAULT_FPS})")
    return fps_fraction(fps)


def frame_start_sample(i: int, sample_rate: int, fps: Fraction) -> int:
    """First sample of video frame ``i``: ``floor(i * sample_rate / fps)``."""
    return (i * sample_rate * fps.denominator) // fps.numerator


def frames_for_samples(samples: int, sample_rate: int, fps: Fraction) -> int:
    """Frames needed to show ``samples`` of audio: ``ceil(samples * fps / sample_rate)``."""
    return -((-samples * fps.numerator) // (sample_rate * fps.denominator))


def frame_of_sample(sample: int, sample_rate: int, fps: Fraction) -> int:
    """The frame that shows ``sample``: the last ``i`` with ``frame_start_sample(i) <= sample``,
    i.e. ``ceil((sample + 1) * fps / sample_rate) - 1``."""
    return frames_for_samples(sample + 1, sample_rate, fps) - 1


@dataclass(frozen=True)
class MediaClock:
    """A frame rate and a sample rate together: the timeline of one stream."""

    fps: Fraction
    sample_rate: int

    @classmethod
    def of(cls, fps: float | Fraction | int, sample_rate: int) -> MediaClock:
        if sample_rate <= 0:
            raise ValueError(f"sample rate {sample_rate} is not positive")
        return cls(fps_fraction(fps), int(sample_rate))

    def start(self, frame: int) -> int:
        """First sample of ``frame``."""
        return frame_start_sample(frame, self.sample_rate, self.fps)

    def samples_in(self, frame: int) -> int:
        """Number of samples ``frame`` covers (varies by one for rates that do not divide)."""
        return self.start(frame + 1) - self.start(frame)

    def played_at(self, frames: int, samples: int, source_rate: int) -> int:
        """How much of ``samples`` (at this clock's rate: a turn's audio) its first ``frames`` frames
        carried, counted at ``source_rate`` (the rate the audio came in: SpeakingStopped.samples_played)."""
        return min(self.start(frames), samples) * source_rate // self.sample_rate

    def frames_for(self, samples: int) -> int:
        """Frames needed to show ``samples``."""
        return frames_for_samples(samples, self.sample_rate, self.fps)

    def frame_of(self, sample: int) -> int:
        """The frame that shows ``sample``."""
        return frame_of_sample(sample, self.sample_rate, self.fps)

    def seconds(self, frame: int) -> Fraction:
        """Media time at the start of ``frame``, exactly."""
        return frame / self.fps

    def frames_for_seconds(self, seconds: Fraction | int) -> int:
        """Whole frames in ``seconds`` (rounded down)."""
        return math.floor(Fraction(seconds) * self.fps)
