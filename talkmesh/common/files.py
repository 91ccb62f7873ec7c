"""Files a running process reads again when they change (a Kubernetes Secret or ConfigMap is
updated in the pod's volume without a restart): the API keys, the web edge's token secrets, and the
TLS certificates of servers (``talkmesh.common.tls``) and client channels
(``talkmesh.common.client_tls``), all through ``WatchedFiles``. Shipped in the client-only wheel
(clients/python) for the client channels: it needs nothing beyond the standard library.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The files' modification times (ns) and sizes, one pair a file, in the order of their paths.
Stamp = tuple[tuple[int, int], ...]


def file_stamp(paths: Sequence[str]) -> Stamp:
    """The files' modification times and sizes (what a reload compares)."""
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_mtime_ns, st.st_size))
    return tuple(out)


class Inconsistent(Exception):
    """What a loader raises when the files read well but do not belong together yet (a rotation
    half done: a new key next to the old certificate). After start the loaded value stays, as
    for any error of a reload, and the files are loaded again at the next check."""


class WatchedFiles(Generic[T]):
    """``load(loaded)`` of some files, loaded again when the modification time or size of any of
    them changes (``loaded``: the value loaded so far, None at start).

    - The files are looked at, at most, every ``check_seconds`` (0: at every ``get``/``refresh``),
      and nothing is loaded while their stamp is the one of the loaded value.
    - They are stamped *before* they are read: an edit landing during a read makes another stamp,
      so it is read at the next check.
    - At start whatever ``load`` raises propagates (the process does not start); a file that cannot
      be stamped is left for ``load`` to name.
    - Later a change that does not load (any exception: a half-written file, a bad edit, files
      that are ``Inconsistent`` yet) keeps the loaded value, is logged as a warning, and is
      tried again at each check until it loads.
    - ``on_change(old, new)`` is called when a new value has been taken.
    - Checks are serialised by a lock: ``refresh`` may be called from several threads (gRPC asks
      for the server's certificates from its handshake threads); ``load`` and ``on_change`` run
      under it and must not call back into this object.
    """

    def __init__(
        self,
        paths: Sequence[str],
        load: Callable[[T | None], T],
        *,
        check_seconds: float = 2.0,
        what: str = "files",
        on_change: Callable[[T, T], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = list(paths)
        #: how the files are named in the log
        self.what = what
        #: at most how often the files are looked at (may be changed at any time)
        self.check_seconds = check_seconds
        self._load = load
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        try:
            stamp = file_stamp(self.paths)
        except OSError:
            stamp = ()  # load names the problem (a missing file too); () is no files' stamp
        self.value: T = load(None)
        self._stamp = stamp
        self._checked = clock()
        #: how many times the files were loaded (1 at start)
        self.loads = 1

    def get(self) -> T:
        """The loaded value, loaded again first when the files are due for a check and changed."""
        self.refresh()
        return self.value

    def refresh(self) -> T | None:
        """The newly loaded value when the files were due for a check, changed and loaded; else
        None (what was loaded stays)."""
        with self._lock:
            now = self._clock()
            if now - self._checked < self.check_seconds:
                return None
            self._checked = now
            try:
                stamp = file_stamp(self.paths)
                if stamp == self._stamp:
                    return None
                value = self._load(self.value)
            except Exception as exc:  # whatever a bad edit makes the loader raise, the loaded value stays
                log.warning("%s not reloaded, keeping what was loaded: %s", self.what, exc)
                return None
            old, self.value, self._stamp = self.value, value, stamp
            self.loads += 1
            log.info("%s loaded again", self.what)
            if self._on_change is not None:
                self._on_change(old, value)
            return value


class WatchedFile(WatchedFiles[T]):
    """``parse(path)`` of one file, parsed again when it changes (``WatchedFiles``: looked at, at
    most, every ``check_seconds``, when ``get`` is called). At start a file that does not parse
    raises (the service does not start); later, a change that does not parse keeps what was
    loaded and is logged (a half-written file, a bad edit)."""

    def __init__(
        self,
        path: str,
        parse: Callable[[str], T],
        *,
        check_seconds: float = 2.0,
        what: str = "file",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        super().__init__(
            [path], lambda _loaded: parse(path), check_seconds=check_seconds, what=f"{what} {path}", clock=clock
        )
