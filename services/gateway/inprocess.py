"""The four stages called in-process (no gRPC, same servicer code): the benchmark's yardstick.

Each service registers its servicers on a recorder instead of a gRPC server; the recorder keeps the
method handlers the generated code hands over, and the gateway's pipeline calls them directly with
``InProcessContext``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from types import SimpleNamespace
from typing import Any

from services.gateway.downstream import Downstreams, Stream
from talkmesh.common.inprocess import InProcessContext
from talkmesh.common.server import Service


class _Recorder:
    """Stands in for grpc.aio.Server in ``Service.register``."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}
        self.generic: list[Any] = []

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        for method, handler in handlers.items():
            self.handlers[f"{service}/{method}"] = handler

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def lookup(self, method: str) -> Any:
        if method in self.handlers:
            return self.handlers[method]
        details = SimpleNamespace(method=f"/{method}", invocation_metadata=())
        for generic in self.generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        raise KeyError(f"no in-process handler for {method}")


class _GenStream(Stream):
    def __init__(self, gen: AsyncIterator[Any]) -> None:
        self.gen = gen

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.gen

    async def cancel(self) -> None:
        aclose = getattr(self.gen, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(RuntimeError):
                await aclose()


class InProcessDownstreams(Downstreams):
    def __init__(self, services: Mapping[str, Service]) -> None:
        rec = _Recorder()
        for svc in services.values():
            svc.register(rec)  # type: ignore[arg-type]
        self.recorder = rec

    def _call(self, method: str, request: Any, timeout: float | None) -> Stream:
        handler = self.recorder.lookup(method)
        behavior = handler.unary_stream if handler.unary_stream is not None else handler.stream_stream
        return _GenStream(behavior(request, InProcessContext(timeout)))

    def synthesize(self, request: Any, timeout: float | None) -> Stream:
        return self._call("talkmesh.v1.TTS/Synthesize", request, timeout)

    def synthesize_stream(self, requests: AsyncIterable[Any], timeout: float | None) -> Stream:
        return self._call("talkmesh.v1.TTS/SynthesizeStream", aiter(requests), timeout)

    def extract(self, requests: AsyncIterable[Any], timeout: float | None) -> Stream:
        return self._call("talkmesh.v1.AudioFeatures/Extract", aiter(requests), timeout)

    def render(self, requests: AsyncIterable[Any], timeout: float | None) -> Stream:
        return self._call("talkmesh.v1.Renderer/Render", aiter(requests), timeout)

    def encode(self, requests: AsyncIterable[Any], timeout: float | None) -> Stream:
        return self._call("talkmesh.v1.Encoder/Encode", aiter(requests), timeout)
