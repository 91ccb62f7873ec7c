"""One avatar store shared by several replicas: stores (and processes) on one directory, as renderer
pods on one ReadWriteMany volume (docs/DEPLOY.md, "Avatar storage")."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from importlib import resources
from pathlib import Path

import cv2
import pytest

from services.renderer.avatars import store as store_module
from services.renderer.avatars.store import AvatarStore
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from talkmesh.common.errors import FailedPrecondition, NotFound
from talkmesh.common.telemetry import Telemetry
from tests.media import portrait

PORTRAIT = resources.files("services.renderer").joinpath("assets/default_avatar.png").read_bytes()


def _store(root: Path) -> AvatarStore:
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(root), face_models="haar"))
    return AvatarStore(cfg.avatars, {"viseme": VisemeBackend(cfg, Telemetry("renderer"))})


def _variant(i: int) -> bytes:
    """A different file (so a different content id) of the same small portrait."""
    img = portrait()
    img = cv2.resize(img, (256, 256))
    img[0, 0] = (i % 256, i // 256, 7)
    ok, png = cv2.imencode(".png", img)
    assert ok
    return png.tobytes()


def _expire(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """Moves the stores' clock on by ``seconds`` (what they remember gets old)."""
    real = time.monotonic
    monkeypatch.setattr(store_module.time, "monotonic", lambda: real() + seconds)


def test_a_concurrent_registration_never_replaces_a_complete_entry(tmp_path):
    a, b = _store(tmp_path), _store(tmp_path)
    avatar, _ = a.register(_variant(1), "p.png")
    entry = tmp_path / avatar.id
    inode = (entry / "meta.json").stat().st_ino
    # B built the same file at the same time (it looked before A's entry was in place) and now
    # installs its build: A's complete entry stays, B's temporary directory goes.
    whole, framed = b._content_ids(_variant(1), store_module.FaceChoice())
    made, fresh = b._precompute(
        whole, framed, "as_is", _variant(1), "p.png", "p", store_module.FaceChoice(), lambda *_: None
    )
    assert fresh is not None and made == fresh.id == avatar.id and fresh.frames.shape == avatar.frames.shape
    assert (entry / "meta.json").stat().st_ino == inode, "the complete entry was replaced"
    assert not list(tmp_path.glob(".tmp-*"))
    assert b.get(avatar.id).frames.shape == avatar.frames.shape
    # A leftover directory without meta.json (an older layout's half-written entry) is replaced.
    other = a.content_id(_variant(2))
    (tmp_path / other).mkdir()
    (tmp_path / other / "frames.pngs").write_bytes(b"half")
    made, cached = b.register(_variant(2), "p.png")
    assert not cached and a.get(other).frames.shape == made.frames.shape


def test_an_alias_registered_on_one_replica_resolves_and_is_protected_on_another(tmp_path):
    a, b = _store(tmp_path), _store(tmp_path)
    avatar, _ = a.register(_variant(3), "p.png", alias="default")
    assert a.resolve("default") == avatar.id
    assert b.get("default").id == avatar.id
    assert b.resolve("") == avatar.id
    assert b.is_protected(avatar.id) and b.is_protected("default")
    with pytest.raises(FailedPrecondition):
        b.delete(avatar.id)
    assert c_resolves(tmp_path, avatar.id)


def c_resolves(root: Path, avatar_id: str) -> bool:
    c = _store(root)  # a replica started later
    return c.resolve("default") == avatar_id and c.is_protected(avatar_id)


def test_an_alias_changed_on_one_replica_is_seen_within_the_recheck_bound(tmp_path, monkeypatch):
    a, b = _store(tmp_path), _store(tmp_path)
    first, _ = a.register(_variant(4), "p.png", alias="default")
    assert b.resolve("default") == first.id
    second, _ = a.register(_variant(5), "p.png", alias="default")
    _expire(monkeypatch, store_module.RECHECK_SECONDS + 0.1)
    assert b.resolve("default") == second.id


def test_owners_added_on_two_replicas_at_once_are_all_kept_and_enforced(tmp_path):
    a, b = _store(tmp_path), _store(tmp_path)
    avatar, _ = a.register(_variant(6), "p.png")
    names = [f"key{i}" for i in range(40)]
    start = threading.Barrier(2)

    def add(store: AvatarStore, mine: list[str]) -> None:
        start.wait()
        for name in mine:
            store.update_owners(avatar.id, lambda owners, n=name: owners | {n})

    threads = [threading.Thread(target=add, args=(s, names[i::2])) for i, s in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert a.owners(avatar.id) == b.owners(avatar.id) == set(names)
    a.update_owners(avatar.id, lambda owners: owners - {"key0"})
    assert "key0" not in b.owners(avatar.id)


def test_a_delete_on_one_replica_is_seen_by_another(tmp_path, monkeypatch):
    a, b = _store(tmp_path), _store(tmp_path)
    avatar, _ = a.register(_variant(7), "p.png")
    assert b.get(avatar.id).id == avatar.id  # now in B's memory
    assert a.delete(avatar.id)
    assert not b.exists(avatar.id)
    _expire(monkeypatch, store_module.RECHECK_SECONDS + 0.1)
    with pytest.raises(NotFound):
        b.get(avatar.id)
    assert not b.delete(avatar.id)
    assert b.update_owners(avatar.id, lambda owners: owners | {"k"}) == set()


def test_only_stale_temporary_entries_are_removed(tmp_path):
    a = _store(tmp_path)
    building = tmp_path / ".tmp-abc-12345678"  # another replica's build in progress
    building.mkdir()
    (building / "meta.json").write_text("{}")
    crashed = tmp_path / ".tmp-def-87654321"
    crashed.mkdir()
    (crashed / "frames.pngs").write_bytes(b"x")
    old = time.time() - store_module.STALE_TMP_SECONDS - 60
    for p in (crashed / "frames.pngs", crashed):
        os.utime(p, (old, old))
    _store(tmp_path)  # a replica starting
    assert building.is_dir(), "another replica's build in progress was removed"
    # ctime cannot be set back: age is tested with a threshold of a second. An entry written
    # more than that ago goes, one written since stays.
    time.sleep(1.3)
    fresh = tmp_path / ".tmp-ghi-11111111"
    fresh.mkdir()
    (fresh / "meta.json").write_text("{}")
    assert a.sweep_stale(older_than=1.0) == 2
    assert not building.exists() and not crashed.exists() and fresh.is_dir()


def test_a_temporary_entry_is_never_listed_or_loaded(tmp_path):
    a = _store(tmp_path)
    avatar, _ = a.register(_variant(8), "p.png")
    (tmp_path / ".tmp-x-1").mkdir()
    (tmp_path / ".tmp-x-1" / "meta.json").write_bytes((tmp_path / avatar.id / "meta.json").read_bytes())
    (tmp_path / avatar.id / ".viseme.npz.1234abcd.npz").write_bytes(b"")  # a crashed backend write
    assert [(s.id, s.backends) for s in a.list()] == [(avatar.id, ("viseme",))]
    with pytest.raises(NotFound):
        a.get(".tmp-x-1")


# -- two processes -------------------------------------------------------------------------------
ROUNDS = 12


def _replica(root: str, start: object, results: object) -> None:
    """One replica: registers file i at the same moment as the other, then reads it back from disk
    (as a Speak on it would, after the memory's recheck) for a while. Reports "ok" or the error."""
    store = _store(Path(root))
    try:
        for i in range(ROUNDS):
            start.wait()  # type: ignore[attr-defined]
            data = _variant(100 + i)
            avatar, _ = store.register(data, f"{i}.png")
            until = time.monotonic() + 0.3
            while time.monotonic() < until:
                loaded = store._load(avatar.id)
                assert loaded.frames.shape == avatar.frames.shape
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")  # type: ignore[attr-defined]
        start.abort()  # type: ignore[attr-defined]
    else:
        results.put("ok")  # type: ignore[attr-defined]


def test_two_processes_registering_the_same_files_at_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    start, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_replica, args=(str(tmp_path), start, results)) for _ in range(2)]
    for p in procs:
        p.start()
    try:
        found = [results.get(timeout=240) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    assert found == ["ok", "ok"]
    store = _store(tmp_path)
    entries = store.list()
    assert len(entries) == ROUNDS
    for s in entries:
        assert store.get(s.id).frames.shape[0] == s.frame_count
    assert not list(tmp_path.glob(".tmp-*")) and not (tmp_path / ".damaged").exists()


def test_callers_that_find_the_name_table_stale_at_once_read_the_disk_once(tmp_path, monkeypatch):
    """Resolving names reads every entry's names and owners (name_table) when its copy is older
    than RECHECK_SECONDS: several calls at that moment (streams starting together) wait for one
    read of the disk instead of each scanning every entry, and all get the same table."""
    store = _store(tmp_path)
    avatar, _ = store.register(_variant(9), "p.png", name="ann")
    store.update_names(avatar.id, lambda names: {"": ["ann"]})
    reads = []
    real = AvatarStore._read_name_table

    def counted(self: AvatarStore, now: float, changes: int):  # type: ignore[no-untyped-def]
        reads.append(now)
        time.sleep(0.2)  # a slow shared volume: the others arrive while it reads
        return real(self, now, changes)

    monkeypatch.setattr(AvatarStore, "_read_name_table", counted)
    _expire(monkeypatch, store_module.RECHECK_SECONDS + 1)
    tables: list[object] = []
    threads = [threading.Thread(target=lambda: tables.append(store.name_table())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(reads) == 1
    assert len(tables) == 8 and all(t == tables[0] for t in tables)
    (row,) = tables[0]  # type: ignore[misc]
    assert (row.id, row.names) == (avatar.id, {"": ["ann"]})
