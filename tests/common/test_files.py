"""WatchedFile: a file read again when it changes, at most every check_seconds; WatchedFiles, the
logic it shares with the TLS certificates of servers and client channels."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from talkmesh.common import files
from talkmesh.common.files import Inconsistent, WatchedFile, WatchedFiles


def _parse(path: str) -> list[str]:
    lines = Path(path).read_text().split()
    if "bad" in lines:
        raise ValueError("a bad line")
    return lines


def test_read_again_on_change_not_before_its_interval_and_a_bad_change_keeps_the_old(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("a\n")
    now = [0.0]
    watched = WatchedFile(str(path), _parse, check_seconds=2.0, clock=lambda: now[0])
    assert watched.get() == ["a"] and watched.loads == 1
    path.write_text("a b\n")
    os.utime(path, ns=(1, 10**18))  # (a new modification time even within the file system's resolution)
    now[0] = 1.0
    assert watched.get() == ["a"], "not looked at before check_seconds"
    now[0] = 2.5
    assert watched.get() == ["a", "b"] and watched.loads == 2
    now[0] = 5.0
    assert watched.get() == ["a", "b"] and watched.loads == 2, "unchanged: not parsed again"
    path.write_text("bad\n")
    now[0] = 8.0
    assert watched.get() == ["a", "b"], "a change that does not parse keeps what was loaded"
    path.unlink()
    now[0] = 11.0
    assert watched.get() == ["a", "b"], "nor does a file that went away"


def test_at_start_a_bad_or_missing_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("bad\n")
    with pytest.raises(ValueError, match="a bad line"):
        WatchedFile(str(path), _parse)
    with pytest.raises(OSError):
        WatchedFile(str(tmp_path / "missing"), _parse)


def test_any_error_of_a_bad_edit_keeps_the_old_and_an_edit_while_reading_is_read_next(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("a\n")
    now = [0.0]
    edits = iter(["b\n"])

    def parse(p: str) -> list[str]:
        text = Path(p).read_text()
        if "type" in text:
            raise TypeError("a YAML shape the parser did not expect")
        edit = next(edits, None)
        if edit is not None:  # the file changes while it is being read
            path.write_text(edit)
            os.utime(path, ns=(1, 10**18))
        return text.split()

    watched = WatchedFile(str(path), parse, check_seconds=1.0, clock=lambda: now[0])
    assert watched.value == ["a"]
    now[0] = 1.5
    assert watched.get() == ["b"], "the edit made while the first read ran is read at the next check"
    path.write_text("type\n")
    os.utime(path, ns=(2, 2 * 10**18))
    now[0] = 3.0
    assert watched.get() == ["b"], "a TypeError keeps what was loaded, like a ValueError"


# -- WatchedFiles: the logic WatchedFile, the client channels and the server certificates share ----


def _touch(path: Path, text: str, when: int) -> None:
    """Writes ``text`` with a modification time of its own (within the file system's resolution)."""
    path.write_text(text)
    os.utime(path, ns=(when, when * 10**9))


def test_the_files_are_not_even_stamped_before_the_interval_nor_loaded_on_an_unchanged_stamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _touch(a, "1", 1)
    _touch(b, "2", 1)
    now = [0.0]
    loads: list[str | None] = []

    def load(loaded: str | None) -> str:
        loads.append(loaded)
        return a.read_text() + b.read_text()

    watched = WatchedFiles([str(a), str(b)], load, check_seconds=5.0, clock=lambda: now[0])
    assert watched.value == "12" and watched.loads == 1 and loads == [None]
    stamps = []
    real_stamp = files.file_stamp
    monkeypatch.setattr(files, "file_stamp", lambda paths: stamps.append(paths) or real_stamp(paths))
    _touch(b, "3", 2)  # the second file changes
    now[0] = 4.9
    assert watched.refresh() is None and watched.get() == "12"
    assert stamps == [], "not looked at before check_seconds"
    now[0] = 5.0
    assert watched.refresh() == "13" and watched.loads == 2 and loads == [None, "12"]
    assert watched.refresh() is None, "the interval counts from the last check"
    now[0] = 10.0
    assert watched.refresh() is None and loads == [None, "12"], "an unchanged stamp is not loaded again"
    assert len(stamps) == 2
    watched.check_seconds = 0  # may be changed at any time
    _touch(a, "4", 3)
    assert watched.get() == "43" and watched.loads == 3


def test_the_stamp_is_taken_before_the_read_so_an_edit_during_a_reload_is_read_at_the_next_check(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _touch(a, "1", 1)
    _touch(b, "x", 1)
    edit_during_read: list[str] = []

    def load(loaded: str | None) -> str:
        text = a.read_text()
        if edit_during_read:  # b changes after this load stamped the files, before it returns
            _touch(b, edit_during_read.pop(), 10)
        return text + b.read_text()

    watched = WatchedFiles([str(a), str(b)], load, check_seconds=0)
    _touch(a, "2", 2)
    edit_during_read.append("y")
    assert watched.get() == "2y"
    _touch(b, "z", 10)  # the stamp of the edit made during the read: a stamp taken after the read misses it
    assert watched.get() == "2z", "the edit that landed during the read is read at the next check"
    assert watched.loads == 3
    assert watched.get() == "2z" and watched.loads == 3


def test_a_change_that_does_not_load_keeps_the_value_until_the_files_load_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "f"
    _touch(path, "1", 1)
    now = [0.0]
    changes: list[tuple[str, str]] = []

    def load(loaded: str | None) -> str:
        text = path.read_text()
        if text == "bad":
            raise RuntimeError("not a number")
        return text

    watched = WatchedFiles(
        [str(path)], load, check_seconds=1.0, what="numbers", clock=lambda: now[0],
        on_change=lambda old, new: changes.append((old, new)),
    )  # fmt: skip
    _touch(path, "bad", 2)
    for t in (0.5, 1.0, 1.2, 1.9):  # one check in that second: one warning, not one per call
        now[0] = t
        assert watched.get() == "1"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "numbers not reloaded, keeping what was loaded: not a number" in warnings[0].message
    path.unlink()
    now[0] = 2.0
    assert watched.get() == "1" and watched.loads == 1, "nor does a file that went away"
    assert changes == []
    _touch(path, "2", 3)
    now[0] = 3.0
    assert watched.get() == "2" and watched.loads == 2 and changes == [("1", "2")]


def test_files_not_consistent_yet_keep_the_loaded_value_and_raise_at_start(tmp_path: Path) -> None:
    key, cert = tmp_path / "key", tmp_path / "cert"
    _touch(key, "k1", 1)
    _touch(cert, "k1", 1)
    changes: list[tuple[str, str]] = []

    def load(loaded: str | None) -> str:
        pair = key.read_text(), cert.read_text()
        if pair[0] != pair[1]:
            raise Inconsistent("a key without its certificate")
        return pair[0]

    watched = WatchedFiles(
        [str(key), str(cert)], load, check_seconds=0, on_change=lambda old, new: changes.append((old, new))
    )
    _touch(key, "k2", 2)  # half a rotation
    assert watched.refresh() is None and watched.value == "k1"
    assert watched.refresh() is None, "refused again while the pair is half rotated"
    _touch(cert, "k2", 2)
    assert watched.refresh() == "k2" and changes == [("k1", "k2")] and watched.loads == 2
    _touch(cert, "k3", 3)
    with pytest.raises(Inconsistent):
        WatchedFiles([str(key), str(cert)], load)  # at start there is nothing to keep


def test_concurrent_checks_load_a_change_once(tmp_path: Path) -> None:
    path = tmp_path / "f"
    _touch(path, "1", 1)
    started = threading.Barrier(8)
    loading = threading.Event()
    calls: list[str | None] = []

    def load(loaded: str | None) -> str:
        calls.append(loaded)
        if loaded is not None:
            loading.set()
            time.sleep(0.05)  # the other threads arrive while this one reads
        return path.read_text()

    watched = WatchedFiles([str(path)], load, check_seconds=0)
    _touch(path, "2", 2)
    results: list[str | None] = []

    def check() -> None:
        started.wait()
        results.append(watched.refresh())

    threads = [threading.Thread(target=check) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loading.is_set()
    assert sorted(results, key=str) == ["2"] + [None] * 7, "one thread takes the change, the others keep it"
    assert calls == [None, "1"] and watched.loads == 2
