"""Encoder sessions opened before a stream asks for them.

Opening an encoder (x264, the AAC encoder and the fMP4 muxer) takes 3-5 ms in PyAV calls that
hold the GIL: a stream that opens its own stalls the encoder's event loop just when frame 0's
features have to be forwarded to the renderer. ``SpareSessions`` opens one in the background once
a stream's first fragment is out, for the same parameters, and the next stream of those
parameters takes it instead. A fresh encoder has no state a later stream could notice: no frame
went in, its timestamps and fragment numbers start at 0, its init segment holds no time.

``encoder.spare_sessions`` bounds how many are kept (0 turns it off). When they are all held, a
new one replaces the oldest only if that one waited ``STALE_SECONDS`` untaken: two sizes in turn
with one spare leave the first size its spare instead of each evicting the other's (an open and a
close per stream, and no hits). Backends whose sessions are a scarce budget (NVENC) keep none.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable

from services.encoder.session import EncodeSession, StreamParams
from talkmesh.common.aio import TaskSet

log = logging.getLogger(__name__)

#: A held spare older than this may make way for one of other parameters.
STALE_SECONDS = 5.0


class SpareSessions:
    def __init__(
        self,
        keep: int,
        make: Callable[[StreamParams], EncodeSession],
        open_session: Callable[[EncodeSession], Awaitable[bytes]],
        stale_seconds: float = STALE_SECONDS,
    ) -> None:
        """``make`` builds a session, ``open_session`` opens it and returns its init segment."""
        self.keep = keep
        self.stale_seconds = stale_seconds
        self._make = make
        self._open = open_session
        # params -> (session, init segment, when it was opened), oldest first
        self._held: collections.OrderedDict[StreamParams, tuple[EncodeSession, bytes, float]] = (
            collections.OrderedDict()
        )
        self._opening: set[StreamParams] = set()
        self._tasks = TaskSet("encoder-spares")
        self._closed = False

    def __len__(self) -> int:
        return len(self._held)

    def held(self) -> list[StreamParams]:
        """The parameters of the spares held, oldest first."""
        return list(self._held)

    def take(self, params: StreamParams) -> tuple[EncodeSession, bytes] | None:
        """An opened session for ``params`` and its init segment, or None (no spare of those)."""
        spare = self._held.pop(params, None)
        return None if spare is None else (spare[0], spare[1])

    def replenish(self, params: StreamParams) -> None:
        """Opens a spare for ``params`` in the background, unless one is held or opening, or every
        place is taken by a spare that has not waited ``stale_seconds`` yet."""
        if self.keep <= 0 or self._closed or params in self._held or params in self._opening:
            return
        if len(self._held) + len(self._opening) >= self.keep:
            oldest = next(iter(self._held.values()), None)
            if oldest is None or time.monotonic() - oldest[2] < self.stale_seconds:
                return
        self._opening.add(params)
        self._tasks.spawn(self._open_spare(params), name=f"open-spare-{params.width}x{params.height}")

    async def _open_spare(self, params: StreamParams) -> None:
        session: EncodeSession | None = None
        try:
            session = self._make(params)
            init = await self._open(session)
        except asyncio.CancelledError:
            if session is not None:
                await asyncio.to_thread(session.close)
            raise
        except Exception as exc:  # the next stream opens its own, and reports the error if it has one
            log.info("opening a spare encoder session failed: %s", exc)
            if session is not None:
                await asyncio.to_thread(session.close)
            return
        finally:
            self._opening.discard(params)
        self._held[params] = (session, init, time.monotonic())
        while len(self._held) > self.keep:  # the oldest goes
            _, (old, _init, _at) = self._held.popitem(last=False)
            await asyncio.to_thread(old.close)

    async def aclose(self) -> None:
        """Stops the openings under way and closes the spares."""
        self._closed = True
        await self._tasks.aclose()
        held = [spare[0] for spare in self._held.values()]
        self._held.clear()
        for session in held:
            await asyncio.to_thread(session.close)
