"""A configuration file a running service reads again when it changes (a Kubernetes Secret or
ConfigMap is updated in the pod's volume without a restart)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from talkmesh.common.client_tls import file_stamp

log = logging.getLogger(__name__)

T = TypeVar("T")


class WatchedFile(Generic[T]):
    """``parse(path)`` of a file, parsed again when its modification time or size changes (looked
    at, at most, every ``check_seconds``, when ``get`` is called). At start a file that does not
    parse raises (the service does not start); later, a change that does not parse keeps what was
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
        self.what = what
        self._parse = parse
        self._check_seconds = check_seconds
        self._clock = clock
        # stamped before it is read: an edit landing in between is read again at the next check
        try:
            stamp = file_stamp([path])
        except OSError:
            stamp = ()  # parse names the problem (a missing file too)
        self.value = parse(path)
        self._stamp = stamp
        self._checked = clock()
        #: how many times the file was loaded (1 at start)
        self.loads = 1

    def get(self) -> T:
        now = self._clock()
        if now - self._checked >= self._check_seconds:
            self._checked = now
            self._reload()
        return self.value

    def _reload(self) -> None:
        try:
            stamp = file_stamp([self.path])
            if stamp == self._stamp:
                return
            value = self._parse(self.path)
        except Exception as exc:  # whatever a bad edit makes the parser raise, the loaded value stays
            log.warning("%s %s not reloaded, keeping what was loaded: %s", self.what, self.path, exc)
            return
        self.value, self._stamp = value, stamp
        self.loads += 1
        log.info("%s %s loaded again", self.what, self.path)
