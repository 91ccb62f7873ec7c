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


def test_a_weight_bound_forgets_the_least_recently_used_and_refuses_what_never_fits():
    lru: Lru[str, bytes] = Lru(10, max_weight=10, weigh=len)
    assert lru.put("a", b"1234") and lru.put("b", b"1234")
    assert lru.get("a") == b"1234"  # a is now the most recent
    assert lru.put("c", b"1234")  # 12 > 10: b goes
    assert "b" not in lru and "a" in lru and "c" in lru and lru.weight == 8
    assert lru.put("a", b"12")  # replacing an entry re-weighs it
    assert lru.weight == 6
    assert not lru.put("big", b"x" * 11)  # alone over the bound: not stored, nothing evicted
    assert len(lru) == 2 and lru.weight == 6
    assert not lru.put("a", b"y" * 11)  # a key whose new value cannot be kept loses its old one too
    assert "a" not in lru and lru.weight == 4
    with pytest.raises(ValueError):
        Lru(3, max_weight=10)


def test_on_drop_hears_every_value_let_go_of_by_the_map_but_not_pops() -> None:
    dropped: list[tuple[str, bytes]] = []
    lru: Lru[str, bytes] = Lru(2, max_weight=10, weigh=len, on_drop=lambda k, v: dropped.append((k, v)))
    lru.put("a", b"1")
    lru.put("b", b"2")
    lru.put("c", b"3")  # capacity: a goes
    lru.put("b", b"22")  # replaced: the old value goes
    lru.put("d", b"4" * 9)  # weight: c, then b go
    assert lru.pop("d") == b"4" * 9  # taken back by its owner: not dropped
    lru.put("e", b"5")
    assert not lru.put("e", b"x" * 11)  # stale behind a value too heavy to store
    assert dropped == [("a", b"1"), ("b", b"2"), ("c", b"3"), ("b", b"22"), ("e", b"5")]
