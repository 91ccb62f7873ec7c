"""Whisper encoder exported to ONNX by ``tools/export_whisper_encoder.py``, run by ONNX Runtime.

The model has one input ``input_features`` ``[batch, 80, frames]`` and one output
``hidden_states`` ``[batch, layers, frames / 2, width]`` (embedding output, then every layer).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from services.audio_features.backends.base import WhisperEncoder
from services.audio_features.config import WhisperEncoderConfig
from talkmesh.common.onnx import ExecutionConfig, ModelError, ProviderCheck, SessionFactory, open_session
from talkmesh.common.onnx_files import MUSETALK_VERSION_KEY

log = logging.getLogger(__name__)

INPUT_NAME = "input_features"
OUTPUT_NAME = "hidden_states"
FINAL_LAYER_NORM_KEY = "talkmesh.final_layer_norm"  # metadata: "true" | "false"
#: what the service takes, named in its refusals
EXPECTED_SHAPES = f"{INPUT_NAME} [batch, 80, frames] -> {OUTPUT_NAME} [batch, layers, frames / 2, width]"


def _static(dim: object, what: str) -> int:
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"whisper encoder: {what} must be a static dimension, got {dim!r}")
    return dim


def encoder_release(session: Any) -> tuple[str | None, bool]:
    """(the MuseTalk release it was exported for, or None; whether its last state has the final
    LayerNorm), from the metadata tools/export_whisper_encoder.py writes; older exports are
    transformers' states (with it)."""
    meta = session.get_modelmeta().custom_metadata_map
    return meta.get(MUSETALK_VERSION_KEY) or None, meta.get(FINAL_LAYER_NORM_KEY, "true") == "true"


def check_encoder_session(session: Any, path: Path) -> tuple[int, int, int]:
    """``(input_frames, layers, width)`` of a Whisper encoder's ONNX Runtime session, or ValueError
    saying why the service refuses the file (``talkmesh doctor`` makes the same check)."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT_NAME not in inputs or OUTPUT_NAME not in outputs:
        raise ValueError(
            f"whisper_encoder.path: {path} needs input {INPUT_NAME!r} and output {OUTPUT_NAME!r} "
            f"(export it with tools/export_whisper_encoder.py); has {list(inputs)} -> {list(outputs)}"
        )
    in_shape = inputs[INPUT_NAME].shape
    out_shape = outputs[OUTPUT_NAME].shape
    if len(in_shape) != 3 or len(out_shape) != 4:
        raise ValueError(
            f"whisper_encoder.path: unexpected shapes {in_shape} -> {out_shape}; expected {EXPECTED_SHAPES}"
        )
    if _static(in_shape[1], "mel bins") != 80:
        raise ValueError(f"whisper_encoder.path: expects {in_shape[1]} mel bins, the front end makes 80")
    return _static(in_shape[2], "input frames"), _static(out_shape[1], "layers"), _static(out_shape[3], "width")


class OnnxWhisperEncoder(WhisperEncoder):
    def __init__(
        self,
        config: WhisperEncoderConfig,
        execution: ExecutionConfig | None = None,
        *,
        available: list[str] | None = None,
        session_factory: SessionFactory | None = None,
        provider_check: ProviderCheck | None = None,
    ) -> None:
        path = Path(os.path.expanduser(config.path))
        if not path.is_file():
            raise FileNotFoundError(f"whisper_encoder.path: {path} is not a file")
        try:
            self.model = open_session(
                path, execution or ExecutionConfig(), name="whisper encoder", max_batch=1,
                available=available, factory=session_factory, check=provider_check,
            )  # fmt: skip
        except ModelError as exc:
            raise ModelError(f"whisper_encoder.path: {exc}") from None
        self.session = self.model.session
        self.provider = self.model.provider
        self.input_frames, self.layers, self.width = check_encoder_session(self.session, path)
        self.musetalk_version, self.final_layer_norm = encoder_release(self.session)
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        self.name = f"{path.stem}-{digest.hexdigest()[:12]}"
        log.info(
            "whisper encoder %s on %s: %d frames in, %d layers x %d wide",
            path,
            self.provider,
            self.input_frames,
            self.layers,
            self.width,
        )

    def encode(self, mel: np.ndarray) -> np.ndarray:
        if mel.ndim != 3 or mel.shape[1:] != (80, self.input_frames):
            raise ValueError(f"mel must be [B, 80, {self.input_frames}], got {list(mel.shape)}")
        (hidden,) = self.model.run({INPUT_NAME: np.ascontiguousarray(mel, dtype=np.float32)}, [OUTPUT_NAME])
        return np.asarray(hidden, dtype=np.float32)
