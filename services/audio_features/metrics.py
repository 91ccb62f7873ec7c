"""The label values of the audio features service's own metrics (``AudioFeaturesService.known_series``
exports them at 0 from start-up; the code that records them uses these names)."""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """``talkmesh_stage_duration_seconds{stage}``."""

    #: compute time of one request's features
    EXTRACT = "extract"
