"""An in-memory LRU of finished utterances, bounded by entry count and bytes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from services.tts.stream import SegmentRecord


class UtteranceCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[int, list[SegmentRecord]]] = OrderedDict()
        self.bytes = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> list[SegmentRecord] | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: Hashable, segments: list[SegmentRecord]) -> None:
        if not self.enabled:
            return
        size = sum(s.samples.nbytes + 32 * len(s.phonemes) for s in segments)
        if size > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[0]
        self._items[key] = (size, segments)
        self.bytes += size
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            _, (evicted, _segs) = self._items.popitem(last=False)
            self.bytes -= evicted
