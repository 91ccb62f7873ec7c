"""Ways of speaking one request: through the mesh over gRPC, or the same stages in this process."""

from __future__ import annotations

import importlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import Any, Protocol, TypeVar

from talkmesh.bench.results import RequestResult
from talkmesh.v1 import gateway_pb2 as gpb

T = TypeVar("T")


class Speaker(Protocol):
    """Speaks one request and reports what the client saw."""

    async def speak(self, request: gpb.SpeakRequest) -> RequestResult: ...

    async def first_fragment(self, request: gpb.SpeakRequest, probe: Callable[[], T]) -> tuple[float, T]:
        """Reads the request to its first fragment and stops it there (the call cancelled):
        (seconds to it, ``probe()`` read the moment it came)."""
        ...

    async def close(self) -> None: ...


def is_fragment(chunk: gpb.SpeakChunk) -> bool:
    """A media fragment (not the init segment): what time to first fragment waits for."""
    return chunk.WhichOneof("kind") == "media" and not chunk.media.init_segment and bool(chunk.media.data)


async def until_fragment(
    chunks: AsyncIterator[gpb.SpeakChunk], start: float, probe: Callable[[], T]
) -> tuple[float, T]:
    """Reads ``chunks`` to the first fragment: (seconds since ``start``, ``probe()`` at that moment)."""
    async for chunk in chunks:
        if is_fragment(chunk):
            return time.perf_counter() - start, probe()
    raise RuntimeError("the stream ended without a media fragment")


async def consume(chunks: AsyncIterable[gpb.SpeakChunk], start: float) -> RequestResult:
    """Reads a Speak stream to its end; ``start`` is the ``perf_counter()`` of the call."""
    ttff = 0.0
    summary = gpb.SpeakSummary()
    async for chunk in chunks:
        if is_fragment(chunk):
            ttff = ttff or time.perf_counter() - start
        elif chunk.WhichOneof("kind") == "summary":
            summary = chunk.summary
    total = time.perf_counter() - start
    return RequestResult(ttff, total, summary.audio_seconds, summary.frames, summary)


class GrpcSpeaker:
    """A gateway over gRPC (the mesh, started here or already running)."""

    def __init__(self, target: str) -> None:
        from talkmesh.client import TalkmeshClient

        self.client = TalkmeshClient(target)

    async def speak(self, request: gpb.SpeakRequest) -> RequestResult:
        start = time.perf_counter()
        return await consume(self.client.speak(request), start)

    async def first_fragment(self, request: gpb.SpeakRequest, probe: Callable[[], T]) -> tuple[float, T]:
        start = time.perf_counter()
        call: Any = self.client.speak(request)
        try:
            return await until_fragment(call, start, probe)
        finally:
            call.cancel()

    async def close(self) -> None:
        await self.client.close()


class InProcessSpeaker:
    """The same five stages in this process: servicers called directly, no gRPC, no network."""

    def __init__(self, servicer: Any, services: Mapping[str, Any]) -> None:
        self.servicer = servicer
        self.services = dict(services)

    @classmethod
    async def start(cls, env: Mapping[str, str]) -> InProcessSpeaker:
        from services.encoder.render import LocalFrameSource
        from services.gateway.inprocess import InProcessDownstreams
        from services.gateway.server import GatewayServicer
        from talkmesh.common.inprocess import HandlerRecorder
        from talkmesh.common.registry import spec, start_order
        from talkmesh.common.telemetry import Telemetry

        services: dict[str, Any] = {}
        try:
            for s in start_order():  # dependencies first: the encoder pulls frames from the renderer
                if s.name == "gateway" or s.protocol != "grpc":  # the stages only (no web edge)
                    continue
                main = importlib.import_module(s.main_module)
                extra: dict[str, Any] = {}
                if s.name == "encoder":  # the renderer's Render handler, called in-process
                    render = HandlerRecorder([services["renderer"]]).behavior("talkmesh.v1.Renderer/Render")
                    extra["frame_source"] = LocalFrameSource(render)
                svc = main.create_service(main.load_config(None, env=env), Telemetry(s.name), **extra)
                await svc.start()
                services[s.name] = svc
        except BaseException:
            for svc in services.values():
                await svc.stop()
            raise
        gateway = importlib.import_module(spec("gateway").main_module)
        config = gateway.load_config(None, env=env)
        return cls(GatewayServicer(config, Telemetry("gateway"), InProcessDownstreams(services)), services)

    async def speak(self, request: gpb.SpeakRequest) -> RequestResult:
        from talkmesh.common.inprocess import InProcessContext

        start = time.perf_counter()
        return await consume(self.servicer.Speak(request, InProcessContext()), start)

    async def first_fragment(self, request: gpb.SpeakRequest, probe: Callable[[], T]) -> tuple[float, T]:
        from talkmesh.common.inprocess import InProcessContext

        start = time.perf_counter()
        chunks = self.servicer.Speak(request, InProcessContext())
        try:
            return await until_fragment(chunks, start, probe)
        finally:
            await chunks.aclose()

    async def close(self) -> None:
        for svc in self.services.values():
            await svc.stop()
