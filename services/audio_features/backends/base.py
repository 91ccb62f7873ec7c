"""The Whisper-encoder backend interface: one method, ``encode``."""

from __future__ import annotations

import abc

import numpy as np


class WhisperEncoder(abc.ABC):
    """Runs a Whisper audio encoder and returns every hidden state.

    Implementations set the geometry they read from the model: ``input_frames`` (mel frames per
    window, 3000 for Whisper), ``layers`` (embedding output + one per encoder layer, 5 for tiny) and
    ``width`` (384 for tiny), and ``final_layer_norm`` when the model records it. ``name``
    identifies the model (used in cache keys and metrics).
    """

    name: str = ""
    # Whether the last hidden state has the encoder's final LayerNorm applied (transformers'
    # ``hidden_states``, MuseTalk 1.5) or not (MuseTalk 1.0); None: the model does not say.
    final_layer_norm: bool | None = None
    # The MuseTalk release the model was exported for (its ``talkmesh.musetalk_version``); None: unsaid.
    musetalk_version: str | None = None
    input_frames: int = 3000
    layers: int = 0
    width: int = 0
    provider: str = ""

    @property
    def output_frames(self) -> int:
        """Hidden-state frames per window (the encoder's convolutions halve the time axis)."""
        return self.input_frames // 2

    @abc.abstractmethod
    def encode(self, mel: np.ndarray) -> np.ndarray:
        """``[B, 80, input_frames]`` float32 log-mel -> ``[B, layers, output_frames, width]`` float32.

        Blocking and thread-safe: the servicer calls it from worker threads.
        """
