"""Calling a servicer's handlers directly, without gRPC (the benchmark's in-process yardstick).

Handlers only use ``context.time_remaining()``, ``context.invocation_metadata()`` and
``context.cancelled()``; this context provides exactly those.
"""

from __future__ import annotations

import time


class InProcessContext:
    def __init__(self, deadline_seconds: float | None = None, metadata: tuple = ()) -> None:
        self._deadline = None if deadline_seconds is None else time.monotonic() + deadline_seconds
        self._metadata = metadata

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def invocation_metadata(self) -> tuple:
        return self._metadata

    def cancelled(self) -> bool:
        return False

    def peer(self) -> str:
        return "inprocess"
