"""The label values of the gateway's own metrics (``GatewayService.known_series`` exports them at 0
from start-up; the code that records them uses these names)."""

from __future__ import annotations

from enum import StrEnum

from talkmesh.common.telemetry import LiveState

__all__ = ["LiveState", "Queue", "Stage", "TurnEnd"]


class Stage(StrEnum):
    """``talkmesh_stage_duration_seconds{stage}`` of a Speak (and its ``SpeakSummary.stages``)."""

    TTS_FIRST_CHUNK = "tts_first_chunk"
    TTS_TOTAL = "tts_total"
    FEATURES_FIRST = "features_first"
    RENDERER_FIRST_FRAME = "renderer_first_frame"
    #: streamed containers only (a whole MP4 has no fragment to time)
    ENCODER_FIRST_FRAGMENT = "encoder_first_fragment"
    #: request received to last fragment sent (the dashboard's request duration heatmap)
    TOTAL = "total"


class Queue(StrEnum):
    """``talkmesh_queue_depth{stage}``: the gateway's bounded queues."""

    TO_FEATURES = "gateway_to_features"
    TO_ENCODER = "gateway_to_encoder"
    TO_CLIENT = "gateway_to_client"
    LIVE_TO_CLIENT = "live_to_client"


class TurnEnd(StrEnum):
    """``talkmesh_live_turns_total{reason}``: how a live turn ended (its speaking_stopped's reason)."""

    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    #: the session ended first: a drain, a timeout, or the client left (its turns never stopped)
    SESSION_ENDED = "session_ended"
