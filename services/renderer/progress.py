"""Progress reported from a worker thread and streamed on the event loop (avatar registration).

The worker calls ``report(stage, done, total)`` as often as it likes; of each stage only the
latest state is kept, so a slow reader gets fewer, current messages instead of a growing backlog,
and still sees where every stage ended (its last state) before the next one starts.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import Any

from talkmesh.common.aio import cancel_and_wait

State = tuple[str, int, int]


class LatestProgress:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: collections.deque[State] = collections.deque()
        self._changed = asyncio.Event()

    def report(self, stage: str, done: int, total: int) -> None:
        """Thread-safe; a no-op once the loop is gone (the reader has left)."""
        try:
            self._loop.call_soon_threadsafe(self._set, (stage, done, total))
        except RuntimeError:
            pass

    def _set(self, state: State) -> None:
        if self._pending and self._pending[-1][0] == state[0]:
            self._pending[-1] = state  # the same stage moved on: only its latest state matters
        else:
            self._pending.append(state)
        self._changed.set()

    def _take(self) -> list[State]:
        states = list(self._pending)
        self._pending.clear()
        self._changed.clear()
        return states

    async def updates(self, job: asyncio.Future[Any]) -> AsyncIterator[State]:
        """New states until ``job`` is done (the last ones included); ``job``'s error is not raised here."""
        while True:
            waiter = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait({job, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                await cancel_and_wait(waiter)
            for state in self._take():
                yield state
            if job.done():
                await asyncio.sleep(0)  # reports queued by the thread just before it finished
                for state in self._take():
                    yield state
                return
