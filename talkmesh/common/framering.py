"""A ring of frame slots in shared memory: raw frames between a renderer and an encoder on one machine.

A 512x512 I420 frame is 393 KB. Sent in a gRPC message it is copied by the renderer's conversion,
its protobuf serialisation, gRPC's and the kernel's buffers, and again on the encoder's side. When
the two run side by side (one pod, or one machine), the encoder offers a ring instead: a file in a
directory both see (``/dev/shm`` by default, a memory-backed ``emptyDir`` in Kubernetes), mapped
by both. The renderer writes frame *i* into slot ``i % slots`` and sends only a small message
(``VideoFrame.in_ring``); the encoder encodes straight out of the slot, then releases it.

Layout: a 4 KiB header (magic, slot count, slot size, and the count of frames the encoder has
released, which only the encoder writes) followed by the slots, each a whole number of 4 KiB
pages. Frame *i* may be written once frames ``0 .. i - slots`` are released, so the renderer
never overwrites a frame the encoder still reads; it waits for room (back-pressure, as gRPC flow
control gives for frames sent inline). A renderer whose frames do not fit the slots does not
use the ring.

The encoder names the file (``talkmesh-frames-<32 hex digits>``); the renderer opens only such a
name in its own configured directory, without following links, and checks its size and header,
so a request cannot make it open any other file. The encoder unlinks the file as soon as the
renderer has used it (or at the end of the stream): the mappings live on until both let go, and
nothing is left behind. The file of a process killed in between stays, locked by nobody, and the
next encoder's ``sweep`` removes it (an ``emptyDir`` also goes with its pod).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import mmap
import os
import re
import secrets
import stat
import struct
from dataclasses import dataclass

from talkmesh.common.config import ConfigError

log = logging.getLogger(__name__)

MAGIC = b"TMRING01"
HEADER_BYTES = 4096
PAGE = 4096
MAX_SLOTS = 1024
NAME_PREFIX = "talkmesh-frames-"
_NAME = re.compile(r"talkmesh-frames-[0-9a-f]{32}")
_HEADER = struct.Struct("<8sQQ")  # magic, slots, slot stride
_RELEASED = struct.Struct("<Q")
_RELEASED_AT = 64  # its own cache line


@dataclass(frozen=True)
class FrameRingConfig:
    # Raw frames between a renderer and an encoder that share this directory (one pod: an emptyDir
    # of medium Memory mounted in both containers; one machine: /dev/shm) go through shared memory
    # instead of gRPC messages. Either side off, or no shared directory: frames go inline.
    enabled: bool = True
    directory: str = "/dev/shm"

    def validate(self) -> None:
        if not self.directory:
            raise ConfigError.at("directory", "must not be empty")


def slot_stride(slot_bytes: int) -> int:
    """Bytes between slots: ``slot_bytes`` rounded up to whole pages."""
    return -(-slot_bytes // PAGE) * PAGE


class FrameRing:
    """One stream's ring, mapped in this process (see the module's docstring)."""

    def __init__(
        self, name: str, path: str, slots: int, slot_bytes: int, buf: mmap.mmap, owner: bool, lock_fd: int = -1
    ) -> None:
        self.name = name
        self.path = path
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.stride = slot_stride(slot_bytes)
        self._buf = buf
        self._view = memoryview(buf)
        self._unlinked = not owner
        self._released = 0
        # the creator holds a lock on the file while it is named: sweep() removes only unlocked ones
        self._lock_fd = lock_fd
        # the renderer's side: frames before this one go inline (see start())
        self.floor = 0

    # -- the encoder's side -----------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str, slots: int, slot_bytes: int) -> FrameRing:
        """A new ring file (blocking: allocates and maps ``slots`` pages-rounded slots). Raises
        OSError when the directory cannot hold it (ENOSPC comes here, not later as SIGBUS)."""
        if not 1 <= slots <= MAX_SLOTS or slot_bytes < 1:
            raise ValueError(f"bad ring shape: {slots} slots of {slot_bytes} bytes")
        name = NAME_PREFIX + secrets.token_hex(16)
        path = os.path.join(directory, name)
        size = HEADER_BYTES + slots * slot_stride(slot_bytes)
        # made under a name no sweep looks at, locked, then renamed: a ring's name is never unlocked
        making = os.path.join(directory, f".{name}.new")
        fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _allocate(fd, size)
            buf = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _populate(), prot=mmap.PROT_READ | mmap.PROT_WRITE)
            os.rename(making, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(making)
            os.close(fd)
            raise
        _HEADER.pack_into(buf, 0, MAGIC, slots, slot_stride(slot_bytes))
        return cls(name, path, slots, slot_bytes, buf, owner=True, lock_fd=fd)

    def frame(self, index: int, nbytes: int) -> memoryview:
        """Frame ``index``'s ``nbytes`` of pixels in its slot (a view: valid until it is released)."""
        if nbytes > self.slot_bytes:
            raise ValueError(f"{nbytes} bytes exceed the ring's {self.slot_bytes}-byte slots")
        start = HEADER_BYTES + (index % self.slots) * self.stride
        return self._view[start : start + nbytes]

    def release(self, frames: int) -> None:
        """Frames ``0 .. frames - 1`` are done with: the renderer may reuse their slots."""
        if frames > self._released:
            self._released = frames
            _RELEASED.pack_into(self._buf, _RELEASED_AT, frames)

    def unlink(self) -> None:
        """Removes the file (the mappings stay valid); once, and only by its creator."""
        if self._unlinked:
            return
        self._unlinked = True
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1

    @staticmethod
    def sweep(directory: str) -> int:
        """Removes the ring files in ``directory`` that no process holds (their encoder died
        before unlinking them); returns how many. Rings of live encoders, even other ones sharing
        the directory, are locked by them and stay."""
        removed = 0
        try:
            names = [n for n in os.listdir(directory) if _NAME.fullmatch(n)]
        except OSError:
            return 0
        for name in names:
            path = os.path.join(directory, name)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                    continue  # not a ring of ours (a shared /dev/shm holds other users' files)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # held by its encoder
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    removed += 1
            finally:
                os.close(fd)
        return removed

    # -- the renderer's side ----------------------------------------------------------------------
    @classmethod
    def attach(cls, directory: str, name: str, slots: int, slot_bytes: int) -> FrameRing:
        """Maps the ring ``name`` in ``directory`` (blocking). Raises ValueError for a name or a
        file that is not such a ring, OSError when it cannot be opened."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a frame ring's name")
        if not 1 <= slots <= MAX_SLOTS or slot_bytes < 1:
            raise ValueError(f"bad ring shape: {slots} slots of {slot_bytes} bytes")
        path = os.path.join(directory, name)
        size = HEADER_BYTES + slots * slot_stride(slot_bytes)
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                raise ValueError(f"{name}: not a ring of {slots} slots of {slot_bytes} bytes")
            buf = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _populate(), prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        magic, n, stride = _HEADER.unpack_from(buf, 0)
        if magic != MAGIC or n != slots or stride != slot_stride(slot_bytes):
            buf.close()
            raise ValueError(f"{name}: header does not match the ring offered")
        return cls(name, path, slots, slot_bytes, buf, owner=False)

    @property
    def released(self) -> int:
        """How many frames the encoder has released (read from the shared header)."""
        return int(_RELEASED.unpack_from(self._buf, _RELEASED_AT)[0])

    def start(self, floor: int) -> None:
        """The renderer's frames from ``floor`` on (the first whose input came after the ring was
        opened) may use the ring; earlier ones go inline. Frames the encoder encoded before it had
        the ring were never released in the header, and their slots are free all the same."""
        self.floor = floor

    def has_room(self, index: int) -> bool:
        """Frame ``index`` may be written: the frame that used its slot before is released."""
        return self.floor <= index < max(self.released, self.floor) + self.slots

    def free(self, index: int) -> int:
        """How many frames from ``index`` on may be written now (or go inline, before the floor)."""
        return max(0, max(self.released, self.floor) + self.slots - index)

    async def room(self, index: int, poll: float = 0.001, max_poll: float = 0.01) -> None:
        """Waits until frame ``index`` may be written, or at once if it goes inline (polling the
        header, at most ``max_poll`` apart: the encoder releases as it encodes, and waits only
        happen when the renderer runs ahead)."""
        while index >= self.floor and not self.has_room(index):
            await asyncio.sleep(poll)
            poll = min(poll * 2, max_poll)



def _allocate(fd: int, size: int) -> None:
    # the pages now: a full tmpfs is ENOSPC here, not SIGBUS when a frame is written
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is None:  # (macOS) size only
        os.ftruncate(fd, size)
    else:
        allocate(fd, 0, size)


def _populate() -> int:
    # page tables filled at map time (in a worker thread) rather than by faults on frame 0's way
    return getattr(mmap, "MAP_POPULATE", 0)
