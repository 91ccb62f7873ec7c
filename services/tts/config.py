"""TTS service configuration: these dataclasses are the defaults (`talkmesh config tts`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from talkmesh.common.config import ConfigError, ServerConfig
from talkmesh.common.onnx import ExecutionConfig
from talkmesh.common.registry import spec


@dataclass(frozen=True)
class EspeakConfig:
    # Library and data directory of eSpeak NG; "" uses the ones shipped in the espeakng-loader wheel.
    library_path: str = ""
    data_path: str = ""
    # Length of the buffers eSpeak hands to the synth callback, in milliseconds (latency vs overhead).
    buffer_ms: int = 20

    def validate(self) -> None:
        if not 5 <= self.buffer_ms <= 1000:
            raise ConfigError.at("buffer_ms", "must be between 5 and 1000")


@dataclass(frozen=True)
class PiperConfig:
    # Directory holding Piper voices as <name>.onnx + <name>.onnx.json; "" disables Piper voices.
    voices_dir: str = ""
    # Silence appended after each sentence (not after clauses inside a sentence), in milliseconds.
    sentence_silence_ms: int = 0
    # Linear fade at both ends of each synthesized clause, in milliseconds (no clicks at joins).
    fade_ms: float = 2.0

    def validate(self) -> None:
        if self.sentence_silence_ms < 0:
            raise ConfigError.at("sentence_silence_ms", "must not be negative")
        if not 0 <= self.fade_ms <= 50:
            raise ConfigError.at("fade_ms", "must be between 0 and 50")


@dataclass(frozen=True)
class CacheConfig:
    # In-memory LRU of finished utterances keyed by (text, voice, settings); 0 entries disables it.
    max_entries: int = 128
    max_bytes: int = 64 * 1024 * 1024

    def validate(self) -> None:
        if self.max_entries < 0:
            raise ConfigError.at("max_entries", "must not be negative")
        if self.max_bytes < 0:
            raise ConfigError.at("max_bytes", "must not be negative")


@dataclass(frozen=True)
class TTSConfig:
    server: ServerConfig = field(default_factory=lambda: ServerConfig.for_service("tts"))
    default_voice: str = "espeak:en-us"
    # Longest accepted text (Synthesize) or total of all pieces (SynthesizeStream), in characters.
    max_text_chars: int = 5000
    # Target chunk duration; requests may ask for another one within [min_chunk_ms, max_chunk_ms].
    chunk_ms: int = 40
    min_chunk_ms: int = 5
    max_chunk_ms: int = 1000
    # Longest clause synthesized in one piece; longer runs without punctuation are cut at a space.
    max_segment_chars: int = 300
    # Complete clauses waiting for synthesis in a SynthesizeStream (back-pressure on the client).
    stream_queue_segments: int = 16
    # Streamed text without punctuation (services/tts/text.py): the stream's first run is spoken once
    # it holds this many complete words and none of its punctuation has arrived (0 = only at
    # punctuation) ...
    stream_flush_words: int = 10
    # ... or once it has waited this long unspoken, in seconds (0 = never by time).
    stream_flush_seconds: float = 1.0
    espeak: EspeakConfig = field(default_factory=EspeakConfig)
    piper: PiperConfig = field(default_factory=PiperConfig)
    # ONNX Runtime for Piper voices (talkmesh.common.onnx, the same section as the renderer's): one
    # thread per session by default (many small concurrent requests).
    execution: ExecutionConfig = field(default_factory=lambda: ExecutionConfig(intra_op_threads=1))
    cache: CacheConfig = field(default_factory=CacheConfig)

    def validate(self) -> None:
        engines = spec("tts").backends  # the engines a voice id may name (talkmesh/common/registry.py)
        if self.default_voice.partition(":")[0].strip().lower() not in engines:  # (as requests read it)
            raise ConfigError.at(
                "default_voice", f"must look like <engine>:<name>, the engine one of {', '.join(engines)}"
            )
        if self.max_text_chars < 1:
            raise ConfigError.at("max_text_chars", "must be at least 1")
        if not 1 <= self.min_chunk_ms <= self.chunk_ms <= self.max_chunk_ms:
            raise ConfigError.at("chunk_ms", "must satisfy 1 <= min_chunk_ms <= chunk_ms <= max_chunk_ms")
        if self.max_segment_chars < 20:
            raise ConfigError.at("max_segment_chars", "must be at least 20")
        if self.stream_queue_segments < 1:
            raise ConfigError.at("stream_queue_segments", "must be at least 1")
        if self.stream_flush_words < 0:
            raise ConfigError.at("stream_flush_words", "must not be negative")
        if not 0 <= self.stream_flush_seconds <= 60:
            raise ConfigError.at("stream_flush_seconds", "must be within 0..60")
