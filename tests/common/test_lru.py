"""The bounded map the services remember facts in (talkmesh/common/lru.py)."""

from __future__ import annotations

import pytest

from talkmesh.common.lru import Lru


def test_keeps_the_most_recently_used_entries() -> None:
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    lru.put("a", 3)  # stored again: now the most recent
    lru.put("c", 4)  # forgets b, the least recently used
    assert len(lru) == 2
    assert "b" not in lru and lru.get("b") is None
    assert lru.get("a") == 3  # read: now the most recent
    lru.put("d", 5)  # forgets c, not a
    assert lru.get("a") == 3 and lru.get("d") == 5 and "c" not in lru


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="capacity"):
        Lru(0)
