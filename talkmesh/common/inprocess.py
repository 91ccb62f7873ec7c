"""Calling a servicer's handlers directly, without gRPC (the benchmark's in-process yardstick).

Handlers only use ``context.time_remaining()``, ``context.invocation_metadata()``,
``context.cancelled()`` and ``context.set_trailing_metadata()``; this context provides exactly those.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import Any


class InProcessContext:
    def __init__(self, deadline_seconds: float | None = None, metadata: tuple = ()) -> None:
        self._deadline = None if deadline_seconds is None else time.monotonic() + deadline_seconds
        self._metadata = metadata
        #: what the handler set with ``set_trailing_metadata`` (TTS's warnings)
        self.trailing_metadata: tuple = ()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def cancelled(self) -> bool:
        return False

    def peer(self) -> str:
        return "inprocess"

    def set_trailing_metadata(self, metadata: tuple) -> None:
        self.trailing_metadata = tuple(metadata)


class HandlerRecorder:
    """Stands in for ``grpc.aio.Server`` in ``Service.register``: keeps the method handlers, so a
    service's handlers can be called in-process (``handler(method)``)."""

    def __init__(self, services: Iterable[Any] = ()) -> None:
        self.handlers: dict[str, Any] = {}
        self.generic: list[Any] = []
        for service in services:
            service.register(self)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        for method, handler in handlers.items():
            self.handlers[f"{service}/{method}"] = handler

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def lookup(self, method: str) -> Any:
        """The RpcMethodHandler of ``method`` ("talkmesh.v1.Renderer/Render")."""
        if method in self.handlers:
            return self.handlers[method]
        details = SimpleNamespace(method=f"/{method}", invocation_metadata=())
        for generic in self.generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        raise KeyError(f"no in-process handler for {method}")

    def behavior(self, method: str) -> Callable[[Any, Any], Any]:
        """The handler function of a streaming-response method: ``behavior(request, context)``."""
        handler = self.lookup(method)
        return handler.unary_stream if handler.unary_stream is not None else handler.stream_stream  # type: ignore[no-any-return]
