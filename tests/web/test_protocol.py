"""The WebSocket's JSON is protobuf's JSON mapping of talkmesh.v1.Live, one to one (no mesh needed)."""

from __future__ import annotations

import base64
import json

import grpc
import pytest

from services.web.errors import HTTP_STATUS
from services.web.live import BadMessage, parse_client_message
from talkmesh.v1 import live_pb2 as lpb


def test_every_client_message_kind_parses_from_its_json() -> None:
    kinds = {f.name for f in lpb.LiveClientMessage.DESCRIPTOR.oneofs_by_name["kind"].fields}
    samples = {
        "config": {
            "avatar_id": "me",
            "voice": "espeak:en-us",
            "voice_settings": {"rate": 1.2},
            "size": "512",
            "idle_motion": "IDLE_MOTION_OFF",
        },
        "text": {"turn_id": "t1", "text": "Hello.", "final": True},
        "audio": {"turn_id": "a1", "sample_rate": 16000, "pcm": base64.b64encode(b"\x01\x00").decode()},
        "end_of_turn": {"turn_id": "t1"},
        "interrupt": {},
        "keep_alive": {},
    }
    assert set(samples) == kinds, "a new message kind needs a line here and in docs/WEB.md"
    for kind, body in samples.items():
        msg = parse_client_message(json.dumps({kind: body}))
        assert msg is not None and msg.WhichOneof("kind") == kind
    assert parse_client_message(json.dumps({"audio": samples["audio"]})).audio.pcm == b"\x01\x00"  # type: ignore[union-attr]
    assert parse_client_message('{"half_close": {}}') is None


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("not json", "message"),
        ("[1, 2]", "message"),
        ('{"text": {}, "interrupt": {}}', "message"),
        ('{"txet": {"turn_id": "t1"}}', "txet"),
        ('{"text": {"turn_id": 5, "text": []}}', "text.turn_id"),  # a value of the wrong type names its field
        ('{"audio": {"sample_rate": "fast"}}', "audio.sample_rate"),
        ('{"text": 5}', "text"),  # the message itself is the bad value
        ('{"config": 5}', "config"),
        ('{"config": {"text_format": "TEXT_FORMAT_HTML"}}', "config.text_format"),
        ('{"config": {"idle_motion": "IDLE_MOTION_SOMETIMES"}}', "config.idle_motion"),
        # protobuf's parser would read false as 0 and true as 1 (IDLE_MOTION_ON: a moving avatar)
        ('{"config": {"idle_motion": false}}', "config.idle_motion"),
        ('{"config": {"idle_motion": true}}', "config.idle_motion"),
        ('{"config": {"text_format": true}}', "config.text_format"),
        ('{"config": {"voice_settings": {"rate": "x"}}}', "config.voice_settings.rate"),
    ],
)
def test_bad_messages_name_what_is_wrong(text: str, field: str) -> None:
    with pytest.raises(BadMessage) as exc:
        parse_client_message(text)
    assert exc.value.field == field and str(exc.value).startswith(f"{field}: ")


def test_every_grpc_status_has_an_http_status() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.INVALID_ARGUMENT] == 400 and HTTP_STATUS[grpc.StatusCode.NOT_FOUND] == 404


@pytest.mark.parametrize(
    ("text", "listed", "camel"),
    [
        # (the edge's own half_close too: it is a kind the edge accepts)
        (
            '{"txet": {"turn_id": "t1"}}',
            "config, text, audio, end_of_turn, interrupt, keep_alive, half_close",
            "endOfTurn",
        ),
        ('{"text": {"turnid": "t1"}}', "turn_id, text, final, voice", "turnId"),
        ('{"config": {"voice_settings": {"rat": 1}}}', "rate, pitch, volume", "Available Fields"),
    ],
)
def test_unknown_fields_are_listed_by_their_proto_names(text: str, listed: str, camel: str) -> None:
    with pytest.raises(BadMessage) as exc:
        parse_client_message(text)
    assert str(exc.value).rstrip(".").endswith(f"its fields: {listed}") and camel not in str(exc.value)


def test_the_kinds_a_browser_may_send_are_the_protos_and_half_close() -> None:
    from services.web.live import CLIENT_KINDS

    oneof = [f.name for f in lpb.LiveClientMessage.DESCRIPTOR.oneofs_by_name["kind"].fields]
    assert CLIENT_KINDS == (*oneof, "half_close")
    with pytest.raises(BadMessage) as exc:
        parse_client_message('{"text": {}, "interrupt": {}}')
    assert str(exc.value).endswith(f"one key, one of {', '.join(CLIENT_KINDS)}"), str(exc.value)


def test_in_session_errors_carry_the_status_name() -> None:
    from services.web.live import _json

    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL):
        msg = lpb.LiveServerMessage(error=lpb.LiveError(code=code.value[0], message="m", turn_id="t1"))
        assert json.loads(_json(msg)) == {"error": {"code": code.name, "message": "m", "turn_id": "t1"}}
    started = json.loads(_json(lpb.LiveServerMessage(started=lpb.SessionStarted(session_id="s", sample_rate=24000))))
    assert started == {"started": {"session_id": "s", "sample_rate": 24000}}, "proto field names out too"


def test_booleans_are_refused_only_where_the_field_is_not_a_bool() -> None:
    from services.web.errors import boolean_misfit
    from talkmesh.v1 import gateway_pb2 as gpb

    speak = gpb.SpeakRequest.DESCRIPTOR
    field, why = boolean_misfit({"output": {"idle_motion": False}}, speak) or ("", "")
    assert field == "output.idle_motion"
    assert why.startswith("true and false are not values of it; one of IDLE_MOTION_UNSPECIFIED")
    assert (boolean_misfit({"output": {"idleMotion": True}}, speak) or ("",))[0] == "output.idle_motion"
    assert boolean_misfit({"output": {"idle_motion": "IDLE_MOTION_OFF", "size": "512"}, "text": "hi"}, speak) is None
    assert boolean_misfit({"output": {"idle_motion": 0}, "nothing": True}, speak) is None  # (JSON enums take numbers)
    live = lpb.LiveClientMessage.DESCRIPTOR
    assert boolean_misfit({"text": {"turn_id": "t", "final": True}}, live) is None  # a bool field


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"config": {"idle_motion": "OFF"}}', "config.idle_motion: 'OFF' is not one of IDLE_MOTION_UNSPECIFIED, "),
        ('{"config": {"voice_settings": {"rate": "fast"}}}', "config.voice_settings.rate: 'fast' is not a number"),
        ('{"audio": {"sample_rate": "fast"}}', "audio.sample_rate: 'fast' is not a number"),
        ('{"text": {"turn_id": 5}}', "text.turn_id: must be text (a JSON string)"),
    ],
)
def test_a_bad_value_is_said_plainly_with_the_names_an_enum_takes(text: str, said: str) -> None:
    """Not json_format's own words ("Failed to parse x field: Invalid enum value ... at ...")."""
    with pytest.raises(BadMessage) as exc:
        parse_client_message(text)
    assert str(exc.value).startswith(said), str(exc.value)
    assert "Failed to parse" not in str(exc.value) and " at " not in str(exc.value)
