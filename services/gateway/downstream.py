"""The stages the gateway drives, behind one small interface.

``GrpcDownstreams`` talks to the services over gRPC (the mesh); ``services.gateway.inprocess``
builds a variant that calls the same servicers directly, so the mesh overhead can be measured
against the same code without the network hops. Streams are ``talkmesh.common.calls.Stream`` s:
errors come out as ``StageError`` naming the stage, with its status code and details.

The gateway never sees raw frames: it sends the renderer's input (visemes, features) and the
audio to the encoder, which pulls the frames from the renderer (see services/encoder/render.py).
It still reaches the renderer directly for avatar management (register, list, delete).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import grpc
from google.rpc import error_details_pb2

from services.gateway.config import GatewayConfig
from talkmesh.common.calls import CallStream, Stream
from talkmesh.common.channel import create_channel
from talkmesh.common.errors import FailedPrecondition, NotFound, StageError, TalkmeshError
from talkmesh.common.principal import current_principal, principal_metadata
from talkmesh.common.propagation import outgoing_metadata
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import audio_features_pb2_grpc, encoder_pb2_grpc, live_pb2_grpc, renderer_pb2_grpc, tts_pb2_grpc
from talkmesh.v1 import encoder_pb2 as epb
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import tts_pb2 as tpb

log = logging.getLogger(__name__)


class Downstreams(abc.ABC):
    @abc.abstractmethod
    def synthesize(self, request: tpb.SynthesizeRequest, timeout: float | None) -> Stream: ...

    @abc.abstractmethod
    def synthesize_stream(self, requests: AsyncIterable[tpb.TextPiece], timeout: float | None) -> Stream: ...

    @abc.abstractmethod
    def extract(self, requests: AsyncIterable[fpb.FeatureRequest], timeout: float | None) -> Stream: ...

    @abc.abstractmethod
    def encode(self, requests: AsyncIterable[epb.EncodeRequest], timeout: float | None) -> Stream: ...

    @abc.abstractmethod
    def live(self, requests: AsyncIterable[epb.LiveEncodeRequest], timeout: float | None) -> Stream:
        """A live session's stream on the encoder."""

    @abc.abstractmethod
    async def list_voices(self, request: tpb.ListVoicesRequest, timeout: float | None) -> tpb.ListVoicesResponse:
        """TTS's voices; with ``request.voice``, that one (NOT_FOUND on ``voice`` if TTS has none)."""

    def watch_remote(self, owner: str, session_id: str) -> AsyncIterator[lpb.LiveServerMessage]:
        """Watch a session owned by the replica at ``owner`` (other replicas forward to it)."""
        raise NotFound("session_id", session_id, "live session")

    async def get_avatar(self, request: rpb.GetAvatarRequest, timeout: float | None) -> rpb.AvatarInfo | None:
        """The renderer's GetAvatar for the caller's API key; None when there is no renderer to ask
        here (then a name goes on as it is, and the renderer's Render resolves it)."""
        return None

    async def find_avatar(self, value: str, field: str, timeout: float | None) -> rpb.AvatarInfo | None:
        """The avatar ``value`` (an id or a name; empty: the default) names, resolved by the
        renderer (GetAvatar: the rules are there, in one place), with errors naming ``field`` as
        the gateway's own: NOT_FOUND (unknown, or another API key's avatar), FAILED_PRECONDITION
        (a name of several avatars). None when there is no renderer to ask (``get_avatar``)."""
        try:
            return await self.get_avatar(rpb.GetAvatarRequest(avatar_id=value), timeout)
        except TalkmeshError as exc:  # (a StageError over gRPC; in-process, the renderer's own)
            if exc.code == grpc.StatusCode.UNIMPLEMENTED:
                # a renderer older than GetAvatar (a rolling upgrade): it takes ids, as before
                log.warning("the renderer has no GetAvatar (older than this gateway): avatar %r sent as it is", value)
                return None
            if exc.code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(field, value, "avatar") from None
            if exc.code == grpc.StatusCode.FAILED_PRECONDITION:
                reasons = [
                    v.description
                    for d in exc.details()
                    if isinstance(d, error_details_pb2.BadRequest)
                    for v in d.field_violations
                ]
                raise FailedPrecondition(reasons[0] if reasons else exc.message, field=field) from None
            raise

    async def avatar_id(self, value: str, field: str, timeout: float | None) -> str:
        """The id of the avatar ``value`` names (``find_avatar``); empty (the default avatar) stays
        empty, without a call."""
        if not value:
            return value
        info = await self.find_avatar(value, field, timeout)
        return info.id if info is not None else value

    async def close(self) -> None:
        return None


class GrpcDownstreams(Downstreams):
    """The four services over gRPC. Calls pass ``outgoing_metadata()`` (trace context, request
    id) explicitly: client interceptors would proxy writes through a queue and hide a server's
    early status (see talkmesh/common/calls.py)."""

    def __init__(self, config: GatewayConfig) -> None:
        limit = config.server.max_message_bytes
        self.channels = {
            # TTS runs hundreds of times faster than real time: a fixed flow-control window holds it
            # back (with the gateway's own read-ahead limit) instead of buffering a whole utterance.
            "tts": create_channel(config.tts.target, limit, interceptors=False, bdp_probe=False, tls=config.tts.tls),
            "audio_features": create_channel(
                config.audio_features.target, limit, interceptors=False, tls=config.audio_features.tls
            ),
            "renderer": create_channel(config.renderer.target, limit, interceptors=False, tls=config.renderer.tls),
            "encoder": create_channel(config.encoder.target, limit, interceptors=False, tls=config.encoder.tls),
        }
        self.config = config
        self.tts = tts_pb2_grpc.TTSStub(self.channels["tts"])
        self.features = audio_features_pb2_grpc.AudioFeaturesStub(self.channels["audio_features"])
        self.renderer = renderer_pb2_grpc.RendererStub(self.channels["renderer"])
        self.encoder = encoder_pb2_grpc.EncoderStub(self.channels["encoder"])
        self.peers: dict[str, grpc.aio.Channel] = {}  # other gateway replicas (Watch forwarding)

    def synthesize(self, request: tpb.SynthesizeRequest, timeout: float | None) -> Stream:
        call = self.tts.Synthesize(request, timeout=timeout, metadata=outgoing_metadata(principal_metadata()))
        return CallStream(call, stage="tts")

    def synthesize_stream(self, requests: AsyncIterable[tpb.TextPiece], timeout: float | None) -> Stream:
        call = self.tts.SynthesizeStream(timeout=timeout, metadata=outgoing_metadata(principal_metadata()))
        return CallStream(call, requests, stage="tts")

    def extract(self, requests: AsyncIterable[fpb.FeatureRequest], timeout: float | None) -> Stream:
        call = self.features.Extract(timeout=timeout, metadata=outgoing_metadata(principal_metadata()))
        return CallStream(call, requests, stage="audio_features")

    def encode(self, requests: AsyncIterable[epb.EncodeRequest], timeout: float | None) -> Stream:
        call = self.encoder.Encode(timeout=timeout, metadata=outgoing_metadata(principal_metadata()))
        return CallStream(call, requests, stage="encoder")

    def live(self, requests: AsyncIterable[epb.LiveEncodeRequest], timeout: float | None) -> Stream:
        call = self.encoder.Live(timeout=timeout, metadata=outgoing_metadata(principal_metadata()))
        return CallStream(call, requests, stage="encoder")

    async def list_voices(self, request: tpb.ListVoicesRequest, timeout: float | None) -> tpb.ListVoicesResponse:
        return await self.unary("tts", "ListVoices", request, timeout)  # type: ignore[no-any-return]

    async def get_avatar(self, request: rpb.GetAvatarRequest, timeout: float | None) -> rpb.AvatarInfo:
        return await self.unary("renderer", "GetAvatar", request, timeout)  # type: ignore[no-any-return]

    async def watch_remote(self, owner: str, session_id: str) -> AsyncIterator[lpb.LiveServerMessage]:
        channel = self.peers.get(owner)
        if channel is None:
            channel = self.peers[owner] = create_channel(
                owner, self.config.server.max_message_bytes, interceptors=False, tls=self.config.live.peer_tls
            )
        # The owning replica checks the same API key (and that it started the session).
        principal = current_principal.get()
        forwarded = [("authorization", principal.authorization)] if principal and principal.authorization else []
        call = live_pb2_grpc.LiveStub(channel).Watch(
            lpb.WatchRequest(session_id=session_id), metadata=outgoing_metadata(forwarded)
        )
        stream = CallStream(call, stage="gateway")
        try:
            async for msg in stream:
                yield msg
        finally:  # the viewer left: the owning replica stops feeding it at once
            await stream.cancel()

    async def unary(self, stage: str, method: str, request: Any, timeout: float | None) -> Any:
        """A unary (or client-streaming) call to ``stage``, with trace context and request id."""
        stub = {"tts": self.tts, "renderer": self.renderer, "audio_features": self.features, "encoder": self.encoder}
        try:
            return await getattr(stub[stage], method)(
                request, timeout=timeout, metadata=outgoing_metadata(principal_metadata())
            )
        except grpc.aio.AioRpcError as exc:
            raise StageError(stage, exc) from None

    async def close(self) -> None:
        for ch in [*self.channels.values(), *self.peers.values()]:
            await ch.close()
