"""WatchedFile: a file read again when it changes, at most every check_seconds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from talkmesh.common.files import WatchedFile


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
