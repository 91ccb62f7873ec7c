"""The stages called in-process (no gRPC, same servicer code): the benchmark's yardstick.

Each service registers its servicers on a ``HandlerRecorder`` instead of a gRPC server, and the
gateway's pipeline calls the recorded handlers directly with ``InProcessContext``. (The encoder
pulls its frames from the renderer the same way: give it a ``LocalFrameSource`` of the renderer's
Render handler.)
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping
from typing import Any

from services.gateway.downstream import Downstreams
from talkmesh.common.calls import LocalStream, Stream
from talkmesh.common.inprocess import HandlerRecorder, InProcessContext
from talkmesh.common.server import Service


class InProcessDownstreams(Downstreams):
    def __init__(self, services: Mapping[str, Service]) -> None:
        self.recorder = HandlerRecorder(services.values())

    def _call(self, method: str, request: Any, timeout: float | None) -> Stream:
        context = InProcessContext(timeout)
        return LocalStream(self.recorder.behavior(method)(request, context), context)

    def synthesize(self, request: Any, timeout: float | None) -> Stream:
        return self._call("talkmesh.v1.TTS/Synthesize", request, timeout)

    def synthesize_stream(self, requests: AsyncIterable[Any], timeout: float | None) -> Stream:
        return self._call("talkmesh.v1.TTS/SynthesizeStream", aiter(requests), timeout)

    def extract(self, requests: AsyncIterable[Any], timeout: float | None) -> Stream:
        return self._call("talkmesh.v1.AudioFeatures/Extract", aiter(requests), timeout)

    def encode(self, requests: AsyncIterable[Any], timeout: float | None) -> Stream:
        return self._call("talkmesh.v1.Encoder/Encode", aiter(requests), timeout)

    def live(self, requests: AsyncIterable[Any], timeout: float | None) -> Stream:
        return self._call("talkmesh.v1.Encoder/Live", aiter(requests), timeout)

    async def get_avatar(self, request: Any, timeout: float | None) -> Any:
        handler = self.recorder.lookup("talkmesh.v1.Renderer/GetAvatar")
        return await handler.unary_unary(request, InProcessContext(timeout))

    async def list_voices(self, request: Any, timeout: float | None) -> Any:
        handler = self.recorder.lookup("talkmesh.v1.TTS/ListVoices")
        return await handler.unary_unary(request, InProcessContext(timeout))
