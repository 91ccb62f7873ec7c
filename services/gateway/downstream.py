"""The four stages the gateway drives, behind one small interface.

``GrpcDownstreams`` talks to the services over gRPC (the mesh); ``talkmesh.bench`` builds an
in-process variant that calls the same servicers directly, so the mesh overhead can be measured
against the same code without the network hops.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import grpc

from services.gateway.config import GatewayConfig
from talkmesh.common.channel import create_channel
from talkmesh.common.interceptors import outgoing_metadata
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
    """A gRPC call. For streaming requests, a writer task owned by this object feeds the call.

    The writer stops as soon as the call has a status: with grpc.aio, a write that fails after the
    server ended the stream replaces the server's status (say NOT_FOUND) with
    ``INTERNAL: Internal error from Core`` (grpc/grpc#36066), so the caller would lose the reason.
    (Client interceptors would proxy writes through a queue and defeat that check, which is why the
    gateway's channels pass ``outgoing_metadata()`` explicitly instead of using interceptors.)
    An exception raised by the request iterator itself cancels the call and is re-raised to the
    reader instead of the resulting CANCELLED.
    """

    def __init__(self, call: Any, requests: AsyncIterable[Any] | None = None) -> None:
        self.call = call
        self.failure: BaseException | None = None
        self.writer: asyncio.Task[None] | None = None
        if requests is not None:
            self.writer = asyncio.create_task(self._write(requests), name="grpc-request-writer")

    async def _write(self, requests: AsyncIterable[Any]) -> None:
        try:
            async for request in requests:
                if self.call.done():
                    return
                if not await _write_keeping_status(self.call, request):
                    return
            if not self.call.done():
                await self.call.done_writing()
        except asyncio.CancelledError:
            raise
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            return  # the call ended; its status is what the reader reports
        except BaseException as exc:
            self.failure = exc
            self.call.cancel()

    async def _read(self) -> AsyncIterator[Any]:
        try:
            while (msg := await self.call.read()) is not grpc.aio.EOF:
                yield msg
        except grpc.aio.AioRpcError:
            if self.failure is not None:
                raise self.failure from None
            raise
        if self.failure is not None:
            raise self.failure

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._read()

    async def cancel(self) -> None:
        self.call.cancel()
        if self.writer is not None:
            self.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.writer


async def _write_keeping_status(call: Any, request: Any) -> bool:
    """``call.write(request)``, except that a write failing because the server already ended the
    call leaves the server's status in place (grpc/grpc#36066: ``_write`` overwrites it with
    INTERNAL). Uses grpc.aio internals when present, the public API otherwise. False: call ended."""
    cython_call = getattr(call, "_cython_call", None)
    serializer = getattr(call, "_request_serializer", None)
    metadata_sent = getattr(call, "_metadata_sent", None)
    if cython_call is None or metadata_sent is None or not hasattr(cython_call, "send_serialized_message"):
        await call.write(request)
        return True
    if not metadata_sent.is_set():
        await metadata_sent.wait()
    if call.done():
        return False
    data = serializer(request) if serializer is not None else request.SerializeToString()
    try:
        await cython_call.send_serialized_message(data)
    except grpc._cython.cygrpc.InternalError:  # the stream is closed; the status is on its way
        return False
    return True


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
            # TTS runs hundreds of times faster than real time: a fixed flow-control window holds it
            # back (with the gateway's own read-ahead limit) instead of buffering a whole utterance.
            "tts": create_channel(config.tts.target, limit, interceptors=False, bdp_probe=False),
            "audio_features": create_channel(config.audio_features.target, limit, interceptors=False),
            # raw frames come back from the renderer
            "renderer": create_channel(config.renderer.target, limit, interceptors=False, large_window=True),
            "encoder": create_channel(config.encoder.target, limit, interceptors=False),
        }
        self.config = config
        self.tts = tts_pb2_grpc.TTSStub(self.channels["tts"])
        self.features = audio_features_pb2_grpc.AudioFeaturesStub(self.channels["audio_features"])
        self.renderer = renderer_pb2_grpc.RendererStub(self.channels["renderer"])
        self.encoder = encoder_pb2_grpc.EncoderStub(self.channels["encoder"])

    def synthesize(self, request: tpb.SynthesizeRequest, timeout: float | None) -> Stream:
        return CallStream(self.tts.Synthesize(request, timeout=timeout, metadata=outgoing_metadata()))

    def synthesize_stream(self, requests: AsyncIterable[tpb.TextPiece], timeout: float | None) -> Stream:
        return CallStream(self.tts.SynthesizeStream(timeout=timeout, metadata=outgoing_metadata()), requests)

    def extract(self, requests: AsyncIterable[fpb.FeatureRequest], timeout: float | None) -> Stream:
        return CallStream(self.features.Extract(timeout=timeout, metadata=outgoing_metadata()), requests)

    def render(self, requests: AsyncIterable[rpb.RenderRequest], timeout: float | None) -> Stream:
        return CallStream(self.renderer.Render(timeout=timeout, metadata=outgoing_metadata()), requests)

    def encode(self, requests: AsyncIterable[epb.EncodeRequest], timeout: float | None) -> Stream:
        return CallStream(self.encoder.Encode(timeout=timeout, metadata=outgoing_metadata()), requests)

    async def close(self) -> None:
        for ch in self.channels.values():
            await ch.close()
