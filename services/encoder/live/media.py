"""The live session's codecs: H.264 and AAC encoders, the init segment, and encoders for idle loops.

libavformat's fMP4 muxer writes the init segment (it builds ``avcC`` and ``esds`` from the
codecs' configuration) and is then only used for that: frames and audio are encoded by the
stream's codec contexts directly, and ``fmp4.FragmentWriter`` writes the fragments. A second,
standalone H.264 encoder with the same settings encodes idle loops; its parameter sets must equal
the live encoder's (checked), so its packets can be spliced into the live stream after any IDR.

Blocking (PyAV); used from one worker thread at a time.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from services.encoder import boxes
from services.encoder.backends.base import VideoBackend, VideoCodecSettings
from services.encoder.config import AudioConfig
from services.encoder.fmp4 import Sample, annexb_to_avcc, audio_sample, before_start
from services.encoder.frames import aac_options, add_audio_stream, audio_codecs_string, i420_frame

AAC_FRAME = 1024  # samples per AAC frame
#: Silent ticks fed to the encoder before its (identical) silent packets are reused.
SILENCE_WARMUP_TICKS = 8
#: Audio fed past a speaking frame's end beyond three codec frames (track samples): the resampler's
#: filter holds a few samples back (see ``LiveCodecs.audio_lead``).
LEAD_MARGIN = 128


@dataclass(frozen=True)
class LiveParams:
    width: int
    height: int
    fps: Fraction
    sample_rate: int  # the session's PCM rate
    audio_codec: str  # "aac" or "opus"

    @property
    def frame_bytes(self) -> int:
        """Bytes of one I420 frame."""
        return self.width * self.height * 3 // 2


def _configure(ctx: av.VideoCodecContext, settings: VideoCodecSettings, p: LiveParams) -> None:
    ctx.width = p.width
    ctx.height = p.height
    ctx.pix_fmt = settings.pix_fmt
    ctx.time_base = Fraction(p.fps.denominator, p.fps.numerator)
    ctx.framerate = p.fps
    if settings.bit_rate:
        ctx.bit_rate = settings.bit_rate
    if settings.gop_size:
        ctx.gop_size = settings.gop_size


class VideoEncoder:
    """An H.264 encoder context: raw I420 frames in, (Annex B packet, keyframe) out."""

    def __init__(self, ctx: av.VideoCodecContext, params: LiveParams) -> None:
        self.ctx = ctx
        self.params = params

    @classmethod
    def standalone(cls, backend: VideoBackend, params: LiveParams) -> VideoEncoder:
        """An encoder with the live session's settings (for idle loops)."""
        settings = backend.settings(params.width, params.height, params.fps)
        ctx = av.CodecContext.create(settings.codec_name, "w")
        assert isinstance(ctx, av.VideoCodecContext)
        _configure(ctx, settings, params)
        ctx.options = dict(settings.options)
        ctx.flags |= av.codec.context.Flags.global_header  # like the MP4 muxer's stream
        ctx.open()
        return cls(ctx, params)

    @property
    def extradata(self) -> bytes:
        return bytes(self.ctx.extradata or b"")

    def encode(self, data: bytes, pts: int, *, force_keyframe: bool = False) -> tuple[bytes, bool]:
        frame = i420_frame(data, self.params.width, self.params.height)
        frame.pts = pts
        frame.time_base = self.ctx.time_base
        if force_keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        packets = self.ctx.encode(frame)
        if len(packets) != 1:  # zero-latency settings: exactly one packet per frame
            raise RuntimeError(f"{self.ctx.name}: {len(packets)} packets for one frame (needs zero-latency settings)")
        (packet,) = packets
        return annexb_to_avcc(bytes(packet)), bool(packet.is_keyframe)


class LiveCodecs:
    """The session's video and audio encoders and its init segment."""

    def __init__(self, params: LiveParams, backend: VideoBackend, audio: AudioConfig) -> None:
        self.params = params
        self.backend = backend
        settings = backend.settings(params.width, params.height, params.fps)
        sink = io.BytesIO()
        container = av.open(
            sink, mode="w", format="mp4", options={"movflags": "empty_moov+default_base_moof+skip_trailer"}
        )
        video = container.add_stream(settings.codec_name, rate=params.fps, options=dict(settings.options))
        assert isinstance(video, av.VideoStream)
        _configure(video.codec_context, settings, params)
        video.time_base = Fraction(params.fps.denominator, params.fps.numerator)
        astream = add_audio_stream(container, params.audio_codec, params.sample_rate, audio)
        #: the audio track's sample rate (``audio.aac_sample_rate``, as for Speak; Opus: 48 kHz)
        self.rate = astream.codec_context.sample_rate
        container.start_encoding()
        self.container = container
        self.init_segment = sink.getvalue()
        self.video = VideoEncoder(video.codec_context, params)
        self.audio_ctx = astream.codec_context
        self._audio_options = aac_options(audio) if params.audio_codec == "aac" else {}
        self.resampler = self._resampler()
        self.video_encoder = settings.codec_name
        self._audio_pts = 0
        self.fed = 0  # samples handed to encode_audio / encode_silence (the session's rate)
        self.sent = 0  # audio track time of the packets returned so far (track samples)
        # Silence is free: once a few silent ticks have flushed the encoder, its packets are all the
        # same bytes; they are sent without encoding while the input stays silent (idle sessions).
        self._silent_ticks = 0
        self._silent_packet: bytes | None = None
        self._owed = 0  # silent track samples skipped and not yet covered by a whole packet
        # skipping is exact when an AAC frame is a whole number of input samples (at a 48 kHz
        # track: 24 or 48 kHz input)
        ratio, rest = divmod(self.rate, params.sample_rate)
        self._skip_ratio = ratio if rest == 0 and AAC_FRAME % ratio == 0 and params.audio_codec == "aac" else 0

    @property
    def mime_type(self) -> str:
        video = boxes.avc_codecs_string(self.video.extradata)
        return f'video/mp4; codecs="{video}, {audio_codecs_string(self.params.audio_codec)}"'

    @property
    def audio_lead(self) -> int:
        """Samples (at the session rate) a speaking frame's audio is fed past the frame's end, so the
        frame's fragment carries every packet up to that end: FFmpeg's AAC encoder sends a frame's
        packet two frames later (one frame of look-ahead, then AAC's delay of 1024 samples; Opus's
        is 312) and whole frames only (up to one more), and the resampler holds a few samples."""
        frame = self.audio_ctx.frame_size or AAC_FRAME
        return -(-(3 * frame + LEAD_MARGIN) * self.params.sample_rate // self.rate)

    def encode_audio(self, pcm: bytes) -> list[Sample]:
        """PCM s16le mono at the session rate in, encoded packets out (priming dropped), durations in
        the audio track's timescale (``rate``)."""
        samples = np.frombuffer(pcm, "<i2")
        if samples.size == 0:
            return []
        self.fed += samples.size
        silent = not samples.any()
        self._silent_ticks = self._silent_ticks + 1 if silent else 0
        ratio = self._skip_ratio
        if silent and ratio and self._silent_packet is not None and self._silent_ticks > SILENCE_WARMUP_TICKS:
            return self._skip_silence(samples.size, self._silent_packet)
        out: list[Sample] = []
        if self._owed:
            # speech after skipped silence: the encoder first gets the silence still owed (less
            # than one AAC frame), so the audio timeline stays exact to the sample
            out = self._resample_and_encode(np.zeros(self._owed // ratio, np.int16))
            self._owed = 0
        encoded = self._resample_and_encode(samples)
        if silent and ratio and self._silent_ticks > SILENCE_WARMUP_TICKS and encoded:
            first = encoded[0].data
            if len(first) <= 64 and all(x.data == first and x.duration == AAC_FRAME for x in encoded):
                self._silent_packet = first
        return out + encoded

    def encode_silence(self, samples: int) -> list[Sample]:
        """``encode_audio`` of ``samples`` silent samples, without building or scanning the PCM
        once the silent packet is known (an idle session's every fragment)."""
        ratio = self._skip_ratio
        if ratio and self._silent_packet is not None and self._silent_ticks >= SILENCE_WARMUP_TICKS:
            self._silent_ticks += 1
            self.fed += samples
            return self._skip_silence(samples, self._silent_packet)
        return self.encode_audio(bytes(2 * samples))

    def cut_audio(self) -> list[Sample]:
        """An interrupt: what the audio encoder and the resampler hold and have not sent (the speech
        fed ahead of the picture, past the cut) is dropped with them, and the track goes on with
        silence from the end of the packets sent so far up to where the input stands (``fed``), so
        the next sample fed lands where it would have (to the nearest session sample). Returns the
        packets of that silence encoded so far.

        The packets already sent reach at most one AAC frame (and the margin) past the cut, and
        decode to at most one more (the last one's MDCT tail): the page mutes those (docs/WEB.md)."""
        rate = self.params.sample_rate
        zeros = max(0, round(self.fed - Fraction(self.sent * rate, self.rate)))
        self.audio_ctx = self._audio_encoder()
        self.resampler = self._resampler()
        self._audio_pts = 0  # the new encoder's priming is dropped like the first one's
        self._owed = 0  # included in ``zeros``
        self._silent_ticks = 0
        return self._resample_and_encode(np.zeros(zeros, np.int16)) if zeros else []

    def _audio_encoder(self) -> av.AudioCodecContext:
        """A fresh audio encoder with the first one's settings (and so its AudioSpecificConfig)."""
        first = self.container.streams.audio[0].codec_context
        ctx = av.CodecContext.create(first.name, "w")
        assert isinstance(ctx, av.AudioCodecContext)
        ctx.sample_rate = self.rate
        ctx.layout = "mono"
        ctx.format = first.format.name
        ctx.bit_rate = first.bit_rate
        ctx.options = dict(self._audio_options)
        ctx.flags |= av.codec.context.Flags.global_header  # like the MP4 muxer's stream
        ctx.open()
        if bytes(ctx.extradata or b"") != bytes(first.extradata or b""):
            raise RuntimeError(f"{ctx.name}: a new encoder's configuration differs from the init segment's")
        return ctx

    def _resampler(self) -> av.AudioResampler:
        return av.AudioResampler(
            format=self.audio_ctx.format.name,
            layout="mono",
            rate=self.rate,
            frame_size=self.audio_ctx.frame_size or None,
        )

    def _skip_silence(self, samples: int, packet: bytes) -> list[Sample]:
        """``samples`` silent samples not encoded: the cached silent packet for each whole AAC frame
        they complete; the rest is owed (and fed to the encoder before the next speech)."""
        self._owed += samples * self._skip_ratio  # track samples not encoded
        packets, self._owed = divmod(self._owed, AAC_FRAME)
        self.sent += packets * AAC_FRAME
        return [Sample(packet, AAC_FRAME)] * packets

    def _resample_and_encode(self, samples: np.ndarray) -> list[Sample]:
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.params.sample_rate
        return self._encode(self.resampler.resample(frame))

    def flush_audio(self) -> list[Sample]:
        out = self._encode(self.resampler.resample(None))
        for packet in self.audio_ctx.encode(None):
            out += self._packet(packet)
        return out

    def _encode(self, frames: list[av.AudioFrame]) -> list[Sample]:
        out: list[Sample] = []
        for f in frames:
            f.pts = self._audio_pts  # timestamps from sample counts, never from clocks
            f.time_base = Fraction(1, self.rate)
            self._audio_pts += f.samples
            for packet in self.audio_ctx.encode(f):
                out += self._packet(packet)
        return out

    def _packet(self, packet: av.Packet) -> list[Sample]:
        if before_start(packet):
            return []  # encoder priming before sample 0 (see services/encoder/session.py)
        sample = audio_sample(packet, self.rate, self.rate, self.audio_ctx.frame_size or AAC_FRAME)
        self.sent += sample.duration
        return [sample]

    def close(self) -> None:
        try:
            self.container.close()
        except (av.FFmpegError, OSError, ValueError):
            pass
