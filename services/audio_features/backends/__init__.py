"""Whisper-encoder backends. Imports are lazy: ONNX Runtime loads only when an encoder is configured."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.audio_features.backends.base import WhisperEncoder
    from services.audio_features.config import WhisperEncoderConfig
    from talkmesh.common.onnx import ExecutionConfig


def create_encoder(config: WhisperEncoderConfig, execution: ExecutionConfig | None = None) -> WhisperEncoder:
    """Builds the encoder backend named by ``config.backend`` (blocking: loads the model)."""
    if config.backend == "onnx":
        from services.audio_features.backends.onnx import OnnxWhisperEncoder

        return OnnxWhisperEncoder(config, execution)
    raise ValueError(f"unknown whisper_encoder.backend {config.backend!r}")
