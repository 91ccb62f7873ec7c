"""Raw frames into PyAV without copying them, and the audio track (its encoder, options and codecs
string): one place for both paths (``session`` for Encode, ``live.media`` for Live)."""

from __future__ import annotations

import av
import numpy as np

from services.encoder.config import AudioConfig


def i420_frame(data: bytes | memoryview, width: int, height: int) -> av.VideoFrame:
    """An I420 frame that points into ``data`` (no copy; ``from_ndarray`` copied each plane, 0.65 ms
    per 512x512 frame). The encoder copies the picture into its own buffers when it encodes it, and
    the frame keeps ``data`` alive until then."""
    plane = np.frombuffer(data, np.uint8).reshape(height * 3 // 2, width)
    if height % 4:  # PyAV's buffer wrapper takes the height as rows // 6 * 4: 270 would become 268
        return av.VideoFrame.from_ndarray(plane, format="yuv420p")
    return av.VideoFrame.from_numpy_buffer(plane, format="yuv420p")


def aac_options(audio: AudioConfig) -> dict[str, str]:
    """Options of FFmpeg's native AAC encoder (its coder: see ``AudioConfig.aac_coder``)."""
    return {"aac_coder": audio.aac_coder}


def add_audio_stream(
    container: av.container.OutputContainer, codec: str, input_rate: int, audio: AudioConfig
) -> av.AudioStream:
    """The mono audio track of ``codec`` ("aac" or "opus") for PCM at ``input_rate``, at the rate,
    bit rate and options the config gives."""
    rate = audio.track_rate(codec, input_rate)
    if codec == "opus":
        stream = container.add_stream("libopus", rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        stream.bit_rate = audio.opus_bitrate_kbps * 1000
    else:
        stream = container.add_stream("aac", rate=rate, layout="mono", options=aac_options(audio))
        assert isinstance(stream, av.AudioStream)
        stream.bit_rate = audio.aac_bitrate_kbps * 1000
    return stream


def audio_codecs_string(codec: str) -> str:
    """The audio track's RFC 6381 codecs string (AAC-LC or Opus)."""
    return "opus" if codec == "opus" else "mp4a.40.2"
