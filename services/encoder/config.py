"""Encoder configuration: these dataclasses are the defaults (`talkmesh config encoder`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from talkmesh.common.channel import MESSAGE_HEADROOM_BYTES
from talkmesh.common.clock import DEFAULT_FPS, MAX_FRAGMENT_MS
from talkmesh.common.config import ConfigError, Endpoint, ServerConfig
from talkmesh.common.enums import choices
from talkmesh.common.framering import MAX_SLOTS, FrameRingConfig
from talkmesh.common.registry import default_target, spec
from talkmesh.v1 import types_pb2

#: "auto": NVENC when its start-up probe succeeds, else x264
ENCODER_CHOICES = ("auto", *spec("encoder").backends)
H264_PROFILES = ("baseline", "main", "high")
CONTAINERS = tuple(choices(types_pb2.Container))
AUDIO_CODECS = tuple(choices(types_pb2.AudioCodec))
AAC_CODERS = ("fast", "twoloop", "anmr")
#: NVENC's rate control modes (video.nvenc.rc)
NVENC_RC_MODES = ("cbr", "vbr", "constqp")
#: the sample rates an AAC track can have (MPEG-4's sampling frequency table)
AAC_SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000)
#: an Opus track is always timed in 48 kHz samples (RFC 7845), and the AAC track's rate when the
#: input's is not an AAC rate
TRACK_RATE_FALLBACK = 48000


@dataclass(frozen=True)
class X264Config:
    preset: str = "ultrafast"
    tune: str = "zerolatency"
    # Constant rate factor (quality); used when bitrate_kbps is 0.
    crf: float = 27.0
    # Target bitrate with a matching VBV buffer; 0 selects CRF.
    bitrate_kbps: int = 0
    # Encoder threads; 0 lets x264 decide (sliced threads with zerolatency). 1 costs ~0.2 ms less
    # CPU per 512x512 frame (1.7 vs 1.9 ms), but each frame then takes longer to encode: on a loaded
    # machine a live session's ticks fell behind its renderer (underruns), so auto stays the default.
    threads: int = 0

    def validate(self) -> None:
        if not 0 <= self.crf <= 51:
            raise ConfigError.at("crf", "must be within 0..51")
        if self.bitrate_kbps < 0:
            raise ConfigError.at("bitrate_kbps", "must not be negative")
        if self.threads < 0:
            raise ConfigError.at("threads", "must not be negative")


@dataclass(frozen=True)
class NvencConfig:
    # p1 (fastest) .. p7 (best quality); "ull" is the ultra-low-latency tuning.
    preset: str = "p1"
    tune: str = "ull"
    # Rate control: "cbr", "vbr" or "constqp".
    rc: str = "cbr"
    bitrate_kbps: int = 2500
    # Quality for rc=vbr with bitrate 0 or rc=constqp.
    cq: int = 26
    # Which GPU to use.
    gpu: int = 0

    def validate(self) -> None:
        if self.rc not in NVENC_RC_MODES:
            raise ConfigError.at("rc", f"{self.rc!r} is not one of {', '.join(NVENC_RC_MODES)}")
        if self.bitrate_kbps < 0:
            raise ConfigError.at("bitrate_kbps", "must not be negative")
        if not 0 <= self.cq <= 51:
            raise ConfigError.at("cq", "must be within 0..51")
        if self.gpu < 0:
            raise ConfigError.at("gpu", "must not be negative")


@dataclass(frozen=True)
class VideoConfig:
    # "auto" probes NVENC at start-up and falls back to x264; "nvenc" requires it; "x264" never probes.
    encoder: str = "auto"
    # Use x264 for a stream whose NVENC session cannot be opened (GPU session limit reached).
    fallback_to_x264: bool = True
    # Keyframe interval in seconds (the first frame is always a keyframe).
    gop_seconds: float = 2.0
    profile: str = "baseline"
    # H.264 level such as "3.1"; empty lets the encoder choose.
    level: str = ""
    x264: X264Config = field(default_factory=X264Config)
    nvenc: NvencConfig = field(default_factory=NvencConfig)

    def validate(self) -> None:
        if self.encoder not in ENCODER_CHOICES:
            raise ConfigError.at("encoder", f"{self.encoder!r} is not one of {ENCODER_CHOICES}")
        if self.profile not in H264_PROFILES:
            raise ConfigError.at("profile", f"{self.profile!r} is not one of {H264_PROFILES}")
        if not 0 < self.gop_seconds <= 60:
            raise ConfigError.at("gop_seconds", "must be within (0, 60]")
        if self.level and not _is_level(self.level):
            raise ConfigError.at("level", f"{self.level!r} is not an H.264 level like 3.1")


def _is_level(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return 1.0 <= value <= 6.2


@dataclass(frozen=True)
class AudioConfig:
    aac_bitrate_kbps: int = 64
    opus_bitrate_kbps: int = 32
    # AAC track sample rate of Speak streams and live sessions (0: the input's rate when AAC supports
    # it, else 48 kHz). 48 kHz keeps an AAC frame at 21 ms, so the audio track's last frame
    # overshoots the video's end by less than a frame.
    aac_sample_rate: int = 48000
    # FFmpeg's AAC coder: "fast" costs a third of the default "twoloop" (0.8 vs 2.4 ms of CPU per
    # 40 ms of speech at 48 kHz, more than the H.264 encode of a 512x512 frame) for a quality
    # difference that speech at 64 kb/s does not show; "twoloop" or "anmr" for music.
    aac_coder: str = "fast"

    def validate(self) -> None:
        if self.aac_coder not in AAC_CODERS:
            raise ConfigError.at("aac_coder", f"{self.aac_coder!r} is not one of {AAC_CODERS}")
        if self.aac_bitrate_kbps < 8:
            raise ConfigError.at("aac_bitrate_kbps", "must be at least 8 kb/s")
        if self.opus_bitrate_kbps < 6:
            raise ConfigError.at("opus_bitrate_kbps", "must be at least 6 kb/s")
        if self.aac_sample_rate not in (0, *AAC_SAMPLE_RATES):
            raise ConfigError.at("aac_sample_rate", f"{self.aac_sample_rate} is not an AAC sample rate")

    def track_rate(self, codec: str, input_rate: int) -> int:
        """The audio track's sample rate for ``codec`` ("aac" or "opus") and PCM at ``input_rate``:
        the one place both the Speak and the live sessions' tracks take it from."""
        if codec == "opus":
            return TRACK_RATE_FALLBACK
        if self.aac_sample_rate:
            return self.aac_sample_rate
        return input_rate if input_rate in AAC_SAMPLE_RATES else TRACK_RATE_FALLBACK


@dataclass(frozen=True)
class StreamDefaults:
    # Fragment duration when EncodeConfig.fragment_ms is 0: a fragment holds the fewest frames that
    # last this long and leaves the moment its last one is encoded (40 ms at 25 fps: one per frame).
    fragment_ms: int = 40
    # Frames pulled from the renderer whose fragments may leave in one message: when the next frame
    # is already waiting, its fragment joins the same message (at most this many frames), so a
    # stream that runs faster than real time costs every hop fewer messages. The first fragment,
    # and any fragment with no frame waiting behind it, leave at once: this never adds latency.
    # 25 (a second at 25 fps) lets a Speak that runs 6x faster than real time send about one
    # message per 10 frames; 1: one message per fragment.
    coalesce_frames: int = 25
    container: str = "fmp4"
    audio_codec: str = "aac"
    fps: float = DEFAULT_FPS

    def validate(self) -> None:
        if not 1 <= self.fragment_ms <= MAX_FRAGMENT_MS:
            raise ConfigError.at("fragment_ms", f"must be within 1..{MAX_FRAGMENT_MS}")
        if not 1 <= self.coalesce_frames <= 250:
            raise ConfigError.at("coalesce_frames", "must be within 1..250")
        if self.container not in CONTAINERS:
            raise ConfigError.at("container", f"{self.container!r} is not one of {CONTAINERS}")
        if self.audio_codec not in AUDIO_CODECS:
            raise ConfigError.at("audio_codec", f"{self.audio_codec!r} is not one of {AUDIO_CODECS}")
        if not 1 <= self.fps <= 120:
            raise ConfigError.at("fps", "must be within 1..120")


@dataclass(frozen=True)
class LimitsConfig:
    max_width: int = 3840
    max_height: int = 2160
    max_fps: float = 120.0
    max_fragment_ms: int = MAX_FRAGMENT_MS
    # Requests read ahead of the encoder per stream (frames and audio chunks): the only buffer
    # between a fast sender and a slow encoder or receiver.
    input_queue: int = 4
    # Output messages larger than this are split into several MediaChunks (stay under the gRPC limit).
    max_chunk_bytes: int = 4 * 1024 * 1024
    # Whole-file MP4 mode keeps the file in memory until the end; refuse to grow beyond this.
    max_file_bytes: int = 512 * 1024 * 1024

    def validate(self) -> None:
        if self.max_width < 16:
            raise ConfigError.at("max_width", "must be at least 16")
        if self.max_height < 16:
            raise ConfigError.at("max_height", "must be at least 16")
        if not 1 <= self.max_fps <= 240:
            raise ConfigError.at("max_fps", "must be within 1..240")
        if self.input_queue < 1:
            raise ConfigError.at("input_queue", "must be at least 1")
        if self.max_chunk_bytes < 64 * 1024:
            raise ConfigError.at("max_chunk_bytes", "must be at least 65536")
        if self.max_file_bytes < self.max_chunk_bytes:
            raise ConfigError.at("max_file_bytes", "must be at least max_chunk_bytes")


@dataclass(frozen=True)
class LiveConfig:
    # Rendered speech held ahead of the clock (ms): bounds memory and how much an interrupt drops.
    lead_ms: int = 500
    # Rendered speech a turn waits for before it starts (ms): absorbs jitter of real-time input.
    start_buffer_ms: int = 120
    # Length of an idle loop (seconds, rounded to whole GOPs) and its GOP (frames; 0 = one second).
    loop_seconds: float = 4.0
    loop_gop_frames: int = 0
    # Idle loops kept in memory (per avatar, size, fps and encoder settings).
    max_loops: int = 32
    # Frames of the pre-encoded idle loop sent per fragment (one message) while a session idles
    # with no turn queued, sent when the first of them is due (the others ride ahead of the clock).
    # Fewer messages and timer wake-ups per idle second; a turn that becomes ready meanwhile starts
    # at most this many frames minus one later (in practice rarely: the gateway announces a turn as
    # soon as it opens, which ends the batching). 4 keeps an idle session under a tenth of a
    # speaking one's CPU (2: 12 %, 4: 8.5 %; BENCHMARKS.md). 1 = one frame per tick (as while speaking).
    idle_frames_per_fragment: int = 4

    def validate(self) -> None:
        if not 40 <= self.lead_ms <= 5000:
            raise ConfigError.at("lead_ms", "must be within 40..5000")
        if not 0 <= self.start_buffer_ms <= self.lead_ms:
            raise ConfigError.at("start_buffer_ms", "must be within 0..lead_ms")
        if not 1 <= self.loop_seconds <= 60:
            raise ConfigError.at("loop_seconds", "must be within 1..60")
        if self.loop_gop_frames < 0:
            raise ConfigError.at("loop_gop_frames", "must not be negative")
        if self.max_loops < 1:
            raise ConfigError.at("max_loops", "must be at least 1")
        if not 1 <= self.idle_frames_per_fragment <= 12:
            raise ConfigError.at("idle_frames_per_fragment", "must be within 1..12")


@dataclass(frozen=True)
class EncoderFrameRingConfig(FrameRingConfig):
    # Slots per stream: frames rendered ahead of the one being encoded. A slot holds one frame of
    # the size the avatar had last time (393 KB at 512x512 I420: 12 slots are ~4.7 MB per stream).
    slots: int = 12
    # Rings made ahead per frame size (for the last 4 sizes): a stream that takes one has frame 0 in
    # it too (a ring made when the stream starts is offered only once made, ~1.5 ms later).
    ready: int = 2

    def validate(self) -> None:
        super().validate()
        if not 2 <= self.slots <= MAX_SLOTS:
            raise ConfigError.at("slots", f"must be within 2..{MAX_SLOTS}")
        if not 0 <= self.ready <= 16:
            raise ConfigError.at("ready", "must be within 0..16")


@dataclass(frozen=True)
class EncoderConfig:
    # At most 16 encodes at once per process (x264 on CPU, or an NVENC session budget).
    server: ServerConfig = field(default_factory=lambda: ServerConfig.for_service("encoder"))
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    defaults: StreamDefaults = field(default_factory=StreamDefaults)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # Where rendered frames come from when a stream asks the encoder to render (EncodeConfig.render):
    # the renderer, ideally in the same pod ("unix:///run/talkmesh/renderer.sock") or on localhost.
    renderer: Endpoint = field(default_factory=lambda: Endpoint(default_target("renderer")))
    # Audio released to the AAC encoder ahead of the frame being encoded (seconds), when rendering.
    audio_lead_seconds: float = 0.25
    # First things first, when rendering an fMP4 stream: the renderer gets the first fragment's
    # frames alone, and the rest of the first feature batch once that fragment has gone out or, for
    # a renderer that needs more input before its first frame, after this long. 0 turns it off
    # (independent of gateway.start_hold_ms).
    first_fragment_wait_ms: int = 100
    # Encoder sessions kept open for the next stream (services/encoder/spares.py): once a rendered
    # stream's first fragment is out, a session of the same StreamParams (size, fps, pixel format,
    # audio rate and codec, container, fragment length) opens in the background, so the next such
    # stream opens none (~3-5 ms that hold the GIL: the event loop stalls). x264 only: NVENC's
    # sessions are a per-GPU budget the streams need. 0 turns it off.
    spare_sessions: int = 1
    # Frames from a renderer on this machine (the same pod, or the same host) come through shared
    # memory instead of gRPC messages (talkmesh/common/framering.py): the renderer's
    # `frame_ring.directory` must be the same directory. A renderer elsewhere falls back to frames
    # in messages by itself; turn it off where they never share one (the gpu-split overlay).
    frame_ring: EncoderFrameRingConfig = field(default_factory=EncoderFrameRingConfig)
    # Live sessions (the Live RPC).
    live: LiveConfig = field(default_factory=LiveConfig)

    def validate(self) -> None:
        if not 0 <= self.audio_lead_seconds <= 2:
            raise ConfigError.at("audio_lead_seconds", "must be within 0..2")
        if not 0 <= self.first_fragment_wait_ms <= 10_000:
            raise ConfigError.at("first_fragment_wait_ms", "must be within 0..10000")
        if not 0 <= self.spare_sessions <= 64:
            raise ConfigError.at("spare_sessions", "must be within 0..64")
        if self.limits.max_chunk_bytes > self.server.max_message_bytes - MESSAGE_HEADROOM_BYTES:
            raise ConfigError.at(
                "limits.max_chunk_bytes",
                f"must stay at least {MESSAGE_HEADROOM_BYTES // 1024} KiB below server.max_message_bytes",
            )
        if self.defaults.fragment_ms > self.limits.max_fragment_ms:
            raise ConfigError.at("defaults.fragment_ms", "exceeds limits.max_fragment_ms")
