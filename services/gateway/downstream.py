"""The four stages the gateway drives, behind one small interface.

``GrpcDownstreams`` talks to the services over gRPC (the mesh); ``talkmesh.bench`` builds an
in-process variant that calls the same servicers directly, so the mesh overhead can be measured
against the same code without the network hops.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import grpc

from services.gateway.config import GatewayConfig
from talkmesh.common.channel import create_channel
from talkmesh.v1 import (
    audio_features_pb2 as fpb,
)
from talkmesh.v1 import (
    audio_features_pb2_grpc,
    encoder_pb2_grpc,
    renderer_pb2_grpc,
    tts_pb2_grpc,
)
from talkmesh.v1 import (
    common_pb2 as cpb,
)
from talkmesh.v1 import (
    encoder_pb2 as epb,
)
from talkmesh.v1 import (
    renderer_pb2 as rpb,
)
from talkmesh.v1 import (
    tts_pb2 as tpb,
)


class Stream(abc.ABC):
    """A response stream that can be cancelled (a gRPC call, or an in-process generator)."""

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[Any]: ...

    @abc.abstractmethod
    async def cancel(self) -> None: ...


class CallStream(Stream):
    def __init__(self, call: Any) -> None:
        self.call = call

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.call.__aiter__()  # type: ignore[no-any-return]

    async def cancel(self) -> None:
        self.call.cancel()


class Downstreams(abc.ABC):
    @abc.abstractmethod
    def synthesize(self, request: tpb.SynthesizeRequest, timeout: float | None) -> Stream: ...

    @abc.abstractmethod
    def synthesize_stream(self, requests: AsyncIterable[tpb.TextPiece], timeout: float | None) -> Stream: ...

    @abc.abstractmethod
    def extract(self, requests: AsyncIterable[fpb.FeatureRequest], timeout: float | None) -> Stream: ...

    @abc.abstractmethod
    def render(self, requests: AsyncIterable[rpb.RenderRequest], timeout: float | None) -> Stream: ...

    @abc.abstractmethod
    def encode(self, requests: AsyncIterable[epb.EncodeRequest], timeout: float | None) -> Stream: ...

    async def close(self) -> None:
        return None


class GrpcDownstreams(Downstreams):
    def __init__(self, config: GatewayConfig) -> None:
        limit = config.server.max_message_bytes
        self.channels = {
            name: create_channel(getattr(config, name).target, limit)
            for name in ("tts", "audio_features", "renderer", "encoder")
        }
        self.config = config
        self.tts = tts_pb2_grpc.TTSStub(self.channels["tts"])
        self.features = audio_features_pb2_grpc.AudioFeaturesStub(self.channels["audio_features"])
        self.renderer = renderer_pb2_grpc.RendererStub(self.channels["renderer"])
        self.encoder = encoder_pb2_grpc.EncoderStub(self.channels["encoder"])

    def synthesize(self, request: tpb.SynthesizeRequest, timeout: float | None) -> Stream:
        return CallStream(self.tts.Synthesize(request, timeout=timeout))

    def synthesize_stream(self, requests: AsyncIterable[tpb.TextPiece], timeout: float | None) -> Stream:
        return CallStream(self.tts.SynthesizeStream(requests, timeout=timeout))

    def extract(self, requests: AsyncIterable[fpb.FeatureRequest], timeout: float | None) -> Stream:
        return CallStream(self.features.Extract(requests, timeout=timeout))

    def render(self, requests: AsyncIterable[rpb.RenderRequest], timeout: float | None) -> Stream:
        return CallStream(self.renderer.Render(requests, timeout=timeout))

    def encode(self, requests: AsyncIterable[epb.EncodeRequest], timeout: float | None) -> Stream:
        return CallStream(self.encoder.Encode(requests, timeout=timeout))

    async def wait_ready(self, timeout: float = 30.0) -> None:
        for ch in self.channels.values():
            await ch.channel_ready() if timeout is None else await _with_timeout(ch, timeout)

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()


async def _with_timeout(ch: grpc.aio.Channel, timeout: float) -> None:
    import asyncio

    await asyncio.wait_for(ch.channel_ready(), timeout)


__all__ = ["CallStream", "Downstreams", "GrpcDownstreams", "Stream", "cpb"]
