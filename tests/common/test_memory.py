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
    assert tune_malloc_for_frames({"MALLOC_ARENA_MAX_": "2"}) is False
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
    assert calls == [memory._M_MMAP_THRESHOLD, memory._M_TRIM_THRESHOLD, memory._M_TOP_PAD]
    assert "M_TRIM_THRESHOLD" in caplog.text and "M_TOP_PAD" not in caplog.text
