"""Progress reported from a worker thread and streamed on the event loop (avatar registration).

The worker calls ``report(stage, done, total)`` as often as it likes; only the latest state is
kept, so a slow reader gets fewer, current messages instead of a growing backlog.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from talkmesh.common.aio import cancel_and_wait

State = tuple[str, int, int]


class LatestProgress:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._latest: State | None = None
        self._changed = asyncio.Event()

    def report(self, stage: str, done: int, total: int) -> None:
        """Thread-safe; a no-op once the loop is gone (the reader has left)."""
        try:
            self._loop.call_soon_threadsafe(self._set, (stage, done, total))
        except RuntimeError:
            pass

    def _set(self, state: State) -> None:
        self._latest = state
        self._changed.set()

    async def updates(self, job: asyncio.Future[Any]) -> AsyncIterator[State]:
        """Each new state until ``job`` is done (the last state included); ``job``'s error is not raised here."""
        while True:
            waiter = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({job, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(waiter)
            if self._changed.is_set() and self._latest is not None:
                self._changed.clear()
                yield self._latest
            if job.done():
                await asyncio.sleep(0)  # reports queued by the thread just before it finished
                if self._changed.is_set() and self._latest is not None:
                    self._changed.clear()
                    yield self._latest
                return
