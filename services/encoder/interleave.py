"""Audio and video in time order, the way the muxer wants them.

When the encoder renders, audio arrives from the caller (TTS runs far ahead of real time) while
frames come from the renderer. ``AudioInterleaver`` holds the audio and releases it frame by
frame: before frame ``i`` is encoded, the audio up to the end of frame ``i`` plus a small lead
(``lead_samples``: enough for the AAC encoder to cover the frame, so the fragment holding frame
``i`` is not held back waiting for audio) goes to the encoder, in one merged block. A frame thus
never waits behind seconds of audio being encoded, and the audio track never runs more than the
lead ahead of the video track.
"""

from __future__ import annotations

from talkmesh.common.clock import MediaClock
from talkmesh.common.errors import InvalidArgument
from talkmesh.v1 import common_pb2


class AudioInterleaver:
    """Holds PCM s16le mono audio and releases it in step with the video frames."""

    def __init__(self, clock: MediaClock, lead_samples: int) -> None:
        self.clock = clock
        self.lead_samples = lead_samples
        self.received = 0  # samples received so far (the next chunk's expected offset)
        self.released = 0  # samples handed to the encoder so far
        self._pending = bytearray()

    @property
    def held(self) -> int:
        """Samples received but not released yet."""
        return self.received - self.released

    def add(self, chunk: common_pb2.AudioChunk) -> None:
        """Appends a chunk; INVALID_ARGUMENT unless it continues the audio exactly."""
        if chunk.sample_rate and chunk.sample_rate != self.clock.sample_rate:
            raise InvalidArgument(
                "audio.sample_rate", f"{chunk.sample_rate} Hz differs from config.sample_rate {self.clock.sample_rate}"
            )
        if len(chunk.pcm) % 2:
            raise InvalidArgument("audio.pcm", "PCM s16le needs an even number of bytes")
        if chunk.sample_offset != self.received:
            raise InvalidArgument(
                "audio.sample_offset", f"expected {self.received} (audio must be continuous), got {chunk.sample_offset}"
            )
        self._pending += chunk.pcm
        self.received += len(chunk.pcm) // 2

    def until_frame(self, frame_index: int) -> bytes:
        """The held audio up to the end of ``frame_index`` plus the lead (possibly empty)."""
        horizon = self.clock.start(frame_index + 1) + self.lead_samples
        return self._take(max(0, min(horizon, self.received) - self.released))

    def rest(self) -> bytes:
        """Everything still held (at the end of the stream)."""
        return self._take(self.held)

    def _take(self, samples: int) -> bytes:
        if samples <= 0:
            return b""
        n = 2 * samples
        out = bytes(self._pending[:n])
        del self._pending[:n]
        self.released += samples
        return out
