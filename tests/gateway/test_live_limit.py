"""The live session limit holds for sessions that start at the same moment."""

from __future__ import annotations

import asyncio
import dataclasses
import types
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.gateway import live
from services.gateway.config import GatewayConfig
from talkmesh.common.errors import ResourceExhausted
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import tts_pb2 as tpb


class _SlowVoices:
    """TTS takes 0.1 s to confirm a voice: every session start waits there."""

    async def list_voices(self, request: tpb.ListVoicesRequest, timeout: float | None) -> tpb.ListVoicesResponse:
        await asyncio.sleep(0.1)
        return tpb.ListVoicesResponse(voices=[tpb.Voice(id=request.voice, sample_rate=22050)])

    async def avatar_id(self, value: str, field: str, timeout: float | None) -> str:
        return value  # (the default avatar: nothing to resolve)


async def test_sessions_starting_together_do_not_pass_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    async def runs_until_cancelled(self: Any, stream: Any) -> AsyncIterator[lpb.LiveServerMessage]:
        await asyncio.Event().wait()
        yield lpb.LiveServerMessage()

    monkeypatch.setattr(live.LiveSession, "run", runs_until_cancelled)
    cfg = GatewayConfig()
    cfg = dataclasses.replace(cfg, live=dataclasses.replace(cfg.live, max_sessions=2))
    hub = live.LiveHub(cfg, Telemetry("gateway"), _SlowVoices())  # type: ignore[arg-type]
    stream = types.SimpleNamespace(config=lpb.LiveConfig(voice="espeak:en-us"))
    starts = [asyncio.create_task(anext(hub.session(stream, None))) for _ in range(5)]  # type: ignore[arg-type]
    await asyncio.sleep(0.5)
    refused = [t for t in starts if t.done() and isinstance(t.exception(), ResourceExhausted)]
    assert len(hub.sessions) == 2 and len(refused) == 3
    assert refused[0].exception().code == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[union-attr]
    for t in starts:
        t.cancel()
    await asyncio.gather(*starts, return_exceptions=True)
