"""tune_malloc_for_frames: freed frame-sized buffers are reused, not faulted in afresh."""

from __future__ import annotations

import subprocess
import sys

import pytest

from talkmesh.common.memory import tune_malloc_for_frames

# Allocates, fills and frees 200 frame-sized (393 KB) buffers, as a renderer does per frame, and
# prints the minor page faults that took.
CHILD = """
import resource, sys
from talkmesh.common.memory import tune_malloc_for_frames
applied = tune_malloc_for_frames()
keep = [bytearray(393216) for _ in range(4)]  # the heap is in use, as in a service
del keep
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(200):
    buf = bytes(bytearray(b"x") * 393216)
    del buf
print(int(applied), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env: dict[str, str]) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "1", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_frame_buffers_are_reused_with_the_tuning_and_faulted_in_without_it():
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    applied, tuned = _faults(base)
    if not applied:
        pytest.skip("no glibc mallopt here")
    off, untuned = _faults({**base, "TALKMESH_MALLOC_TUNING": "0"})
    assert not off
    assert tuned < 50  # 200 buffers of 96 pages each: reused
    assert untuned > 2000  # the defaults map most of them afresh


def test_operator_settings_and_the_switch_leave_the_allocator_alone():
    assert tune_malloc_for_frames({"TALKMESH_MALLOC_TUNING": "0"}) is False
    assert tune_malloc_for_frames({"MALLOC_ARENA_MAX": "2"}) is False  # (glibc's name: no trailing _)
    assert tune_malloc_for_frames({"MALLOC_TRIM_THRESHOLD_": "1"}) is False
    assert tune_malloc_for_frames({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}) is False


def test_the_services_that_move_raw_frames_are_the_ones_tuned():
    from talkmesh.common.registry import SERVICES

    assert {s.name for s in SERVICES if s.raw_frames} == {"renderer", "encoder"}


def test_a_refused_setting_is_named_and_does_not_stop_the_others(monkeypatch, caplog):
    import ctypes
    import ctypes.util

    from talkmesh.common import memory

    calls: list[int] = []

    class Mallopt:
        argtypes: object = None
        restype: object = None

        def __call__(self, param: int, value: int) -> int:
            calls.append(param)
            return 0 if param == memory._M_TRIM_THRESHOLD else 1

    class Libc:
        mallopt = Mallopt()

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: "libc.so.6")
    monkeypatch.setattr(sys, "platform", "linux")
    with caplog.at_level("WARNING", logger=memory.__name__):
        assert memory.tune_malloc_for_frames({}) is False
    assert calls == [memory._M_MMAP_THRESHOLD, memory._M_TRIM_THRESHOLD, memory._M_TOP_PAD, memory._M_ARENA_MAX]
    assert "M_TRIM_THRESHOLD" in caplog.text and "M_TOP_PAD" not in caplog.text


# A thread other than the main one receives 48 MiB in 1 MiB blocks (as gRPC's threads receive an
# upload) and frees them; then the process asks glibc to give free memory back (malloc_trim, as the
# renderer does once uploads are done) and prints how much of the 48 MiB is still resident.
THREAD_CHILD = """
import ctypes, threading
from talkmesh.common.memory import tune_malloc_for_frames
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20

applied = tune_malloc_for_frames()
before = rss()

def receive():
    blocks = [libc.malloc(1 << 20) for _ in range(48)]
    for b in blocks:
        ctypes.memset(b, 1, 1 << 20)
    for b in blocks:
        libc.free(b)

t = threading.Thread(target=receive)
t.start()
t.join()
libc.malloc_trim(0)
print(int(applied), rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_memory_freed_on_other_threads_is_given_back_by_a_trim():
    """glibc's malloc_trim never shrinks the top of a per-thread arena's heap, and the tuned trim
    threshold (64 MiB, a whole such heap) keeps free() from doing it either: with an arena per
    thread, every thread that once received an upload's blocks would keep up to 64 MiB. One
    arena: the trim gives it all back."""
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", THREAD_CHILD], env=base, capture_output=True, text=True, check=True)
    applied, kept = (int(x) for x in out.stdout.split())
    if not applied:
        pytest.skip("no glibc mallopt here")
    assert kept < 8, f"{kept} MiB of 48 MiB freed on another thread still resident after the trim"
