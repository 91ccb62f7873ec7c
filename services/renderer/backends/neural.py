"""What the ONNX backends (Wav2Lip, MuseTalk) share: face crops, feathered paste-back, the split
of rendering into a batched ``infer`` and a per-session ``compose``.

``infer`` takes (avatar, job) pairs that may come from many sessions and avatars (the cross-session
batcher calls it) and returns the model's mouth crops; ``compose`` pastes one crop back into its
avatar frame through a feathered mask that is computed once per avatar (no box edge shows).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from services.renderer.backends.base import Avatar, FrameJob, RenderBackend
from services.renderer.backends.onnx_models import (
    GPU_PROVIDERS,
    OnnxModel,
    ProviderCheck,
    SessionFactory,
    Signature,
    available_providers,
    open_model,
)
from services.renderer.config import RendererConfig
from services.renderer.interpolate import fill_skipped, plan_keyframes
from services.renderer.metrics import SkipReason
from talkmesh.common.errors import InvalidArgument
from talkmesh.common.gpu import GpuPlan, gpu_memory, model_weight_bytes, plan_gpu
from talkmesh.common.telemetry import Telemetry

log = logging.getLogger("talkmesh.renderer.neural")
#: the log line of an avatar's precompute (read back by ``talkmesh bench musetalk``)
PREPARED = "%s precompute of avatar %s: %d frame(s) in %.3f s"


def padded_boxes(boxes: np.ndarray, size: tuple[int, int], pads: tuple[int, int, int, int]) -> np.ndarray:
    """Face boxes grown by ``pads`` = (top, bottom, left, right) pixels, clipped to the frame.

    Wav2Lip's default padding is (0, 10, 0, 0): ten pixels more chin.
    """
    w, h = size
    top, bottom, left, right = pads
    b = boxes.astype(np.int64).copy()
    b[:, 0] = np.clip(b[:, 0] - left, 0, w - 1)
    b[:, 1] = np.clip(b[:, 1] - top, 0, h - 1)
    b[:, 2] = np.clip(b[:, 2] + right, b[:, 0] + 1, w)
    b[:, 3] = np.clip(b[:, 3] + bottom, b[:, 1] + 1, h)
    return b.astype(np.int32)


def face_crops(frames: np.ndarray, boxes: np.ndarray, size: int, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
    """[N, size, size, 3] uint8: each frame's box resized to a square of ``size`` pixels."""
    out = np.empty((len(boxes), size, size, 3), np.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        frame = frames[i if len(frames) > 1 else 0]
        out[i] = cv2.resize(frame[y1:y2, x1:x2], (size, size), interpolation=interpolation)
    return out


def landmark_boxes(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The avatar's landmark-derived model crops (float, time-smoothed) as pixel boxes in the frame."""
    w, h = size
    b = np.round(boxes).astype(np.int64)
    b[:, 0] = np.clip(b[:, 0], 0, w - 1)
    b[:, 1] = np.clip(b[:, 1], 0, h - 1)
    b[:, 2] = np.clip(b[:, 2], b[:, 0] + 1, w)
    b[:, 3] = np.clip(b[:, 3], b[:, 1] + 1, h)
    return b.astype(np.int32)


def lower_face_mask(size: int, top: float = 0.45, side: float = 0.1, bottom: float = 0.04) -> np.ndarray:
    """Feathered [size, size] float32 weight in [0, 1]: 1 over the lower face, 0 at the crop border.

    A rectangle from ``top`` of the height to ``bottom`` above the chin edge, ``side`` in from each
    side, blurred so the weight fades smoothly to exactly zero before the crop's border.
    """
    m = np.zeros((size, size), np.float32)
    sigma = size * 0.04
    margin = int(np.ceil(4 * sigma)) + 1  # OpenCV's kernel reaches 4 sigma: the border stays 0
    y0 = int(size * top)
    y1 = size - max(margin, int(size * bottom))
    x0 = max(margin, int(size * side))
    m[y0:y1, x0 : size - x0] = 1.0
    blurred = np.asarray(cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT), np.float32)
    blurred[blurred < 1e-3] = 0.0
    out: np.ndarray = np.clip(blurred / max(float(blurred.max()), 1e-6), 0.0, 1.0).astype(np.float32)
    return out


def _ramp(n: int, start: float, stop: float) -> np.ndarray:
    """Smoothstep over positions ``0.5 .. n - 0.5``: 0 at ``start``, 1 at ``stop`` (either order)."""
    x = np.arange(n, dtype=np.float32) + 0.5
    t = np.clip((x - start) / (stop - start), 0.0, 1.0)
    out: np.ndarray = t * t * (3.0 - 2.0 * t)
    return out


def generated_region_mask(size: int, fade_from: float = 0.3, changed_from: float = 0.5, border: int = 6) -> np.ndarray:
    """[size, size] float32 weight for a model that regenerates the lower half of its crop (Wav2Lip).

    Exactly 1 over the changed region - rows ``changed_from * size`` down to ``border`` px above the
    bottom, ``border`` px in from each side - so a moving chin is pasted whole, never mixed with the
    reference frame's chin (no ghost). Feathered only outside it: above, over rows the model leaves
    as they were (0 at ``fade_from * size`` to 1 at ``changed_from * size``), and in the last
    ``border`` px to the crop's edges (the padding below the chin and beside the cheeks), so the
    box edge never shows."""
    rows = np.minimum(_ramp(size, fade_from * size, changed_from * size), _ramp(size, size - 1, size - border))
    rows[int(changed_from * size) : size - border] = 1.0
    cols = np.minimum(_ramp(size, 1.0, border), _ramp(size, size - 1, size - border))
    return (rows[:, None] * cols[None, :]).astype(np.float32)  # the outermost pixels weigh exactly 0


def paste(frame: np.ndarray, box: np.ndarray, crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``frame`` with ``crop`` resized into ``box`` and blended by ``mask`` (a new array)."""
    x1, y1, x2, y2 = (int(v) for v in box)
    w, h = x2 - x1, y2 - y1
    patch = cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    weight = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)[..., None]
    out = frame.copy()
    region = out[y1:y2, x1:x2].astype(np.float32)
    out[y1:y2, x1:x2] = np.clip(region + (patch - region) * weight + 0.5, 0, 255).astype(np.uint8)
    return out


class NeuralBackend(RenderBackend):
    """Base of the ONNX backends: the batched model step and the per-frame composition."""

    def paste_mask(self) -> np.ndarray:
        """The [crop, crop] blend weight of the generated crop (per backend; computed per avatar)."""
        return lower_face_mask(self.crop_size)

    #: side of the square model crop
    crop_size: int = 96
    #: expected per-frame feature shape
    feature_shape: tuple[int, ...] = ()
    #: (top, bottom, left, right) padding of the face box
    pads: tuple[int, int, int, int] = (0, 10, 0, 0)
    #: estimated device memory per batched frame (activations, FP16), for the GPU batch bound
    bytes_per_frame: int = 64 * 1024 * 1024
    #: the resize the model's training crops were made with
    crop_interpolation: int = cv2.INTER_AREA

    def __init__(self, config: RendererConfig, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry
        self.max_batch = max(1, config.batch.max_size)
        self.provider = "CPUExecutionProvider"
        #: the model files this backend loaded (their identity is part of precompute_key)
        self.model_files: list[Path] = []
        self._gpu_batch = self.max_batch

    def settings(self) -> object:
        """This backend's config section (part of precompute_key)."""
        return None

    def precompute_key(self) -> str:
        """A digest of the backend's settings and of each loaded model file (path, size, mtime): a
        cached avatar precompute (latents, masks) made with other weights or settings is redone."""
        digest = hashlib.sha256(f"{self.name}|{self.crop_size}|{self.pads}|{self.crop_interpolation}".encode())
        settings = self.settings()
        if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
            # frame_skip only changes which frames run the model, not what is precomputed
            settings = {k: v for k, v in dataclasses.asdict(settings).items() if k != "frame_skip"}
        digest.update(repr(settings).encode())
        for path in self.model_files:
            try:
                st = path.stat()
                digest.update(f"|{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:  # removed since it was loaded: the loaded model still answers
                digest.update(f"|{path}|gone".encode())
        return digest.hexdigest()[:32]

    # -- loading -----------------------------------------------------------------------------------

    def _loader(
        self,
        files: Sequence[Path],
        available: Sequence[str] | None,
        factory: SessionFactory | None,
        check: ProviderCheck | None,
    ) -> Callable[[str, Path, Signature], OnnxModel]:
        """``load(name, path, signature)`` for this backend's ONNX models, all on the execution
        provider and batch bound of one GPU plan for ``files`` (which precompute_key then names)."""
        avail = list(available) if available is not None else available_providers()
        gpu = gpu_plan(self.bytes_per_frame, self.config, avail, files)
        self._gpu_batch = gpu.max_batch
        self.model_files = list(files)

        def load(name: str, path: Path, signature: Signature) -> OnnxModel:
            return open_model(
                name, path, signature, self.config.execution, max_batch=gpu.max_batch,
                gpu_mem_limit=gpu.gpu_mem_limit, available=avail, factory=factory, check=check,
            )  # fmt: skip

        return load

    def _runs_on(self, model: OnnxModel) -> None:
        """The main model's execution provider decides the batch bound; reported on the dashboard."""
        self.provider = model.provider
        self.max_batch = self._gpu_batch if self.provider in GPU_PROVIDERS else self.config.batch.max_size
        self.telemetry.set_backend("execution_provider", f"{self.name}/{self.provider}")

    # -- the model step (batched across sessions) ------------------------------------------------

    @abc.abstractmethod
    def infer(self, items: Sequence[tuple[Avatar, FrameJob]]) -> list[np.ndarray]:
        """Model outputs for these frames: one uint8 BGR crop [S, S, 3] per item, in order."""

    # -- per-frame work (in the calling session's thread) ---------------------------------------

    @property
    def frame_skip(self) -> int:
        return 1

    def extras(self, avatar: Avatar) -> dict[str, Any]:
        ex = avatar.extras.get(self.name)
        if ex is None:
            self.prepare(avatar)
            ex = avatar.extras[self.name]
        return ex  # type: ignore[no-any-return]

    def validate_job(self, avatar: Avatar, job: FrameJob) -> None:
        """Rejects a job this backend cannot run (before it joins a batch with other sessions)."""
        if job.features is None:
            raise InvalidArgument("features", f"the {self.name} renderer needs per-frame audio features")
        f = job.features
        if tuple(f.shape) != self.feature_shape:
            raise InvalidArgument(
                "features.tensor.shape",
                f"the {self.name} renderer expects {list(self.feature_shape)} per frame, got {list(f.shape)}",
            )
        if not np.issubdtype(f.dtype, np.floating) or not np.all(np.isfinite(f)):
            raise InvalidArgument("features.tensor", "expected finite floating-point values")
        if not 0 <= job.avatar_frame < len(avatar.frames):
            raise InvalidArgument("avatar_frame", f"{job.avatar_frame} outside 0..{len(avatar.frames) - 1}")

    def prepare(self, avatar: Avatar) -> None:
        """The avatar's crops, paste mask and model inputs; timed as stage ``<backend>_prepare`` and logged."""
        start = time.perf_counter()
        with self.telemetry.stage(f"{self.name}_prepare", avatar=avatar.id, frames=len(avatar.frames)):
            self._prepare(avatar)
        log.info(PREPARED, self.name, avatar.id, len(avatar.frames), time.perf_counter() - start)

    def _prepare(self, avatar: Avatar) -> None:
        frames = avatar.frames
        if self.name in avatar.crop_boxes:  # from the face-mesh landmarks, smoothed over time
            boxes = landmark_boxes(avatar.crop_boxes[self.name], avatar.size)
        else:  # an avatar without landmarks: the padded face box
            boxes = padded_boxes(avatar.face_boxes, avatar.size, self.pads)
        if len(boxes) != len(frames) and len(boxes) != 1:
            raise ValueError(f"avatar {avatar.id}: {len(boxes)} face boxes for {len(frames)} frames")
        if len(boxes) == 1 and len(frames) > 1:
            boxes = np.repeat(boxes, len(frames), axis=0)
        crops = face_crops(frames, boxes, self.crop_size, self.crop_interpolation)
        # "mask": one [S,S] blend weight for every frame, or (a backend's prepare_model) [N,S,S] per frame
        avatar.extras[self.name] = {
            "boxes": boxes,
            "crops": crops,
            "mask": self.paste_mask(),
            **self.prepare_model(crops),
        }

    def prepare_model(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """Backend-specific precompute from the avatar's face crops (MuseTalk: latents)."""
        return {}

    def compose(self, avatar: Avatar, job: FrameJob, crop: np.ndarray) -> np.ndarray:
        ex = self.extras(avatar)
        mask = ex["mask"]
        if mask.ndim == 3:  # per avatar frame
            mask = mask[job.avatar_frame]
        return paste(avatar.frames[job.avatar_frame], ex["boxes"][job.avatar_frame], crop, mask)

    def render(self, avatar: Avatar, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        """Direct (unbatched) rendering, with frame skip: used when the batcher is disabled."""
        if not jobs:
            return []
        for job in jobs:
            self.validate_job(avatar, job)
        indices = [j.frame_index for j in jobs]
        keys = plan_keyframes(indices, self.frame_skip)
        key_jobs = [j for j, k in zip(jobs, keys, strict=True) if k]
        outputs = []
        for start in range(0, len(key_jobs), self.max_batch):
            chunk = key_jobs[start : start + self.max_batch]
            outputs.extend(self.infer([(avatar, j) for j in chunk]))
            self.telemetry.metrics.batch_size.labels(self.telemetry.service, self.name).observe(len(chunk))
        self.count_skipped(len(jobs) - len(key_jobs))
        crops = fill_skipped(indices, keys, outputs)
        return [self.compose(avatar, j, c) for j, c in zip(jobs, crops, strict=True)]

    def count_skipped(self, n: int) -> None:
        if n:
            self.telemetry.metrics.skipped_frames_total.labels(self.telemetry.service, SkipReason.FRAME_SKIP).inc(n)


def gpu_plan(
    per_frame_bytes: int, config: RendererConfig, available: Sequence[str], model_files: Sequence[Path] = ()
) -> GpuPlan:
    """Arena limit and batch bound on a GPU (talkmesh.common.gpu): ``gpu.share`` of the card minus
    the CUDA context and the weights of ``model_files``, bounded by the memory free at start-up and
    ``batch.max_size_gpu``. Without a GPU provider in the runtime: ``batch.max_size``, no limit."""
    if not any(p in available for p in GPU_PROVIDERS):
        return GpuPlan(0, config.batch.max_size, 0, 0)
    ex = config.execution
    plan = plan_gpu(
        config.gpu, weights=model_weight_bytes(f for f in model_files if f.is_file()),
        per_frame_bytes=per_frame_bytes, cap=config.batch.max_size_gpu, configured_limit_mb=ex.gpu_mem_limit_mb,
        arena_extend_strategy=ex.arena_extend_strategy, fp16=ex.fp16, memory=gpu_memory(ex.device_id),
    )  # fmt: skip
    log.info("%s", plan.describe())
    return plan


def warmup_avatar(size: int = 160) -> Avatar:
    """A one-frame synthetic avatar for warm-up inference (no files needed)."""
    frame = np.full((size, size, 3), 128, np.uint8)
    cv2.ellipse(frame, (size // 2, size // 2), (size // 3, size * 2 // 5), 0, 0, 360, (90, 130, 190), -1)
    q = size // 6
    return Avatar(
        id="warmup", name="warmup", frames=frame[None],
        face_boxes=np.array([[q, q, size - q, size - q]], np.int32),
        mouth_boxes=np.array([[2 * q, 4 * q, size - 2 * q, 5 * q]], np.int32),
    )  # fmt: skip
