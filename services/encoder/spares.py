"""Encoder sessions opened before a stream asks for them.

Opening an encoder (x264, the AAC encoder and the fMP4 muxer) takes 3-5 ms in PyAV calls that
hold the GIL: a stream that opens its own stalls the encoder's event loop just when frame 0's
features have to be forwarded to the renderer. ``SpareSessions`` opens one in the background
after a stream's first fragment, for the same parameters, and the next stream of those parameters
takes it instead (``encoder.spare_sessions`` bounds how many are kept, least recently used first
out; 0 turns it off). A fresh encoder has no state a later stream could notice: no frame went in.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable

from services.encoder.session import EncodeSession, StreamParams
from talkmesh.common.aio import TaskSet

log = logging.getLogger(__name__)


class SpareSessions:
    def __init__(
        self,
        keep: int,
        make: Callable[[StreamParams], EncodeSession],
        open_session: Callable[[EncodeSession], Awaitable[bytes]],
    ) -> None:
        """``make`` builds a session, ``open_session`` opens it and returns its init segment."""
        self.keep = keep
        self._make = make
        self._open = open_session
        self._held: collections.OrderedDict[StreamParams, tuple[EncodeSession, bytes]] = collections.OrderedDict()
        self._opening: set[StreamParams] = set()
        self._tasks = TaskSet("encoder-spares")
        self._closed = False

    def __len__(self) -> int:
        return len(self._held)

    def take(self, params: StreamParams) -> tuple[EncodeSession, bytes] | None:
        """An opened session for ``params`` and its init segment, or None (no spare of those)."""
        return self._held.pop(params, None)

    def replenish(self, params: StreamParams) -> None:
        """Opens a spare for ``params`` in the background, unless one is held or opening."""
        if self.keep <= 0 or self._closed or params in self._held or params in self._opening:
            return
        self._opening.add(params)
        self._tasks.spawn(self._open_spare(params), name=f"open-spare-{params.width}x{params.height}")

    async def _open_spare(self, params: StreamParams) -> None:
        session = self._make(params)
        try:
            init = await self._open(session)
        except asyncio.CancelledError:
            await asyncio.to_thread(session.close)
            raise
        except Exception as exc:  # the next stream opens its own, and reports the error if it has one
            log.info("opening a spare encoder session failed: %s", exc)
            await asyncio.to_thread(session.close)
            return
        finally:
            self._opening.discard(params)
        self._held[params] = (session, init)
        self._held.move_to_end(params)
        while len(self._held) > self.keep:
            _, (old, _init) = self._held.popitem(last=False)
            await asyncio.to_thread(old.close)

    async def aclose(self) -> None:
        """Stops the openings under way and closes the spares."""
        self._closed = True
        await self._tasks.aclose()
        held = [session for session, _init in self._held.values()]
        self._held.clear()
        for session in held:
            await asyncio.to_thread(session.close)
