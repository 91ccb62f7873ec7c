"""The shared-memory frame ring: what the encoder writes the renderer reads (and the other way),
the renderer may write a slot only once its last frame is released, and a renderer opens only a
ring of the offered shape, by name, in its own directory."""

from __future__ import annotations

import asyncio
import errno
import os

import numpy as np
import pytest

from talkmesh.common import framering
from talkmesh.common.config import ConfigError, load_config
from talkmesh.common.framering import HEADER_BYTES, NAME_PREFIX, FrameRing, FrameRingConfig, slot_stride

SLOT = 1000  # not a multiple of the page: slots still start on pages


def test_both_sides_see_one_memory(tmp_path) -> None:
    enc = FrameRing.create(str(tmp_path), 3, SLOT)
    assert enc.name.startswith(NAME_PREFIX) and os.path.exists(enc.path)
    assert os.path.getsize(enc.path) == HEADER_BYTES + 3 * slot_stride(SLOT) == 4096 * 4
    ren = FrameRing.attach(str(tmp_path), enc.name, 3, SLOT)
    frames = [np.random.default_rng(i).integers(0, 256, SLOT, np.uint8).tobytes() for i in range(7)]
    seen = []
    for i, data in enumerate(frames):
        assert ren.has_room(i)
        ren.frame(i, SLOT)[:] = data
        seen.append(bytes(enc.frame(i, SLOT)))
        enc.release(i + 1)
    assert seen == frames
    assert ren.released == 7
    enc.unlink()  # the name goes; both mappings stay
    assert not os.path.exists(enc.path)
    ren.frame(7, SLOT)[:] = frames[0]
    assert bytes(enc.frame(7, SLOT)) == frames[0]
    enc.unlink()  # once


def test_a_slot_is_written_only_after_its_last_frame_is_released(tmp_path) -> None:
    enc = FrameRing.create(str(tmp_path), 2, SLOT)
    ren = FrameRing.attach(str(tmp_path), enc.name, 2, SLOT)
    assert ren.has_room(0) and ren.has_room(1) and not ren.has_room(2)
    enc.release(1)
    assert ren.has_room(2) and not ren.has_room(3)
    enc.release(0)  # never backwards
    assert ren.released == 1
    with pytest.raises(ValueError, match="exceed"):
        enc.frame(0, SLOT + 1)


async def test_room_waits_for_the_release(tmp_path) -> None:
    enc = FrameRing.create(str(tmp_path), 2, SLOT)
    ren = FrameRing.attach(str(tmp_path), enc.name, 2, SLOT)
    waiter = asyncio.create_task(ren.room(3))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    enc.release(1)
    await asyncio.sleep(0.05)
    assert not waiter.done()  # frame 3 needs frame 1's slot
    enc.release(2)
    async with asyncio.timeout(5):
        await waiter


@pytest.mark.parametrize(
    "name",
    ["../" + NAME_PREFIX + "0" * 32, NAME_PREFIX + "0" * 31, NAME_PREFIX + "G" * 32, "passwd", NAME_PREFIX + "0" * 33],
)
def test_only_a_ring_name_is_opened(tmp_path, name: str) -> None:
    with pytest.raises(ValueError, match="not a frame ring"):
        FrameRing.attach(str(tmp_path), name, 2, SLOT)


def test_a_file_of_another_shape_or_a_link_is_refused(tmp_path) -> None:
    enc = FrameRing.create(str(tmp_path), 2, SLOT)
    with pytest.raises(ValueError, match="not a ring of"):
        FrameRing.attach(str(tmp_path), enc.name, 3, SLOT)
    with pytest.raises(ValueError, match="not a ring of"):
        FrameRing.attach(str(tmp_path), enc.name, 2, 5000)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(FileNotFoundError):  # another machine's (or pod's) directory
        FrameRing.attach(str(other), enc.name, 2, SLOT)
    link = other / (NAME_PREFIX + "a" * 32)
    link.symlink_to(enc.path)
    with pytest.raises(OSError):  # O_NOFOLLOW
        FrameRing.attach(str(other), link.name, 2, SLOT)
    plain = other / (NAME_PREFIX + "b" * 32)
    plain.write_bytes(b"\0" * (HEADER_BYTES + 2 * slot_stride(SLOT)))
    with pytest.raises(ValueError, match="header"):
        FrameRing.attach(str(other), plain.name, 2, SLOT)


def test_a_ring_that_cannot_be_made_raises_oserror(tmp_path) -> None:
    with pytest.raises(OSError):
        FrameRing.create(str(tmp_path / "missing"), 2, SLOT)
    assert not list(tmp_path.iterdir())


def test_config_is_checked() -> None:
    assert load_config(FrameRingConfig, env={}).directory == "/dev/shm"
    with pytest.raises(ConfigError, match="directory"):
        load_config(FrameRingConfig, overrides={"directory": ""}, env={})


def test_a_full_directory_leaves_no_file(tmp_path, monkeypatch) -> None:
    def full(fd: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(framering, "_allocate", full)
    with pytest.raises(OSError, match="No space"):
        FrameRing.create(str(tmp_path), 2, SLOT)
    assert not list(tmp_path.iterdir())


def test_frames_before_the_floor_go_inline_and_free_the_slots_after_it(tmp_path) -> None:
    """A ring opened once frames 0-19 had their input: the encoder encoded them inline without
    releasing anything in the ring; frames from 20 on still have room."""
    enc = FrameRing.create(str(tmp_path), 4, SLOT)
    ren = FrameRing.attach(str(tmp_path), enc.name, 4, SLOT)
    ren.start(20)
    assert not ren.has_room(19) and all(ren.has_room(i) for i in range(20, 24)) and not ren.has_room(24)
    assert ren.free(18) == 6 and ren.free(20) == 4
    enc.release(21)
    assert ren.has_room(24) and not ren.has_room(25)


def test_sweep_removes_only_rings_nobody_holds(tmp_path) -> None:
    held = FrameRing.create(str(tmp_path), 2, SLOT)
    orphan = tmp_path / (NAME_PREFIX + "c" * 32)  # its encoder died: no lock on it
    orphan.write_bytes(b"\0" * 64)
    other = tmp_path / "not-a-ring"
    other.write_bytes(b"x")
    fifo = tmp_path / (NAME_PREFIX + "d" * 32)  # neither opened for long nor removed (not a regular file)
    os.mkfifo(fifo)
    assert FrameRing.sweep(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([held.name, "not-a-ring", fifo.name])
    held.unlink()
    assert FrameRing.sweep(str(tmp_path / "missing")) == 0
