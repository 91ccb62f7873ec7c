"""The label values of the renderer's own metrics (``RendererService.known_series`` exports them at 0
from start-up; the code that records them uses these names)."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """``talkmesh_stage_duration_seconds{stage}`` of a group of frames (a neural backend's avatar
    preparation is ``<backend>_prepare``, named when the backend is loaded)."""

    #: the backend rendering the group's voiced frames
    INFER = "infer"
    #: pasting, idle motion, conversion to the output's pixel format
    COMPOSE = "compose"


class Queue(StrEnum):
    """``talkmesh_queue_depth{stage}`` (a batching backend's queue is ``batch_<backend>``, made
    with its batcher)."""

    RENDER_JOBS = "render_jobs"


class SkipReason(StrEnum):
    """``talkmesh_skipped_frames_total{reason}``: frames that did not run the model."""

    #: no voice: the avatar's own frame
    SILENCE = "silence"
    #: between key frames of a neural backend's frame_skip (interpolated)
    FRAME_SKIP = "frame_skip"
