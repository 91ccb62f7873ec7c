"""A bounded, content-addressed cache of Whisper-encoder blocks.

The encoder is the only expensive step (the mel front ends run hundreds of times faster than real
time, hashing their input would cost about as much as computing them). A block's hidden states depend
only on the block's audio clip, where the clip sits in the encoder window and where the block sits
in the clip, so they are keyed by a hash of exactly that: a repeated phrase (the same greeting, a
retried utterance, at the same place in its 30 s segment) skips the encoder.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable

import numpy as np

from talkmesh.common.lru import Lru


class BlockCache:
    """LRU bounded by bytes. Thread-safe (extractors run in worker threads)."""

    def __init__(self, max_bytes: int, namespace: str, on_lookup: Callable[[bool], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self.namespace = namespace
        self._items: Lru[str, np.ndarray] = Lru(
            max(1, max_bytes), max_weight=max_bytes, weigh=lambda a: int(a.nbytes)
        )
        self._lock = threading.Lock()
        self._on_lookup = on_lookup

    def key(self, clip: np.ndarray, position: int, offset: int, count: int, extra: tuple[int, ...] = ()) -> str:
        """``clip`` sits at Whisper frame ``position`` of its encoder window (the encoder's positional
        embedding makes the same audio at another position a different result); the block is
        ``count`` frames from ``offset`` into the clip; ``extra``: whatever else shaped the window."""
        h = hashlib.sha256(self.namespace.encode())
        h.update(np.asarray([position, offset, count, len(clip), *extra], dtype="<i8").tobytes())
        h.update(np.ascontiguousarray(clip, dtype="<f4").tobytes())
        return h.hexdigest()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            value = self._items.get(key)
        if self._on_lookup is not None:
            self._on_lookup(value is not None)
        return value

    @property
    def bytes(self) -> int:
        return self._items.weight

    def put(self, key: str, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        value = value.copy()
        value.setflags(write=False)
        with self._lock:
            self._items.put(key, value)

    def __len__(self) -> int:
        return len(self._items)
