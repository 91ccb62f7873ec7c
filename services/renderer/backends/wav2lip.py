"""Wav2Lip on ONNX Runtime: 96x96 lower-face regeneration from an 80x16 mel window.

Model contract (what ``python -m tools.import_wav2lip`` writes from an official checkpoint):

    mel    [B, 1, 80, 16] float32   Wav2Lip mel window of the frame (from audio_features)
    face   [B, 6, 96, 96] float32   masked crop (lower half zero) ‖ reference crop, BGR / 255
    frames [B, 3, 96, 96] float32   generated crop in [0, 1], BGR

The face crop is the avatar's face box padded 10 px downwards (Wav2Lip's default), resized to 96x96;
the reference is the same avatar frame. The output is pasted back through a feathered lower-face
mask computed once per avatar.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from services.renderer.backends.base import Avatar, FrameJob
from services.renderer.backends.neural import NeuralBackend, generated_region_mask, warmup_avatar
from services.renderer.backends.onnx_models import (
    ModelError,
    ModelFileError,
    OnnxModel,
    ProviderCheck,
    SessionFactory,
    Signature,
    TensorSpec,
)
from services.renderer.config import RendererConfig
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import audio_features_pb2 as fpb

FACE_SIZE = 96
MEL_SHAPE = (80, 16)

SIGNATURE = Signature(
    inputs=(TensorSpec("mel", (None, 1, *MEL_SHAPE)), TensorSpec("face", (None, 6, FACE_SIZE, FACE_SIZE))),
    outputs=(TensorSpec("frames", (None, 3, FACE_SIZE, FACE_SIZE)),),
)


class Wav2LipBackend(NeuralBackend):
    name = "wav2lip"
    feature_type = fpb.FEATURE_TYPE_WAV2LIP_MEL
    crop_size = FACE_SIZE
    feature_shape = MEL_SHAPE
    pads = (0, 10, 0, 0)
    crop_interpolation = cv2.INTER_LINEAR  # Wav2Lip resized its S3FD crops bilinearly
    # ~6 MB of FP16 activations per 96x96 frame through the U-Net, with headroom.
    bytes_per_frame = 24 * 1024 * 1024

    def paste_mask(self) -> np.ndarray:
        # Wav2Lip regenerates the lower half: pasted whole there, feathered only above (no chin ghost)
        return generated_region_mask(self.crop_size)

    def __init__(
        self,
        config: RendererConfig,
        telemetry: Telemetry,
        *,
        available: Sequence[str] | None = None,
        session_factory: SessionFactory | None = None,
        provider_check: ProviderCheck | None = None,
    ) -> None:
        super().__init__(config, telemetry)
        config.wav2lip.validate()
        if not config.wav2lip.path:
            raise ModelError("wav2lip.path: not set (convert a checkpoint with python -m tools.import_wav2lip)")
        path = Path(os.path.expanduser(config.wav2lip.path))
        load = self._loader([path], available, session_factory, provider_check)
        try:
            self.model: OnnxModel = load("wav2lip", path, SIGNATURE)
        except ModelFileError as exc:  # named by the key that gave the file
            raise ModelFileError(f"wav2lip.path: {exc}") from None
        self._runs_on(self.model)

    def settings(self) -> object:
        return self.config.wav2lip

    @property
    def frame_skip(self) -> int:
        return self.config.wav2lip.frame_skip

    def infer(self, items: Sequence[tuple[Avatar, FrameJob]]) -> list[np.ndarray]:
        n = len(items)
        if n == 0:
            return []
        mel = np.empty((n, 1, *MEL_SHAPE), np.float32)
        face = np.empty((n, 6, FACE_SIZE, FACE_SIZE), np.float32)
        half = FACE_SIZE // 2
        for b, (avatar, job) in enumerate(items):
            assert job.features is not None  # validate_job ran before batching
            mel[b, 0] = job.features
            crop = self.extras(avatar)["crops"][job.avatar_frame]  # [96, 96, 3] uint8 BGR
            ref = crop.transpose(2, 0, 1).astype(np.float32) * (1.0 / 255.0)
            face[b, 3:] = ref
            face[b, :3] = ref
            face[b, :3, half:, :] = 0.0
        out = self.model.run({"mel": mel, "face": face})[0]
        crops = np.clip(out.transpose(0, 2, 3, 1) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return list(crops)

    def warmup(self) -> None:
        avatar = warmup_avatar()
        self.prepare(avatar)
        for batch in sorted({1, self.max_batch}):
            jobs = [
                FrameJob("warmup", i, 0, True, -20.0, features=np.zeros(MEL_SHAPE, np.float32)) for i in range(batch)
            ]
            self.infer([(avatar, j) for j in jobs])
