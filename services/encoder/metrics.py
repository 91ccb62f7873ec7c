"""The label values of the encoder's own metrics (``EncoderService.known_series`` exports them at 0
from start-up; the code that records them uses these names)."""

from __future__ import annotations

from enum import StrEnum

from talkmesh.common.telemetry import LiveState

__all__ = ["LiveState", "Queue", "Stage"]


class Stage(StrEnum):
    """``talkmesh_stage_duration_seconds{stage}``."""

    #: a stream's codecs and muxer opened when its first frame came
    OPEN = "open"
    #: opened before frame 0 came, at the size it is likely to have
    OPEN_AHEAD = "open_ahead"
    #: a spare session opened for a later stream
    OPEN_SPARE = "open_spare"
    #: one frame (and the audio up to it) encoded
    FRAME = "frame"
    #: the codecs flushed and the container finished
    FINISH = "finish"
    #: a live session's idle loop rendered and encoded
    IDLE_LOOP = "idle_loop"


class Queue(StrEnum):
    """``talkmesh_queue_depth{stage}``."""

    #: the caller's messages of a stream of raw frames
    INPUT = "input"
    #: the renderer's input of a stream whose frames the encoder pulls
    RENDER_INPUT = "render_input"
