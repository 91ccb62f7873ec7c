"""A bounded map that keeps the most recently used entries: what a service remembers from one
stream for the next (an avatar's frame size at the encoder, a session's idle tick and an avatar's
moved idle photos at the renderer, finished utterances at TTS, encoder blocks at the feature
stage). A key seen once by a client must not grow memory for ever."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """At most ``capacity`` entries, and with ``weigh`` at most ``max_weight`` in total (bytes,
    say); storing one beyond that forgets the least recently used (got or stored). An entry that
    alone weighs more than ``max_weight`` is not stored. Not thread-safe, reads included (a get
    reorders): one event loop, or a lock."""

    def __init__(
        self, capacity: int, *, max_weight: int | None = None, weigh: Callable[[V], int] | None = None
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if (max_weight is None) != (weigh is None):
            raise ValueError("max_weight and weigh go together")
        self.capacity = capacity
        self.max_weight = max_weight
        self._weigh = weigh
        #: the total weight of the entries (0 without ``weigh``)
        self.weight = 0
        self._items: collections.OrderedDict[K, tuple[int, V]] = collections.OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: K, value: V) -> bool:
        """Stores ``value``; False when it alone weighs more than ``max_weight`` (not stored)."""
        weight = self._weigh(value) if self._weigh is not None else 0
        if self.max_weight is not None and weight > self.max_weight:
            self.pop(key)  # the key's older value would be stale
            return False
        old = self._items.pop(key, None)
        if old is not None:
            self.weight -= old[0]
        self._items[key] = (weight, value)
        self.weight += weight
        while len(self._items) > self.capacity or (self.max_weight is not None and self.weight > self.max_weight):
            evicted, _ = self._items.popitem(last=False)[1]
            self.weight -= evicted
        return True

    def pop(self, key: K) -> V | None:
        """Forgets ``key``; its value, or None."""
        item = self._items.pop(key, None)
        if item is None:
            return None
        self.weight -= item[0]
        return item[1]

    def keys(self) -> list[K]:
        """The keys, least recently used first (a copy)."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
