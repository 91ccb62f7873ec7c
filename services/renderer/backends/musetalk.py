"""MuseTalk on ONNX Runtime: single-step latent inpainting of the lower face at 256x256.

``musetalk.path`` is a directory with the three models ``python -m tools.export_musetalk`` writes:

    vae_encoder.onnx  image [B,3,256,256] RGB in [0,1]            -> latents, latents_std [B,4,32,32]
                                                                   (the latent distribution's mean and
                                                                   standard deviation, both scaled)
    unet.onnx         latents [B,8,32,32], audio [B,50,384]        -> pred [B,4,32,32]
    vae_decoder.onnx  latents [B,4,32,32]                          -> image [B,3,256,256] in [0,1]

Per avatar frame (in the avatar cache, computed once): the face crop (face box + 10 px chin,
resized to 256x256), the latents of the masked crop (lower half zero) and of the reference crop,
concatenated as the UNet's 8 input channels, and the blend mask. The latents are, as MuseTalk takes
them, a sample of the VAE's latent distribution (``musetalk.vae_latent: sample``: mean + std * noise,
the noise seeded by ``musetalk.vae_seed`` and the frame's index, so the cache is reproducible) or its
mean (``mean``). The blend mask is the face parser's (``musetalk.face_parser``, a BiSeNet ONNX:
:mod:`services.renderer.backends.face_parser`) when configured, else the feathered landmark-box
lower-face mask. Per frame: the Whisper
window ``[50,384]`` from audio_features (FEATURE_TYPE_WHISPER_EMBEDDING; the positional encoding
and timestep 0 are inside unet.onnx), one UNet step, decode, blend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from services.renderer.backends.base import Avatar, FrameJob
from services.renderer.backends.face_parser import FACE_PARSER, FaceParser
from services.renderer.backends.neural import NeuralBackend, warmup_avatar
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
from talkmesh.common.onnx_files import MUSETALK_VERSION_KEY
from talkmesh.common.registry import spec
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import audio_features_pb2 as fpb

CROP = 256
LATENT = 32
AUDIO_SHAPE = (50, 384)

VAE_ENCODER = Signature(
    inputs=(TensorSpec("image", (None, 3, CROP, CROP)),),
    outputs=(TensorSpec("latents", (None, 4, LATENT, LATENT)), TensorSpec("latents_std", (None, 4, LATENT, LATENT))),
)
#: an encoder exported before ``latents_std`` (the mean only): usable with ``musetalk.vae_latent: mean``
VAE_ENCODER_MEAN_ONLY = Signature(inputs=VAE_ENCODER.inputs, outputs=VAE_ENCODER.outputs[:1])


def mean_only_refusal(refused: ModelError, vae_latent: str) -> ModelError | None:
    """For a VAE encoder that ``VAE_ENCODER`` refused (``refused``) but ``VAE_ENCODER_MEAN_ONLY``
    fits (an export from before ``latents_std``): None under ``musetalk.vae_latent: mean`` (it is
    usable), else the refusal naming the fix. The backend and ``talkmesh doctor`` both decide by it;
    an encoder that fits neither keeps its first refusal (no fix to name)."""
    if vae_latent == "mean":
        return None
    return ModelError(
        f"{refused}; musetalk.vae_latent: sample needs the encoder's latents_std (re-export with "
        "python -m tools.export_musetalk, or set musetalk.vae_latent: mean)"
    )


UNET = Signature(
    inputs=(TensorSpec("latents", (None, 8, LATENT, LATENT)), TensorSpec("audio", (None, *AUDIO_SHAPE))),
    outputs=(TensorSpec("pred", (None, 4, LATENT, LATENT)),),
)
VAE_DECODER = Signature(
    inputs=(TensorSpec("latents", (None, 4, LATENT, LATENT)),),
    outputs=(TensorSpec("image", (None, 3, CROP, CROP)),),
)
FILES = {"vae_encoder": ("vae_encoder.onnx", VAE_ENCODER), "unet": ("unet.onnx", UNET),
         "vae_decoder": ("vae_decoder.onnx", VAE_DECODER)}  # fmt: skip


def release_refusal(features: str, models: str | None, unet: Path) -> str:
    """Why MuseTalk models exported for release ``models`` (their UNet ``unet``'s
    talkmesh.musetalk_version; None: not said) refuse features said to be for release ``features``
    (FeatureChunk.musetalk_version), or "". 1.0 and 1.5 take Whisper features of the same shape but
    another meaning (1.5's last state has Whisper's final LayerNorm): the other release's would
    render wrong lips without an error. Names the setting on each side that decides it."""
    if not features or models is None or features == models:
        return ""
    env = spec("audio_features").env_name("musetalk.version")
    return (
        f"musetalk: the stream's features are for MuseTalk {features} (the audio_features stage's "
        f"musetalk.version, {env}), this renderer's MuseTalk {models} models take MuseTalk {models} "
        f"features (the {MUSETALK_VERSION_KEY} of its musetalk.path's {unet.name}: {unet}): set the audio_features "
        f"stage's musetalk.version: {models} (with a Whisper encoder exported with --musetalk-version "
        f"{models}), or point the renderer's musetalk.path at models exported with --version {features}"
    )


def latent_noise(seed: int, frame: int, part: int) -> np.ndarray:
    """The standard normal noise [4,32,32] of avatar frame ``frame``'s latent sample (``part`` 0: the
    masked crop, 1: the reference crop): the same for the same seed, frame and part in every run."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, frame, part]))
    return rng.standard_normal((4, LATENT, LATENT), dtype=np.float32)


def to_model_image(crops_bgr: np.ndarray) -> np.ndarray:
    """[N,S,S,3] uint8 BGR -> [N,3,S,S] float32 RGB in [0, 1]."""
    return np.ascontiguousarray(crops_bgr[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32) * (1.0 / 255.0)


def from_model_image(images: np.ndarray) -> np.ndarray:
    """[N,3,S,S] float RGB in [0, 1] -> [N,S,S,3] uint8 BGR."""
    bgr = images[:, ::-1].transpose(0, 2, 3, 1)
    return np.clip(bgr * 255.0 + 0.5, 0, 255).astype(np.uint8)


class MuseTalkBackend(NeuralBackend):
    name = "musetalk"
    feature_type = fpb.FEATURE_TYPE_WHISPER_EMBEDDING
    crop_size = CROP
    feature_shape = AUDIO_SHAPE
    pads = (0, 10, 0, 0)
    crop_interpolation = cv2.INTER_LANCZOS4  # MuseTalk prepares its crops with Lanczos
    # The 256x256 VAE decoder dominates: ~0.2 GB of FP16 activations per frame.
    bytes_per_frame = 256 * 1024 * 1024

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
        config.musetalk.validate()
        if not config.musetalk.path:
            raise ModelError("musetalk.path: not set (export the models with python -m tools.export_musetalk)")
        root = Path(os.path.expanduser(config.musetalk.path))
        if not root.is_dir():
            raise ModelError(f"musetalk.path: {str(root)!r} is not a directory")
        parser_path = Path(os.path.expanduser(config.musetalk.face_parser)) if config.musetalk.face_parser else None
        files = [root / file for file, _ in FILES.values()]
        opened = self._loader(files, available, session_factory, provider_check)
        # the plan's weights are the MuseTalk models'; the optional face parser is named as well
        self.model_files = files + ([parser_path] if parser_path is not None else [])

        def load(role: str, path: Path, sig: Signature) -> OnnxModel:
            try:
                return opened(f"musetalk {role}", path, sig)
            except ModelFileError as exc:  # named by the key that gave the file
                key = "musetalk.face_parser" if role == "face_parser" else "musetalk.path"
                raise ModelFileError(f"{key}: {exc}") from None

        self.models: dict[str, OnnxModel] = {}
        for role, (file, sig) in FILES.items():
            try:
                self.models[role] = load(role, root / file, sig)
            except ModelError as exc:
                if role != "vae_encoder":
                    raise
                try:  # an export from before latents_std?
                    mean_only = load(role, root / file, VAE_ENCODER_MEAN_ONLY)
                except ModelError:
                    raise exc from None
                if (refusal := mean_only_refusal(exc, config.musetalk.vae_latent)) is not None:
                    raise refusal from exc
                self.models[role] = mean_only
        self.parser: FaceParser | None = None
        if parser_path is not None:
            self.parser = FaceParser(load("face_parser", parser_path, FACE_PARSER), config.musetalk.face_parser_mode)
        self._runs_on(self.models["unet"])
        # the release the models were exported for (None: not said), compared once per stream with
        # the one its features say they are for (features_refusal)
        self.unet_path = root / FILES["unet"][0]
        self.release = config.musetalk.exported_release()

    def settings(self) -> object:
        return self.config.musetalk

    def features_refusal(self, musetalk_version: str) -> str:
        return release_refusal(musetalk_version, self.release, self.unet_path)

    @property
    def frame_skip(self) -> int:
        return self.config.musetalk.frame_skip

    def encode(self, crops_bgr: np.ndarray, part: int = 0) -> np.ndarray:
        """Scaled VAE latents [N,4,32,32] of [N,256,256,3] uint8 BGR crops, in batches: the mean, or
        (``musetalk.vae_latent: sample``) one sample per crop, its noise seeded by (``vae_seed``, crop
        index, ``part``)."""
        model = self.models["vae_encoder"]
        sample = self.config.musetalk.vae_latent == "sample"
        out = []
        for start in range(0, len(crops_bgr), self.max_batch):
            chunk = to_model_image(crops_bgr[start : start + self.max_batch])
            result = model.run({"image": chunk})
            mean = result[0].astype(np.float32)
            if sample:
                seed = self.config.musetalk.vae_seed
                noise = np.stack([latent_noise(seed, start + i, part) for i in range(len(mean))])
                mean = mean + result[1].astype(np.float32) * noise
            out.append(mean)
        return np.concatenate(out).astype(np.float32)

    def prepare_model(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        masked = crops.copy()
        masked[:, CROP // 2 :] = 0
        # UNet input channels: masked-crop latents, then reference latents (MuseTalk's order).
        latents = np.concatenate([self.encode(masked, 0), self.encode(crops, 1)], axis=1)
        out = {"latents": latents}
        if self.parser is not None:  # one blend mask per avatar frame, from its parsed face
            out["mask"] = self.parser.masks(crops, CROP)
        return out

    def infer(self, items: Sequence[tuple[Avatar, FrameJob]]) -> list[np.ndarray]:
        n = len(items)
        if n == 0:
            return []
        latents = np.empty((n, 8, LATENT, LATENT), np.float32)
        audio = np.empty((n, *AUDIO_SHAPE), np.float32)
        for b, (avatar, job) in enumerate(items):
            assert job.features is not None  # validate_job ran before batching
            latents[b] = self.extras(avatar)["latents"][job.avatar_frame]
            audio[b] = job.features
        pred = self.models["unet"].run({"latents": latents, "audio": audio})[0]
        image = self.models["vae_decoder"].run({"latents": pred})[0]
        return list(from_model_image(image))

    def warmup(self) -> None:
        avatar = warmup_avatar()
        self.prepare(avatar)
        for batch in sorted({1, self.max_batch}):
            jobs = [
                FrameJob("warmup", i, 0, True, -20.0, features=np.zeros(AUDIO_SHAPE, np.float32)) for i in range(batch)
            ]
            self.infer([(avatar, j) for j in jobs])
