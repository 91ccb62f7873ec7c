"""The label values of the TTS service's own metrics (``TTSService.known_series`` exports them at 0
from start-up; the code that records them uses these names)."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """``talkmesh_stage_duration_seconds{stage}``."""

    #: one clause synthesized (a request is one or more)
    SYNTHESIZE_CLAUSE = "synthesize_clause"
