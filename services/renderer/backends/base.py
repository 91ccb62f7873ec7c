"""The renderer backend interface: one method, ``render``.

A session turns the incoming stream (viseme events + per-frame features) into ``FrameJob`` s, the
batcher groups jobs of many sessions, and a backend renders a batch. Backends return full frames
at the avatar's native size (BGR uint8) with the mouth region already blended back; the session
resizes to the requested preset and converts to the encoder's pixel format.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Avatar:
    """A prepared avatar, as the precompute cache stores it (see services/renderer/avatars/)."""

    id: str
    name: str
    frames: np.ndarray  # [N, H, W, 3] uint8 BGR; N == 1 for a photo
    face_boxes: np.ndarray  # [N, 4] int32 x1, y1, x2, y2 (smoothed over time for videos)
    mouth_boxes: np.ndarray  # [N, 4] int32 x1, y1, x2, y2
    # [N, 468, 2] float32 face-mesh landmarks in image pixels (smoothed over time for videos);
    # None when the face models are not installed (Haar fallback: boxes only).
    landmarks: np.ndarray | None = None
    # [N] bool: the face was found on this frame (frames where it was lost are never animated).
    kept: np.ndarray | None = None
    # Landmark-derived model crops per neural backend ("wav2lip", "musetalk"): [N, 4] float32 boxes.
    crop_boxes: dict[str, np.ndarray] = field(default_factory=dict)
    # What registration found (face box, confidence, frames kept/rejected, detector).
    report: dict[str, Any] = field(default_factory=dict)
    # Per-backend precompute, keyed by backend name (crops, masks, reference latents, remap grids...).
    extras: dict[str, Any] = field(default_factory=dict)
    # "" for the stored frames; "WxH" for a copy scaled down to an output size (avatars/scaled.py).
    variant: str = ""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    def animated(self, frame: int) -> bool:
        """Whether the mouth may be moved on this avatar frame (its face was found there)."""
        return self.kept is None or bool(self.kept[frame])


@dataclass(frozen=True)
class MouthShape:
    """Target mouth pose in [0, 1] from the viseme track and audio energy (procedural backend)."""

    open: float = 0.0
    width: float = 0.5
    round: float = 0.0


@dataclass(frozen=True)
class FrameJob:
    session_id: str
    frame_index: int  # index in the utterance's video
    avatar_frame: int  # which avatar frame to draw on (ping-pong loop for video avatars)
    voiced: bool
    rms_dbfs: float
    features: np.ndarray | None = None  # model input for this frame ([80,16] mel, [50,384] whisper)
    mouth: MouthShape | None = None


class RenderBackend(abc.ABC):
    #: backend name as used in config and RenderConfig.backend
    name: str = ""
    #: talkmesh.v1.FeatureType value the backend consumes
    feature_type: int = 0

    @abc.abstractmethod
    def render(self, avatar: Avatar, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        """Renders a batch (blocking; called in a worker thread). One BGR frame per job, in order."""

    def prepare(self, avatar: Avatar) -> None:  # noqa: B027 - optional hook
        """Adds this backend's precompute to ``avatar.extras`` (called once per avatar, cached)."""

    def precompute_key(self) -> str:
        """What ``prepare`` depends on besides the avatar (model files, settings), as a short string.
        The avatar store keeps it beside the cached precompute and redoes one made under another key;
        empty: the precompute depends on the avatar only."""
        return ""

    def features_refusal(self, musetalk_version: str) -> str:
        """Why this backend refuses a Render stream whose features say they are for MuseTalk
        ``musetalk_version`` (FeatureChunk.musetalk_version of the stream's first features message;
        never called with "", which says nothing), or "" (it takes them). Checked once per stream."""
        return ""

    def warmup(self) -> None:  # noqa: B027 - optional hook
        """Runs one inference so the first request does not pay for lazy initialisation."""
