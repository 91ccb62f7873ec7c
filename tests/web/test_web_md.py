"""The messages docs/WEB.md quotes are the ones the edge sends (they had drifted: a list of
fields without its last one). Every JSON object the page quotes inline (a code span) that
lists fields is checked here, from what the edge makes for the input it stands for."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import grpc
import pytest

from services.web.live import BadMessage, _json, parse_client_message, too_large_status
from services.web.server import not_a_websocket
from talkmesh.v1 import live_pb2 as lpb

WEB_MD = Path(__file__).resolve().parents[2] / "docs" / "WEB.md"


def quoted() -> list[Any]:
    """The JSON objects docs/WEB.md quotes in code spans (a span may wrap: a line break in it reads
    as a space); fenced blocks, whose examples elide with "…", are left out."""
    text = re.sub(r"```.*?```", "", WEB_MD.read_text(), flags=re.S)
    text = re.sub(r"\n[ \t]*", " ", text)
    found = []
    for span in re.findall(r"`([^`]+)`", text):
        if span.startswith("{"):
            try:
                found.append(json.loads(span))
            except ValueError:
                continue
    return found


def said_to(text: str) -> dict[str, Any]:
    """The edge's answer inside a session to the message ``text`` it cannot read (as its Sender
    writes it)."""
    with pytest.raises(BadMessage) as exc:
        parse_client_message(text)
    code = grpc.StatusCode.INVALID_ARGUMENT.value[0]
    err = lpb.LiveError(code=code, message=str(exc.value), field=exc.value.field)
    return json.loads(_json(lpb.LiveServerMessage(error=err)))  # type: ignore[no-any-return]


def test_the_messages_web_md_quotes_are_the_edges() -> None:
    docs = quoted()
    expected = {
        "an unknown field": said_to('{"text": {"turn_id": "t1", "txet": "Hi"}}'),
        "an unknown kind": said_to('{"bogus": {}}'),
        "a message over the limit": {"status": too_large_status(262144)},
        "a plain GET of /v1/live": {
            "error": {"code": "INVALID_ARGUMENT", "message": not_a_websocket("/v1/live"), "field": "Upgrade"}
        },
    }
    for what, message in expected.items():
        assert message in docs, f"docs/WEB.md should quote {what} as the edge says it: {json.dumps(message)}"
    listing = [d for d in docs if "its fields:" in json.dumps(d)]
    assert listing and all(d in expected.values() for d in listing), "a new quoted example needs a line here"
