"""Fixtures of the TTS tests: a service on port 0 and a stub talking to it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from services.tts.config import TTSConfig
from services.tts.main import create_service, load_config
from talkmesh.common.channel import create_channel
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import common_pb2, tts_pb2_grpc


def default_config(**changes: Any) -> TTSConfig:
    from talkmesh.common.config import replace

    return replace(load_config(env={}), **changes)


@contextlib.asynccontextmanager
async def serve_tts(config: TTSConfig) -> AsyncIterator[Any]:
    """(stub, service, host) for a TTS service with ``config`` on port 0."""
    service = create_service(config, Telemetry("tts"))
    async with serve(service) as host:
        channel = create_channel(host.address)
        try:
            yield tts_pb2_grpc.TTSStub(channel), service, host
        finally:
            await channel.close()


@pytest.fixture
async def tts() -> AsyncIterator[Any]:
    """(stub, service, host) for a TTS service with the default config."""
    async with serve_tts(default_config()) as served:
        yield served


def pcm_of(chunks: list[common_pb2.AudioChunk]) -> np.ndarray:
    return np.concatenate([np.frombuffer(c.pcm, dtype="<i2") for c in chunks]) if chunks else np.zeros(0)


def visemes_of(chunks: list[common_pb2.AudioChunk]) -> list[common_pb2.VisemeEvent]:
    return [v for c in chunks for v in c.visemes]
