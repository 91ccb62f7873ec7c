"""An in-memory LRU of finished utterances, bounded by entry count and bytes."""

from __future__ import annotations

from collections.abc import Hashable

from services.tts.stream import SegmentRecord
from talkmesh.common.lru import Lru


def _size(segments: list[SegmentRecord]) -> int:
    return sum(s.samples.nbytes + 32 * len(s.phonemes) for s in segments)


class UtteranceCache:
    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._items: Lru[Hashable, list[SegmentRecord]] = Lru(
            max(1, max_entries), max_weight=max(0, max_bytes), weigh=_size
        )

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.max_bytes > 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._items.weight

    def get(self, key: Hashable) -> list[SegmentRecord] | None:
        return self._items.get(key)

    def put(self, key: Hashable, segments: list[SegmentRecord]) -> None:
        if self.enabled:
            self._items.put(key, segments)
