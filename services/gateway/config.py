"""Gateway configuration: these dataclasses are the defaults (`talkmesh config gateway`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from services.gateway.auth import AuthConfig
from talkmesh.common.clock import DEFAULT_FPS, MAX_FPS, MIN_FPS, SPEECH_SAMPLE_RATES
from talkmesh.common.config import ClientTLS, ConfigError, Endpoint, ServerConfig
from talkmesh.common.registry import DEFAULT_RENDERER_BACKEND, default_target, spec

#: The least audio a stream may read ahead (Speak) or run ahead of playback (live): the feature
#: stage's look-ahead must fit in it.
MIN_AUDIO_AHEAD_SECONDS = 2.0


#: Bounds of the live settings' queue sizes (memory: each pending turn holds its input buffers).
MAX_PENDING_TURNS = 1024
MAX_TURN_BUFFER = 65536
#: The longest a time setting of the gateway or a live session's config may be (a day, seconds).
MAX_SETTING_SECONDS = 86400


def _check_audio_ahead(seconds: float) -> None:
    if not seconds >= MIN_AUDIO_AHEAD_SECONDS:
        raise ConfigError.at(
            "max_audio_ahead_seconds", f"must be at least {MIN_AUDIO_AHEAD_SECONDS:g} (the feature look-ahead needs it)"
        )


@dataclass(frozen=True)
class LiveSettings:
    """Live sessions (talkmesh.v1.Live)."""

    # Sessions this replica runs at once; more get RESOURCE_EXHAUSTED (health stays SERVING).
    max_sessions: int = 16
    # Rate of the session's audio timeline; turns are resampled to it (TTS voices, callers' PCM).
    sample_rate: int = 24000
    # Defaults for LiveConfig.idle_timeout_seconds and max_session_seconds.
    idle_timeout_seconds: float = 300.0
    max_session_seconds: float = 3600.0
    # A session_ending event this long before the server closes a session (idle or length), or a
    # quarter of the limit before it when that is shorter (services/gateway/live.py).
    ending_warning_seconds: float = 10.0
    # On SIGTERM, sessions are told to end and may finish their turns for this long.
    drain_seconds: float = 10.0
    # How far a turn's audio may run ahead of what has been played (seconds).
    max_audio_ahead_seconds: float = 3.0
    # Turns a session may have started and not finished (queued or playing); the next one is
    # refused with RESOURCE_EXHAUSTED naming this key, and may be sent again once one ends.
    max_pending_turns: int = 32
    # Input one turn queues on the gateway ahead of TTS (text) or of the audio sent on (at most
    # max_audio_ahead_seconds ahead of playback). What comes while it is full is held, and the
    # session's other messages (an interrupt) are read meanwhile: a text turn holds at most its
    # max_text_chars, an audio turn as many seconds of audio as it queues chunks; beyond that,
    # flow control holds the client back (a fast client or LLM waits, it is not refused): text
    # pieces (thousands of LLM tokens) ...
    turn_text_pieces: int = 4096
    # ... and audio chunks (at 20-100 ms a chunk, 20-100 s of speech; a chunk may be up to 1 s, so
    # a turn queues up to this many seconds, and holds as many more: at 24 kHz, 1024 s is ~47 MiB,
    # each way; size a gateway's memory for max_pending_turns such turns per session if clients
    # send whole recordings far ahead of real time).
    turn_audio_chunks: int = 1024
    # A turn that has played all its input and gets nothing new (no text, no audio) for this long
    # has its input ended as if EndOfTurn came (a DEADLINE_EXCEEDED LiveError says so): a client or
    # LLM stream that dies mid-turn cannot hold the turns behind it (nor the idle timeout) for ever.
    turn_input_timeout_seconds: float = 30.0
    # This replica's address as other replicas reach it (Watch forwarding); "" = its own
    # host:port. In Kubernetes: "$(POD_IP):50051".
    advertise_address: str = ""
    # Signs session ids (they name their owner); every replica of a deployment needs the same
    # secret for Watch forwarding. "" = a random secret per process (no forwarding).
    session_secret: str = ""
    # TLS to the other replicas (Watch forwarding reaches their public port).
    peer_tls: ClientTLS = field(default_factory=ClientTLS)

    def validate(self) -> None:
        if self.max_sessions < 1:
            raise ConfigError.at("max_sessions", "must be at least 1")
        if self.sample_rate not in SPEECH_SAMPLE_RATES:
            raise ConfigError.at("sample_rate", f"must be one of {', '.join(map(str, SPEECH_SAMPLE_RATES))}")
        if self.idle_timeout_seconds <= 0:
            raise ConfigError.at("idle_timeout_seconds", "must be positive")
        if self.max_session_seconds <= 0:
            raise ConfigError.at("max_session_seconds", "must be positive")
        if self.ending_warning_seconds < 0:
            raise ConfigError.at("ending_warning_seconds", "must not be negative")
        if self.drain_seconds < 0:
            raise ConfigError.at("drain_seconds", "must not be negative")
        _check_audio_ahead(self.max_audio_ahead_seconds)
        if not 1 <= self.max_pending_turns <= MAX_PENDING_TURNS:
            raise ConfigError.at("max_pending_turns", f"must be within 1..{MAX_PENDING_TURNS}")
        for name in ("turn_text_pieces", "turn_audio_chunks"):
            if not 1 <= getattr(self, name) <= MAX_TURN_BUFFER:
                raise ConfigError.at(name, f"must be within 1..{MAX_TURN_BUFFER}")
        if not 0 < self.turn_input_timeout_seconds <= MAX_SETTING_SECONDS:
            raise ConfigError.at(
                "turn_input_timeout_seconds", f"must be within 0..{MAX_SETTING_SECONDS} (exclusive of 0)"
            )


@dataclass(frozen=True)
class GatewayConfig:
    server: ServerConfig = field(default_factory=lambda: ServerConfig.for_service("gateway"))
    # Where the four stages listen (defaults: a local mesh on the registry's ports).
    tts: Endpoint = field(default_factory=lambda: Endpoint(default_target("tts")))
    audio_features: Endpoint = field(default_factory=lambda: Endpoint(default_target("audio_features")))
    renderer: Endpoint = field(default_factory=lambda: Endpoint(default_target("renderer")))
    encoder: Endpoint = field(default_factory=lambda: Endpoint(default_target("encoder")))
    # Longest text accepted by Speak, in characters (after stripping).
    max_text_chars: int = 5000
    # Longest caller's speech accepted by SpeakStream's audio input, in seconds.
    max_audio_seconds: float = 600.0
    # Renderer backend when the request names none; decides the feature type asked for. Keep it the
    # renderer's default_backend (`talkmesh up` passes that one unless this is set).
    default_renderer_backend: str = DEFAULT_RENDERER_BACKEND
    # Messages buffered between two stages of one request (bounded queues).
    queue_size: int = 32
    # How far TTS audio may run ahead of the frames already sent to the encoder, in seconds. Bounds
    # the audio a request holds, and keeps the stages in step. Must exceed the feature look-ahead
    # (Wav2Lip 0.2 s, Whisper embeddings about 1.5 s).
    max_audio_ahead_seconds: float = 3.0
    # Deadline for a whole Speak call when the client set none, in seconds.
    default_deadline_seconds: float = 600.0
    fps: float = DEFAULT_FPS
    # Audio chunk length asked of TTS, in milliseconds (0: the TTS service's own default). TTS runs
    # hundreds of times faster than real time, so a longer chunk adds no latency, while every
    # message the gateway relays costs it CPU (about 0.1-0.2 ms on a laptop core): 200 ms chunks
    # relay a fifth of the messages of 40 ms ones.
    tts_chunk_ms: int = 200
    # Later TTS chunks double in length up to this many milliseconds (0: all are tts_chunk_ms). The
    # first chunk, which decides the time to first frame, stays tts_chunk_ms long; a paragraph then
    # costs every hop (tts, audio_features, encoder and the gateway between them) a third of the
    # messages. Must fit in max_audio_ahead_seconds with the feature look-ahead.
    tts_max_chunk_ms: int = 800
    # First things first: until a request's first fragment is out (at most this long after its
    # first TTS chunk), the encoder (and so the renderer) gets what frame 0 needs: the first chunk,
    # the first feature batch and the audio and visemes of that batch's frames; the rest waits, in
    # order, so the first frame does not share the cores with the frames after it. The feature
    # stage gets the audio it needs for frame 0 (look-ahead included); then TTS is read no further
    # until the hold ends. 0 turns it off; a whole-file MP4 or fragments longer than the first
    # chunk are never held (docs/ARCHITECTURE.md).
    start_hold_ms: int = 100
    live: LiveSettings = field(default_factory=LiveSettings)
    # API keys (off by default; docs/SECURITY.md).
    auth: AuthConfig = field(default_factory=AuthConfig)

    def validate(self) -> None:
        if self.max_text_chars < 1:
            raise ConfigError.at("max_text_chars", "must be at least 1")
        if not 0 < self.max_audio_seconds <= MAX_SETTING_SECONDS:
            raise ConfigError.at("max_audio_seconds", f"must be within 0..{MAX_SETTING_SECONDS} (exclusive of 0)")
        if self.queue_size < 1:
            raise ConfigError.at("queue_size", "must be at least 1")
        _check_audio_ahead(self.max_audio_ahead_seconds)
        if not MIN_FPS <= self.fps <= MAX_FPS:
            raise ConfigError.at("fps", f"must be within {MIN_FPS}..{MAX_FPS}")
        if not 0 <= self.tts_chunk_ms <= 1000:
            raise ConfigError.at("tts_chunk_ms", "must be within 0..1000 (0: the TTS service's default)")
        if not 0 <= self.start_hold_ms <= 1000:
            raise ConfigError.at("start_hold_ms", "must be within 0..1000")
        if self.tts_max_chunk_ms and not max(self.tts_chunk_ms, 1) <= self.tts_max_chunk_ms <= 1000:
            raise ConfigError.at("tts_max_chunk_ms", "must be 0 or within tts_chunk_ms..1000")
        known = spec("renderer").backends
        if self.default_renderer_backend not in known:
            raise ConfigError.at("default_renderer_backend", f"{self.default_renderer_backend!r} is not one of {known}")
