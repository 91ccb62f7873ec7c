"""One utterance's encoding: raw frames and PCM in, container bytes out (blocking; PyAV).

``EncodeSession`` is used from one worker thread at a time. Every backend goes through the same
code here: the backend only names the H.264 encoder and its options.

Timing is exact by construction: video frame *i* gets pts *i* in a 1/fps time base, and audio
frames get pts from the count of samples fed so far, so the tracks cannot drift. The audio
encoder's priming (AAC: 1024 samples) is dropped instead of shifting the whole timeline, so
audio sample 0 plays with video frame 0 (the price is a fade-in over the first ~40 ms of audio,
which is TTS leading silence in practice). At the end the audio is padded with silence up to the
end of the last video frame, so both tracks end together.

Fragmented MP4 is written by hand (``services.encoder.fmp4``, the live sessions' writer):
libavformat only writes the init segment, and a fragment of ``fragment_ms`` of frames (one frame
at the default 40 ms and 25 fps) leaves the moment its last frame is encoded, with the audio
packets encoded so far (an encoder's priming before sample 0 is cut, as libavformat did). The mov
muxer would close a fragment only when the next packet arrives, after interleaving the tracks by
timestamp: the first fragment waited for frames 1 and 2 to be encoded. MP4 and MPEG-TS go through
libavformat.
"""

from __future__ import annotations

import functools
import io
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Concatenate, ParamSpec, TypeVar

import av
import numpy as np

from services.encoder import boxes
from services.encoder.backends.base import VideoBackend
from services.encoder.config import AudioConfig, LimitsConfig
from services.encoder.fmp4 import FragmentWriter, Sample, annexb_to_avcc, audio_sample, before_start
from services.encoder.frames import add_audio_stream, audio_codecs_string, i420_frame
from talkmesh.common.errors import ResourceExhausted

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class StreamParams:
    """A validated EncodeConfig."""

    width: int
    height: int
    fps: Fraction
    pixel_format: str  # "i420" or "rgb24"
    sample_rate: int  # 0: no audio track
    container: str  # "fmp4", "mpegts" or "mp4"
    audio_codec: str  # "aac" or "opus"
    fragment_ms: int

    @property
    def frame_bytes(self) -> int:
        if self.pixel_format == "i420":
            return self.width * self.height * 3 // 2
        return self.width * self.height * 3

    @property
    def fragment_frames(self) -> int:
        """Frames per fMP4 fragment: the fewest whose duration reaches ``fragment_ms`` (exact fractions)."""
        return max(1, math.ceil(Fraction(self.fragment_ms) * self.fps / 1000))

    def samples_for_frames(self, frames: int) -> int:
        """Audio samples covered by ``frames`` video frames (the frame boundary rule)."""
        return frames * self.sample_rate * self.fps.denominator // self.fps.numerator


class _Sink(io.RawIOBase):
    """A write-only, non-seekable byte sink the muxer writes into."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.buffer += data
        return len(data)


def _locked(method: Callable[Concatenate[EncodeSession, P], R]) -> Callable[Concatenate[EncodeSession, P], R]:
    """Serialises calls: a cancelled caller may leave a call running in its worker thread, and
    ``close`` from another thread must wait for it rather than free the encoder under it."""

    @functools.wraps(method)
    def wrapper(self: EncodeSession, *args: P.args, **kwargs: P.kwargs) -> R:
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class EncodeSession:
    """Encodes one utterance. Call ``open`` first, then ``add_frame`` / ``add_audio``, then ``finish``."""

    def __init__(
        self,
        params: StreamParams,
        backend: VideoBackend,
        audio: AudioConfig,
        *,
        fallback: VideoBackend | None = None,
        max_file_bytes: int = LimitsConfig.max_file_bytes,
    ) -> None:
        self.params = params
        self.backend = backend
        self.fallback = fallback
        self.audio_config = audio
        self.max_file_bytes = max_file_bytes
        self.video_encoder = ""
        self._video_codec = ""  # RFC 6381 string, from the extradata or (MPEG-TS) the first packet
        self.frames_in = 0
        self.samples_in = 0
        self.frames_out = 0
        self._audio_out = 0
        self._container: av.container.OutputContainer | None = None
        self._sink: _Sink | io.BytesIO | None = None
        self._video: av.VideoStream | None = None
        self._audio: av.AudioStream | None = None
        self._resampler: av.AudioResampler | None = None
        self._time_base = Fraction(params.fps.denominator, params.fps.numerator)
        self._finished = False
        self._closed = False
        self._lock = threading.RLock()
        # fMP4: the hand-written fragments (the container only wrote the init segment)
        self._fragments: FragmentWriter | None = None
        self._out = bytearray()
        self._video_samples: list[bytes] = []
        self._keyframes: list[bool] = []
        self._audio_samples: list[Sample] = []
        self._fragment_frames = params.fragment_frames

    # -- set-up -------------------------------------------------------------------------------
    @_locked
    def open(self) -> bytes:
        """Opens encoders and muxer; returns the bytes written so far (the fMP4 init segment)."""
        if self._closed:  # closed before this (queued) open ran: a cancelled stream
            raise RuntimeError("the session was closed before it was opened")
        try:
            self._open_with(self.backend)
        except av.FFmpegError as exc:
            self._release()
            if self.fallback is None or self.fallback.name == self.backend.name:
                status = self.backend.open_error(exc)
                if status is not None:
                    raise status from exc
                raise
            log.warning("%s failed to open (%s); this stream uses %s", self.backend.name, exc, self.fallback.name)
            self._open_with(self.fallback)
        return self._take()

    def _open_with(self, backend: VideoBackend) -> None:
        p = self.params
        settings = backend.settings(p.width, p.height, p.fps)
        if p.container == "mp4":
            sink: _Sink | io.BytesIO = io.BytesIO()  # the mov muxer seeks back at the end
            fmt, options = "mp4", {}
        elif p.container == "mpegts":
            sink = _Sink()
            fmt, options = "mpegts", {"flush_packets": "1"}
        else:  # fmp4: libavformat writes the init segment only (see the module docstring)
            sink = _Sink()
            fmt, options = "mp4", {"movflags": "empty_moov+default_base_moof+skip_trailer"}
        self._sink = sink
        container = av.open(sink, mode="w", format=fmt, options=options)
        self._container = container
        video = container.add_stream(settings.codec_name, rate=p.fps, options=dict(settings.options))
        assert isinstance(video, av.VideoStream)
        video.width = p.width
        video.height = p.height
        video.pix_fmt = settings.pix_fmt
        video.time_base = self._time_base
        if settings.bit_rate:
            video.bit_rate = settings.bit_rate
        if settings.gop_size:
            video.codec_context.gop_size = settings.gop_size
        self._video = video
        if p.sample_rate:
            self._audio = add_audio_stream(container, p.audio_codec, p.sample_rate, self.audio_config)
        container.start_encoding()
        if self._audio is not None:
            ctx = self._audio.codec_context
            self._resampler = av.AudioResampler(
                format=ctx.format.name, layout="mono", rate=ctx.sample_rate, frame_size=ctx.frame_size or None
            )
        if isinstance(sink, _Sink) and p.container == "fmp4":
            self._out = sink.buffer  # the init segment; nothing is muxed into the container after it
            sink.buffer = bytearray()
            self._fragments = FragmentWriter(bytes(self._out), p.fps)
        self.video_encoder = backend.name
        extradata = video.codec_context.extradata
        self._video_codec = boxes.avc_codecs_string(extradata) if extradata else ""

    @property
    def mime_type(self) -> str:
        """MIME type with the RFC 6381 codecs, e.g. 'video/mp4; codecs="avc1.42C01E, mp4a.40.2"'."""
        p = self.params
        codecs = [self._video_codec] if self._video_codec else []
        if p.sample_rate:
            codecs.append(audio_codecs_string(p.audio_codec))
        base = "video/mp2t" if p.container == "mpegts" else "video/mp4"
        return f'{base}; codecs="{", ".join(codecs)}"' if codecs else base

    # -- data ---------------------------------------------------------------------------------
    @_locked
    def add_frame(self, data: bytes | memoryview) -> bytes:
        """Encodes the next frame (raw bytes in the stream's pixel format, already size-checked)."""
        p = self.params
        assert self._video is not None, "open() first"
        if p.pixel_format == "i420":
            frame = i420_frame(data, p.width, p.height)
        else:
            plane = np.frombuffer(data, np.uint8)
            frame = av.VideoFrame.from_ndarray(plane.reshape(p.height, p.width, 3), format="rgb24")
        frame.pts = self.frames_in
        frame.time_base = self._time_base
        self.frames_in += 1
        self._mux_video(self._video.encode(frame))
        return self._take()

    @_locked
    def add_audio_then_frame(self, pcm: bytes, frame: bytes | memoryview) -> bytes:
        """``add_audio(pcm)`` then ``add_frame(frame)`` in one call (one thread hop per frame)."""
        out = self.add_audio(pcm) if pcm else b""
        return out + self.add_frame(frame)

    @_locked
    def add_audio(self, pcm: bytes) -> bytes:
        """Encodes PCM s16le mono samples that continue the audio so far."""
        samples = np.frombuffer(pcm, "<i2")
        self.samples_in += samples.size
        self._encode_audio(samples)
        return self._take()

    def _encode_audio(self, samples: np.ndarray | None) -> None:
        if self._audio is None or self._resampler is None:
            return
        if samples is None:
            frames = self._resampler.resample(None)
        elif samples.size == 0:
            return
        else:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self.params.sample_rate
            frames = self._resampler.resample(frame)
        rate = self._audio.codec_context.sample_rate
        for out in frames:
            out.pts = self._audio_out  # timestamps from sample counts, never from clocks
            out.time_base = Fraction(1, rate)
            self._audio_out += out.samples
            self._mux_audio(self._audio.encode(out))

    def _mux_video(self, packets: list[av.Packet]) -> None:
        assert self._container is not None
        for packet in packets:
            packet.duration = 1
            if not self._video_codec:
                self._video_codec = boxes.avc_codecs_string(bytes(packet))
            if self._fragments is not None:
                self._video_samples.append(annexb_to_avcc(bytes(packet)))
                self._keyframes.append(bool(packet.is_keyframe))
                if len(self._video_samples) >= self._fragment_frames:
                    self._write_fragment()
            else:
                self._container.mux_one(packet)
        self._check_size()

    def _mux_audio(self, packets: list[av.Packet]) -> None:
        assert self._container is not None and self._audio is not None
        ctx = self._audio.codec_context
        for packet in packets:
            if before_start(packet):
                continue  # encoder priming before sample 0: dropped (see module docstring)
            if self._fragments is not None:
                assert self._fragments.audio is not None
                timescale = self._fragments.audio.timescale
                self._audio_samples.append(audio_sample(packet, ctx.sample_rate, timescale, ctx.frame_size or 1024))
                continue
            if packet.pts is not None and packet.pts < 0:
                packet.pts = packet.dts = 0
            self._container.mux_one(packet)
        self._check_size()

    def _write_fragment(self) -> None:
        """The frames encoded since the last fragment and the audio encoded so far, as one fragment."""
        assert self._fragments is not None
        if not self._video_samples and not self._audio_samples:
            return
        self._out += self._fragments.fragment(self._video_samples, self._keyframes, self._audio_samples)
        self.frames_out += len(self._video_samples)
        self._video_samples, self._keyframes, self._audio_samples = [], [], []

    def _check_size(self) -> None:
        if isinstance(self._sink, io.BytesIO) and self._sink.tell() > self.max_file_bytes:
            raise ResourceExhausted(
                f"the MP4 file exceeds limits.max_file_bytes ({self.max_file_bytes}); use fMP4 for long streams"
            )

    # -- end ----------------------------------------------------------------------------------
    @_locked
    def finish(self) -> bytes:
        """Pads audio to the video's end, flushes both encoders, closes the container."""
        assert self._container is not None and self._video is not None
        p = self.params
        if self._audio is not None:
            missing = p.samples_for_frames(self.frames_in) - self.samples_in
            if missing > 0:
                self._encode_audio(np.zeros(missing, np.int16))
            self._encode_audio(None)
            self._mux_audio(self._audio.encode(None))
        self._mux_video(self._video.encode(None))
        if self._fragments is not None:
            self._write_fragment()
        self._container.close()
        self._container = None
        self._finished = True
        data = self._take()
        if p.container == "mp4":
            data = boxes.faststart(data)
        return data

    @_locked
    def close(self) -> None:
        """Releases the encoders (after an error or cancellation; idempotent). A session closed
        before ``open`` ran stays closed."""
        self._closed = True
        self._release()

    def _release(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                container.close()
            except (av.FFmpegError, OSError, ValueError) as exc:
                log.debug("closing an aborted container: %s", exc)

    def _take(self) -> bytes:
        """Output ready to send: whole boxes (fMP4), whole TS packets, or the file at the end (MP4)."""
        sink = self._sink
        if sink is None:
            return b""
        if self._fragments is not None:  # fMP4: whole fragments, written by _write_fragment
            out = bytes(self._out)
            self._out.clear()
            return out
        if isinstance(sink, io.BytesIO):
            return sink.getvalue() if self._finished else b""
        buf = sink.buffer
        n = len(buf) if self._finished else len(buf) - len(buf) % 188  # MPEG-TS: whole packets
        if n == 0:
            return b""
        out = bytes(buf[:n])
        del buf[:n]
        return out
