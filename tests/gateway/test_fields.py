"""The gateway names the caller's own request fields in a stage's error (services/gateway/fields.py)."""

from __future__ import annotations

import grpc
import pytest

from services.gateway.fields import in_live_terms, in_speak_terms, live_field, speak_field
from talkmesh.common.errors import ErrorDetails, InvalidArgument, NotFound, StageError, status_trailer


@pytest.mark.parametrize(
    ("stage_field", "speak", "live"),
    [
        ("config.voice", "voice", "config.voice"),
        ("config.settings.rate", "voice_settings.rate", "config.voice_settings.rate"),
        ("config.settings", "voice_settings", "config.voice_settings"),
        ("config.size", "output.size", "config.size"),
        ("config.backend", "output.renderer_backend", "config.renderer_backend"),
        ("config.avatar_id", "avatar_id", "config.avatar_id"),
        ("config.audio_codec", "output.audio_codec", "config.audio_codec"),
        ("config.idle_motion", "output.idle_motion", "config.idle_motion"),
        ("config.container", "output.container", None),  # a live session has none
        ("config.fps", None, None),  # the gateway's own settings: not the caller's
        ("config.sample_rate", None, None),
        ("text", None, None),
    ],
)
def test_a_stage_configs_field_is_the_callers_request_field(stage_field, speak, live):
    assert speak_field(stage_field) == speak
    assert live_field(stage_field) == live


def test_a_stage_error_is_renamed_in_its_message_and_details():
    status = InvalidArgument("config.settings.rate", "50 is outside 0.25..4")
    rpc = grpc.aio.AioRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status_trailer(status.code, status.message, status.details())),
        details=status.message,
    )
    exc = in_speak_terms(StageError("tts", rpc))
    assert exc.message == "tts: voice_settings.rate: 50 is outside 0.25..4"
    assert exc.field == "voice_settings.rate"
    trailer = grpc.aio.Metadata(*status_trailer(exc.code, exc.message, exc.details()))
    got = ErrorDetails.of(grpc.aio.AioRpcError(exc.code, grpc.aio.Metadata(), trailer, details=exc.message))
    assert got.field == "voice_settings.rate"

    local = in_live_terms(NotFound("config.voice", "espeak:nope", "voice"))  # a stage called in-process
    assert (local.field, local.message) == ("config.voice", "config.voice: voice 'espeak:nope' not found")
    local = in_speak_terms(NotFound("config.voice", "espeak:nope", "voice"))
    assert (local.field, local.message) == ("voice", "voice: voice 'espeak:nope' not found")
    assert local.details()[0].description == "voice: voice 'espeak:nope' not found"
