"""Audio features configuration: these dataclasses are the defaults (`talkmesh config audio_features`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from services.audio_features.activity import ActivityConfig
from services.audio_features.streaming import FILLS, MUSETALK_VERSIONS
from talkmesh.common.config import ConfigError, ServerConfig
from talkmesh.common.onnx import ExecutionConfig
from talkmesh.common.registry import spec

RESAMPLE_QUALITIES = ("LQ", "MQ", "HQ", "VHQ")
ENCODER_BACKENDS = spec("audio_features").backends


@dataclass(frozen=True)
class WhisperEncoderConfig:
    # ONNX file written by tools/export_whisper_encoder.py; empty: WHISPER_EMBEDDING unavailable.
    path: str = ""
    backend: str = "onnx"
    # The audio is cut into 30 s segments (MuseTalk's recipe), each segment into blocks. The encoder
    # runs once per block on the block plus its context (clipped to the segment), placed at its true
    # position in the segment's 30 s window. Look-ahead ~ block + right context; the left context
    # costs no encoder time (the window is 30 s anyway), only memory: the default keeps the whole
    # segment so far. Block 30 s with no context is MuseTalk's offline recipe exactly. Multiples of
    # 20 ms (one Whisper frame); the measured error of each geometry is in the service README.
    block_seconds: float = 1.0
    left_context_seconds: float = 30.0
    right_context_seconds: float = 0.5
    # What the encoder sees of the part of the 30 s window a block cannot know yet (the rest of the
    # segment): "repeat" the known clip periodically (default: with the random-weight Whisper-tiny
    # export the per-token error against the full-window computation drops from 3.2 % to 1.4 %,
    # README), or "silence" (zeros; cheaper to reason about, larger error early in each segment).
    future_fill: str = "repeat"

    def validate(self) -> None:
        if self.backend not in ENCODER_BACKENDS:
            raise ConfigError.at("backend", f"{self.backend!r} is not one of {ENCODER_BACKENDS}")
        if self.block_frames < 1:
            raise ConfigError.at("block_seconds", "must be at least 0.02 (one Whisper frame)")
        if self.future_fill not in FILLS:
            raise ConfigError.at("future_fill", f"{self.future_fill!r} is not one of {FILLS}")
        if self.left_context_seconds < 0:
            raise ConfigError.at("left_context_seconds", "must not be negative")
        if self.right_context_seconds < 0:
            raise ConfigError.at("right_context_seconds", "must not be negative")
        if self.block_frames > 1500:
            raise ConfigError.at("block_seconds", "a block must fit the encoder's 30 s window")

    @property
    def block_frames(self) -> int:
        return round(self.block_seconds * 50)

    @property
    def left_frames(self) -> int:
        return round(self.left_context_seconds * 50)

    @property
    def right_frames(self) -> int:
        return round(self.right_context_seconds * 50)


@dataclass(frozen=True)
class MuseTalkConfig:
    # The MuseTalk release the embeddings are for: "1.5" (transformers' hidden states, final LayerNorm
    # on the last, zero padding) or "1.0" (no final LayerNorm, edge frames repeated). The encoder file
    # must be exported for the same version (tools/export_whisper_encoder.py --musetalk-version).
    version: str = "1.5"

    def validate(self) -> None:
        if self.version not in MUSETALK_VERSIONS:
            raise ConfigError.at("version", f"{self.version!r} is not one of {tuple(MUSETALK_VERSIONS)}")


@dataclass(frozen=True)
class CacheConfig:
    # Bytes of encoder hidden states kept for repeated audio; 0 disables the cache.
    max_bytes: int = 64 * 1024 * 1024

    def validate(self) -> None:
        if self.max_bytes < 0:
            raise ConfigError.at("max_bytes", "must not be negative")


@dataclass(frozen=True)
class AudioFeaturesConfig:
    #: keys of earlier releases, and where they went (named in the start-up error)
    MOVED_KEYS: ClassVar[dict[str, str]] = {
        "voiced_threshold_dbfs": "activity.min_voiced_dbfs (voicing is now relative to each stream's noise floor)"
    }

    server: ServerConfig = field(default_factory=lambda: ServerConfig.for_service("audio_features"))
    # Each frame's `activity` (voiced, loudness): relative to the stream's own noise floor and speech
    # peak, on the speech band (services/audio_features/activity.py).
    activity: ActivityConfig = field(default_factory=ActivityConfig)
    # soxr quality of the resampling to 16 kHz (HQ is what librosa uses by default).
    resample_quality: str = "HQ"
    whisper_encoder: WhisperEncoderConfig = field(default_factory=WhisperEncoderConfig)
    # ONNX Runtime for the Whisper encoder: providers (empty = TensorRT, CUDA, CPU from what loads;
    # a list is pinned), fp16, CUDA arena (talkmesh.common.onnx, the same section as the renderer's).
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    musetalk: MuseTalkConfig = field(default_factory=MuseTalkConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def validate(self) -> None:
        if self.resample_quality not in RESAMPLE_QUALITIES:
            raise ConfigError.at("resample_quality", f"{self.resample_quality!r} is not one of {RESAMPLE_QUALITIES}")
