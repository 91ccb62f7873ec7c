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
    alone weighs more than ``max_weight`` is not stored. ``on_drop(key, value)`` hears of every
    value the map lets go of by itself (forgotten for room, replaced by ``put``, or stale behind a
    value too heavy to store), not of ``pop``: what holds a resource releases it there. Not
    thread-safe, reads included (a get reorders): one event loop, or a lock."""

    def __init__(
        self,
        capacity: int,
        *,
        max_weight: int | None = None,
        weigh: Callable[[V], int] | None = None,
        on_drop: Callable[[K, V], object] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        if (max_weight is None) != (weigh is None):
            raise ValueError("max_weight and weigh go together")
        self.capacity = capacity
        self.max_weight = max_weight
        self._weigh = weigh
        self._on_drop = on_drop
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
        old = self._items.pop(key, None)
        if old is not None:  # replaced, or stale behind a value too heavy to store
            self.weight -= old[0]
            self._dropped(key, old[1])
        if self.max_weight is not None and weight > self.max_weight:
            return False
        self._items[key] = (weight, value)
        self.weight += weight
        while len(self._items) > self.capacity or (self.max_weight is not None and self.weight > self.max_weight):
            evicted, (evicted_weight, evicted_value) = self._items.popitem(last=False)
            self.weight -= evicted_weight
            self._dropped(evicted, evicted_value)
        return True

    def _dropped(self, key: K, value: V) -> None:
        if self._on_drop is not None:
            self._on_drop(key, value)

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
