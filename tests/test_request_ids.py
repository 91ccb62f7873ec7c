"""The request id a client sees in its answers is the one in every service's log lines."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from talkmesh.client import TalkmeshClient
from talkmesh.common.logs import _RequestIdFilter
from tests.mesh import inprocess_mesh


def _calls(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(request id, message) of the interceptors' one line per call."""
    return [
        (getattr(r, "request_id", ""), r.getMessage())
        for r in caplog.records
        if r.name == "talkmesh.common.interceptors" and " in " in r.getMessage()
    ]


async def test_speak_and_live_log_one_line_per_call_under_the_clients_request_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.handler.addFilter(_RequestIdFilter())
    caplog.set_level(logging.INFO, logger="talkmesh.common.interceptors")
    async with inprocess_mesh(tmp_path) as mesh, TalkmeshClient(mesh.gateway) as client:
        chunks = [c async for c in client.speak("Find me in the logs.", request_id="find-me-42")]
        generated = [c async for c in client.speak("And me.")]
        async with client.live(request_id="live-7") as live:
            tid = await live.say("Hi.")
            async for msg in live:
                if msg.WhichOneof("kind") == "event" and msg.event.WhichOneof("kind") == "speaking_stopped":
                    assert msg.event.speaking_stopped.turn_id == tid
                    break
    assert chunks[-1].summary.request_id == "find-me-42"
    calls = _calls(caplog)
    mine = [m for rid, m in calls if rid == "find-me-42"]
    for method in ("Gateway/Speak OK", "TTS/Synthesize OK", "AudioFeatures/Extract OK", "Encoder/Encode OK",
                   "Renderer/Render OK"):  # fmt: skip
        assert sum(f"talkmesh.v1.{method} in " in m for m in mine) == 1, (method, mine)
    # without an id of its own, the one the gateway chose is in its answers and in the logs
    rid = generated[-1].summary.request_id
    assert rid and rid != "find-me-42"
    assert any(r == rid and "Gateway/Speak OK" in m for r, m in calls)
    assert any(r == rid and "TTS/Synthesize OK" in m for r, m in calls)
    assert any(r == "live-7" and "Live/Session" in m for r, m in calls), calls
    assert any(r == "live-7" and "Encoder/Live" in m for r, m in calls), calls
