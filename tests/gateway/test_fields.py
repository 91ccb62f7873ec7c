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


def test_a_fragment_length_is_bounded_as_the_encoder_bounds_it_by_default():
    """output.fragment_ms: MIN_FRAGMENT_MS..MAX_FRAGMENT_MS, the encoder's default limit, said in the refusal."""
    from services.encoder.config import EncoderConfig
    from services.gateway.config import GatewayConfig
    from services.gateway.server import MIN_FRAGMENT_MS, validate_request
    from talkmesh.common.clock import MAX_FRAGMENT_MS
    from talkmesh.v1 import gateway_pb2 as gpb

    assert EncoderConfig().limits.max_fragment_ms == MAX_FRAGMENT_MS
    for ms in (0, MIN_FRAGMENT_MS, MAX_FRAGMENT_MS):
        validate_request(gpb.SpeakRequest(text="Hi.", output=gpb.OutputOptions(fragment_ms=ms)), GatewayConfig())
    for ms in (MIN_FRAGMENT_MS - 1, MAX_FRAGMENT_MS + 1):
        with pytest.raises(InvalidArgument) as err:
            validate_request(gpb.SpeakRequest(text="Hi.", output=gpb.OutputOptions(fragment_ms=ms)), GatewayConfig())
        assert (err.value.field, err.value.reason) == (
            "output.fragment_ms",
            f"must be 0 (default) or within {MIN_FRAGMENT_MS}..{MAX_FRAGMENT_MS}",
        )
