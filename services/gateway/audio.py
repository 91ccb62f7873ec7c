"""The caller's own speech at the gateway: the checks of a PCM message and the resampling to a
rate the stages take, shared by SpeakStream's audio input and the live sessions' audio turns."""

from __future__ import annotations

import numpy as np

from talkmesh.common.clock import (
    MAX_AUDIO_MESSAGE_SECONDS,
    MAX_CALLER_RATE,
    MIN_CALLER_RATE,
    SPEECH_SAMPLE_RATES,
    audio_file_kind,
)
from talkmesh.common.errors import InvalidArgument


def check_audio(sample_rate: int, pcm: bytes, field: str = "audio", *, first: bool = False) -> None:
    """InvalidArgument naming ``<field>.sample_rate`` or ``<field>.pcm``: a rate outside
    ``MIN_CALLER_RATE..MAX_CALLER_RATE``, an odd number of bytes, or more than ``MAX_AUDIO_MESSAGE_SECONDS``;
    and, for the ``first`` bytes of a recording, an audio file's bytes (``audio_file_kind``)."""
    if not MIN_CALLER_RATE <= sample_rate <= MAX_CALLER_RATE:
        raise InvalidArgument(
            f"{field}.sample_rate", f"{sample_rate} Hz is outside {MIN_CALLER_RATE}..{MAX_CALLER_RATE}"
        )
    kind = audio_file_kind(pcm) if first else None
    if kind:
        raise InvalidArgument(
            f"{field}.pcm", f"these bytes are {kind}, not raw PCM: decode it to mono s16le samples and send those"
        )
    if len(pcm) % 2:
        raise InvalidArgument(f"{field}.pcm", f"{len(pcm)} bytes is not a whole number of s16le samples")
    if len(pcm) > 2 * sample_rate * MAX_AUDIO_MESSAGE_SECONDS:
        raise InvalidArgument(f"{field}.pcm", f"more than {MAX_AUDIO_MESSAGE_SECONDS:g} s of audio in one message")


def stage_rate(sample_rate: int) -> int:
    """The rate the caller's audio goes to the stages at: its own when they take it, else the next
    speech rate above it (a phone's 8 kHz goes up to 16 kHz, nothing is lost on the way)."""
    return next((r for r in SPEECH_SAMPLE_RATES if r >= sample_rate), SPEECH_SAMPLE_RATES[-1])


class Resampler:
    """Streaming PCM s16 resampling (soxr, ~30 ms filter delay); passes the audio through when the
    rates are equal. ``push(pcm)`` returns what is ready; ``push(b"", last=True)`` the rest."""

    def __init__(self, source_rate: int, target_rate: int) -> None:
        import soxr

        self.passthrough = source_rate == target_rate
        self.stream = None if self.passthrough else soxr.ResampleStream(source_rate, target_rate, 1, dtype="int16")

    def push(self, pcm: bytes, last: bool = False) -> bytes:
        if self.passthrough:
            return pcm
        x = np.frombuffer(pcm, "<i2")
        assert self.stream is not None
        return np.asarray(self.stream.resample_chunk(x, last=last), "<i2").tobytes()
