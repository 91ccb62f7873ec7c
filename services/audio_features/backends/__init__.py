"""Whisper-encoder backends. Imports are lazy: ONNX Runtime loads only when an encoder is configured."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.audio_features.backends.base import WhisperEncoder
    from services.audio_features.config import WhisperEncoderConfig


def create_encoder(config: WhisperEncoderConfig) -> WhisperEncoder:
    """Builds the encoder backend named by ``config.backend`` (blocking: loads the model)."""
    if config.backend == "onnx":
        from services.audio_features.backends.onnx import OnnxWhisperEncoder

        return OnnxWhisperEncoder(config)
    raise ValueError(f"unknown whisper_encoder.backend {config.backend!r}")
