"""The gateway: validates client requests, runs the Speak pipeline, hosts the live sessions (Live,
Watch) and proxies avatar/voice calls."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc

from services.gateway.audio import check_audio
from services.gateway.auth import AuthInterceptor, KeyStore
from services.gateway.checks import check_media_options, check_text_format
from services.gateway.config import GatewayConfig
from services.gateway.downstream import Downstreams, GrpcDownstreams
from services.gateway.live import LiveHub
from services.gateway.metrics import LiveState, Queue, Stage, TurnEnd
from services.gateway.pipeline import SpeakPipeline
from talkmesh.common.calls import CallStream
from talkmesh.common.clock import MAX_FRAGMENT_MS
from talkmesh.common.errors import FailedPrecondition, InvalidArgument
from talkmesh.common.names import MAX_SESSION_ID_CHARS, check_id, check_text
from talkmesh.common.principal import principal_metadata
from talkmesh.common.propagation import adopt_request_id, outgoing_metadata
from talkmesh.common.registry import spec
from talkmesh.common.server import Service
from talkmesh.common.streams import RequestStream
from talkmesh.common.telemetry import Rejection, Series, Telemetry
from talkmesh.v1 import encoder_pb2 as epb
from talkmesh.v1 import gateway_pb2 as gpb
from talkmesh.v1 import gateway_pb2_grpc, live_pb2_grpc
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import tts_pb2 as tpb

log = logging.getLogger(__name__)


#: The shortest fMP4 fragment a request may ask for (milliseconds; the longest is the clock's
#: MAX_FRAGMENT_MS).
MIN_FRAGMENT_MS = 20


def validate_text(text: str, limit: int, field: str = "text") -> str:
    """The text to speak, stripped of surrounding white space and checked as every stage checks it."""
    return check_text(field, text.strip(), limit)


def validate_request(req: gpb.SpeakRequest, config: GatewayConfig, *, streaming: bool = False) -> None:
    if not streaming:
        validate_text(req.text, config.max_text_chars)
    elif req.text:
        raise InvalidArgument("start.text", "must be empty: send text as the following messages")
    for name in ("request_id", "avatar_id", "voice", "session_id"):
        check_id(name, getattr(req, name))  # (avatar_id: an id or a name, resolved by the renderer)
    check_text_format("text_format", req.text_format)
    out = req.output
    check_media_options(
        "output",
        size=out.size,
        renderer_backend=out.renderer_backend,
        audio_codec=out.audio_codec,
        idle_motion=out.idle_motion,
    )
    if out.container not in epb.Container.values():
        raise InvalidArgument("output.container", f"unknown container {out.container}")
    if req.output.fragment_ms and not MIN_FRAGMENT_MS <= req.output.fragment_ms <= MAX_FRAGMENT_MS:
        raise InvalidArgument(
            "output.fragment_ms", f"must be 0 (default) or within {MIN_FRAGMENT_MS}..{MAX_FRAGMENT_MS}"
        )


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, config: GatewayConfig, telemetry: Telemetry, downstreams: Downstreams) -> None:
        self.config = config
        self.telemetry = telemetry
        self.downstreams = downstreams
        self.pipeline = SpeakPipeline(downstreams, config, telemetry)

    def _timeout(self, context: Any) -> float:
        remaining = context.time_remaining()
        return self.config.default_deadline_seconds if remaining is None else remaining

    async def Speak(self, request: gpb.SpeakRequest, context: Any) -> AsyncIterator[gpb.SpeakChunk]:
        validate_request(request, self.config)
        rid = adopt_request_id(request.request_id)
        async for chunk in self.pipeline.run(request, rid, self._timeout(context)):
            yield chunk

    async def SpeakStream(
        self, request_iterator: AsyncIterator[gpb.SpeakStreamRequest], context: Any
    ) -> AsyncIterator[gpb.SpeakChunk]:
        idle = self.config.server.idle_timeout
        stream: RequestStream[gpb.SpeakStreamRequest] = await RequestStream.open(
            request_iterator, "start", first_timeout=idle, idle_timeout=idle, what="text or audio stream"
        )
        validate_request(stream.config, self.config, streaming=True)
        rid = adopt_request_id(stream.config.request_id)
        first = await anext(stream, None)  # text or audio: the first piece says which
        timeout = self._timeout(context)
        if first is not None and first.WhichOneof("kind") == "audio":
            _no_voice_for_audio(stream.config)
            self._declared_length(first.audio)
            run = self.pipeline.run(stream.config, rid, timeout, audio_pieces=self._audio_pieces(first, stream))
        else:
            run = self.pipeline.run(stream.config, rid, timeout, text_pieces=self._text_pieces(first, stream))
        async for chunk in run:
            yield chunk

    async def _text_pieces(
        self, first: gpb.SpeakStreamRequest | None, rest: AsyncIterator[gpb.SpeakStreamRequest]
    ) -> AsyncIterator[str]:
        limit = self.config.max_text_chars
        total = 0
        msg = first
        while msg is not None:
            if msg.WhichOneof("kind") != "text":
                raise InvalidArgument("text", "every message after start must carry text, as the first one did")
            total += len(msg.text)
            if total > limit:
                raise InvalidArgument("text", f"streamed text exceeds the limit of {limit} characters")
            yield msg.text
            msg = await anext(rest, None)

    def _declared_length(self, first: gpb.AudioPiece) -> None:
        """A recording whose sender says it is over ``max_audio_seconds`` is refused before any
        stage starts (the limit is otherwise reached only after rendering up to it)."""
        check_audio(first.sample_rate, first.pcm)  # (a bad rate is named as such first)
        limit = self.config.max_audio_seconds
        rate = first.sample_rate
        if first.total_samples > limit * rate:
            raise InvalidArgument(
                "audio.total_samples",
                f"the recording is {first.total_samples / rate:.1f} seconds, over the limit of {limit:g} seconds",
            )

    async def _audio_pieces(
        self, first: gpb.SpeakStreamRequest, rest: AsyncIterator[gpb.SpeakStreamRequest]
    ) -> AsyncIterator[tuple[int, bytes]]:
        """(sample rate, PCM) of each audio piece, checked: one rate, at most ``max_audio_seconds``."""
        rate = first.audio.sample_rate
        limit = self.config.max_audio_seconds
        samples = 0
        msg: gpb.SpeakStreamRequest | None = first
        while msg is not None:
            if msg.WhichOneof("kind") != "audio":
                raise InvalidArgument("audio", "every message after start must carry audio, as the first one did")
            check_audio(msg.audio.sample_rate, msg.audio.pcm, first=samples == 0)
            if msg.audio.sample_rate != rate:
                raise InvalidArgument(
                    "audio.sample_rate", f"{msg.audio.sample_rate} Hz differs from the first piece's {rate} Hz"
                )
            samples += len(msg.audio.pcm) // 2
            if samples > limit * rate:
                raise InvalidArgument("audio", f"streamed audio exceeds the limit of {limit:g} seconds")
            yield rate, msg.audio.pcm
            msg = await anext(rest, None)

    # -- proxies to the owning services (one code path: trace context and request id) ---------
    def _grpc(self) -> GrpcDownstreams:
        if not isinstance(self.downstreams, GrpcDownstreams):
            raise FailedPrecondition("avatar management needs the gRPC mesh")
        return self.downstreams

    async def ListVoices(self, request: tpb.ListVoicesRequest, context: Any) -> tpb.ListVoicesResponse:
        return await self.downstreams.list_voices(request, self.config.tts.timeout_seconds)

    async def ListAvatars(self, request: rpb.ListAvatarsRequest, context: Any) -> rpb.ListAvatarsResponse:
        return await self._grpc().unary("renderer", "ListAvatars", request, self.config.renderer.timeout_seconds)

    async def RegisterAvatar(self, request_iterator: AsyncIterator[rpb.AvatarUpload], context: Any) -> rpb.AvatarInfo:
        call = self._grpc().renderer.RegisterAvatar(
            timeout=self._timeout(context), metadata=outgoing_metadata(principal_metadata())
        )
        return await CallStream(call, request_iterator, stage="renderer").response()

    async def RegisterAvatarWithProgress(
        self, request_iterator: AsyncIterator[rpb.AvatarUpload], context: Any
    ) -> AsyncIterator[rpb.AvatarRegistration]:
        call = self._grpc().renderer.RegisterAvatarWithProgress(
            timeout=self._timeout(context), metadata=outgoing_metadata(principal_metadata())
        )
        stream = CallStream(call, request_iterator, stage="renderer")
        try:
            async for msg in stream:
                yield msg
        finally:
            await stream.cancel()

    async def GetAvatar(self, request: rpb.GetAvatarRequest, context: Any) -> rpb.AvatarInfo:
        check_id("avatar_id", request.avatar_id)
        found = await self._grpc().find_avatar(request.avatar_id, "avatar_id", self.config.renderer.timeout_seconds)
        assert found is not None  # (the gRPC mesh always has a renderer to ask)
        return found

    async def DeleteAvatar(self, request: rpb.DeleteAvatarRequest, context: Any) -> rpb.DeleteAvatarResponse:
        check_id("avatar_id", request.avatar_id)  # an id or a name (the renderer resolves it)
        return await self._grpc().unary("renderer", "DeleteAvatar", request, self.config.renderer.timeout_seconds)


def _no_voice_for_audio(start: gpb.SpeakRequest) -> None:
    """The caller's own speech is spoken as it is: a voice or voice settings with it would be
    silently ignored (a speech trainer's `rate: 0.75` would not slow the recording down), so the
    request is refused naming the field instead."""
    if start.voice:
        raise InvalidArgument("voice", "is for text; audio pieces are spoken as they are (leave it empty)")
    if start.text_format:
        raise InvalidArgument("text_format", "is for text; audio pieces are spoken as they are (leave it unset)")
    for name in ("rate", "pitch", "volume"):
        if getattr(start.voice_settings, name):
            raise InvalidArgument(
                f"voice_settings.{name}", "is for text; audio pieces are spoken as they are (leave it unset)"
            )


class LiveServicer(live_pb2_grpc.LiveServicer):
    """``talkmesh.v1.Live``: live sessions and their viewers (services/gateway/live.py)."""

    def __init__(self, config: GatewayConfig, hub: LiveHub) -> None:
        self.config = config
        self.hub = hub

    async def Session(
        self, request_iterator: AsyncIterator[lpb.LiveClientMessage], context: Any
    ) -> AsyncIterator[lpb.LiveServerMessage]:
        # The session's own idle timeout (with keep-alives and a warning) applies after the config.
        stream: RequestStream[lpb.LiveClientMessage] = await RequestStream.open(
            request_iterator, "config", first_timeout=self.config.server.idle_timeout, what="live session"
        )
        async for msg in self.hub.session(stream, context.time_remaining()):
            yield msg

    async def Watch(self, request: lpb.WatchRequest, context: Any) -> AsyncIterator[lpb.LiveServerMessage]:
        if not request.session_id or len(request.session_id) > MAX_SESSION_ID_CHARS:
            raise InvalidArgument("session_id", "must be a session id from SessionStarted")
        async for msg in self.hub.watch(request.session_id):
            yield msg


class GatewayService(Service):
    name = "gateway"
    external = True  # the public edge: statuses scrubbed of internal addresses and paths

    def __init__(self, config: GatewayConfig, telemetry: Telemetry, downstreams: Downstreams | None = None) -> None:
        super().__init__(telemetry)
        self.config = config
        self.keys = KeyStore(config.auth) if config.auth.enabled else None
        self.downstreams: Downstreams = downstreams or GrpcDownstreams(config)
        self.servicer = GatewayServicer(config, telemetry, self.downstreams)
        self.live = LiveHub(config, telemetry, self.downstreams)

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        gateway_pb2_grpc.add_GatewayServicer_to_server(self.servicer, server)
        live_pb2_grpc.add_LiveServicer_to_server(LiveServicer(self.config, self.live), server)
        return spec("gateway").grpc_service_names()

    def interceptors(self) -> Sequence[grpc.aio.ServerInterceptor]:
        return [AuthInterceptor(self.keys)] if self.keys is not None else []

    def bound(self, address: str) -> None:
        self.live.advertise(address)

    def known_series(self) -> Sequence[Series]:
        m = self.telemetry.metrics
        series = [
            Series(m.stage_duration, Stage),
            Series(m.queue_depth, Queue),
            Series(m.live_sessions, LiveState),
            Series(m.live_turns_total, TurnEnd),
            Series(m.live_turn_start_seconds),
            Series(m.time_to_first_audio),
            Series(m.time_to_first_frame),
            Series(m.realtime_factor),
            Series(m.frames_total),
        ]
        if self.dependencies():  # refuses new calls while a stage is down (dependencies_changed)
            series.append(Series(m.rejections_total, (Rejection.DEPENDENCY,)))
        return series

    def dependencies(self) -> Mapping[str, grpc.aio.Channel]:
        ds = self.downstreams
        return dict(ds.channels) if isinstance(ds, GrpcDownstreams) else {}

    def dependencies_changed(self, down: list[str]) -> str:
        # every gateway call needs the stages: refuse at once rather than hang until the deadline
        return f"{', '.join(down)}: not answering health checks" if down else ""

    async def drain(self) -> None:
        await self.live.drain()

    async def stop(self) -> None:
        await self.downstreams.close()
