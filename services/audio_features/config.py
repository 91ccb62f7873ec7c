"""Audio features configuration: these dataclasses are the defaults (`talkmesh config audio_features`)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # The encoder runs once per block of audio, on the block plus context, zero-padded to its 30 s
    # window. Look-ahead ~ block + right context; block 30 s with no context is MuseTalk's offline
    # recipe. Multiples of 20 ms (one Whisper frame).
    block_seconds: float = 1.0
    left_context_seconds: float = 1.0
    right_context_seconds: float = 0.5

    def validate(self) -> None:
        if self.backend not in ENCODER_BACKENDS:
            raise ConfigError.at("backend", f"{self.backend!r} is not one of {ENCODER_BACKENDS}")
        if self.block_frames < 1:
            raise ConfigError.at("block_seconds", "must be at least 0.02 (one Whisper frame)")
        if self.left_context_seconds < 0:
            raise ConfigError.at("left_context_seconds", "must not be negative")
        if self.right_context_seconds < 0:
            raise ConfigError.at("right_context_seconds", "must not be negative")
        if self.block_frames + self.left_frames + self.right_frames > 1500:
            raise ConfigError.at("block_seconds", "block + left and right context must fit the encoder's 30 s window")

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
class CacheConfig:
    # Bytes of encoder hidden states kept for repeated audio; 0 disables the cache.
    max_bytes: int = 64 * 1024 * 1024

    def validate(self) -> None:
        if self.max_bytes < 0:
            raise ConfigError.at("max_bytes", "must not be negative")


@dataclass(frozen=True)
class AudioFeaturesConfig:
    server: ServerConfig = field(default_factory=lambda: ServerConfig.for_service("audio_features"))
    # A frame is voiced when its RMS level is above this (dB full scale).
    voiced_threshold_dbfs: float = -45.0
    # soxr quality of the resampling to 16 kHz (HQ is what librosa uses by default).
    resample_quality: str = "HQ"
    whisper_encoder: WhisperEncoderConfig = field(default_factory=WhisperEncoderConfig)
    # ONNX Runtime for the Whisper encoder: providers (empty = TensorRT, CUDA, CPU from what loads;
    # a list is pinned), fp16, CUDA arena (talkmesh.common.onnx, the same section as the renderer's).
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)

    def validate(self) -> None:
        if not -120.0 <= self.voiced_threshold_dbfs <= 0.0:
            raise ConfigError.at("voiced_threshold_dbfs", "must be within [-120, 0]")
        if self.resample_quality not in RESAMPLE_QUALITIES:
            raise ConfigError.at("resample_quality", f"{self.resample_quality!r} is not one of {RESAMPLE_QUALITIES}")
