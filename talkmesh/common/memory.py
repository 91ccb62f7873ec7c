"""Allocator settings for processes that move raw frames.

A 512x512 I420 frame is 393 KB, and every frame passes through several buffers of that size (the
converted pixels, the protobuf message, its serialization, gRPC's slices). glibc's malloc serves
blocks above its mmap threshold (128 KB at start, raised as such blocks are freed) with fresh
``mmap`` calls and gives the top of its heap back to the kernel beyond its trim threshold, so at
~200 frames/s such buffers kept arriving as fresh zeroed pages: ~200 minor page faults per frame in
the renderer, ~0.7 ms of its CPU per 512² frame (BENCHMARKS.md, "Renderer CPU per frame, render3").
Fixed thresholds above the frame sizes keep the freed buffers in the heap for the next frame; the
memory kept is bounded by ``trim_threshold`` (measured when it was per arena: ~+90 MB of RSS in the
renderer and ~+120 MB in the encoder after a bench of 1-2 streams). ``talkmesh serve`` applies it to the
services that move raw frames (``ServiceSpec.raw_frames``: renderer and encoder). A lower trim
threshold (16 MiB) was tried: groups of frames then free more than it at once and the faults
come back.

The tuned processes allocate from **one arena** (``M_ARENA_MAX``). glibc gives each thread that
allocates concurrently an arena of its own (up to 8 per core), and the top of such an arena's
heap is given back only by ``free`` beyond the trim threshold, never by ``malloc_trim``: with the
threshold a whole heap (64 MiB), every gRPC thread that had received an upload's blocks kept up
to 64 MiB for good (a renderer kept +94..+190 MiB after six concurrent 199 MB uploads; one arena:
~+10 MiB, given back by the trim in services/renderer/uploads.py). Paired mesh benches showed no
cost (the GIL serialises the Python threads' allocations anyway; small blocks come from each
thread's cache without the arena's lock).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt(3) parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's maximum on 64-bit: blocks below it come from the heap
TRIM_THRESHOLD = 64 * 1024 * 1024  # free memory each heap keeps before giving its top back
TOP_PAD = 4 * 1024 * 1024  # extra grown per heap extension (fewer brk calls)
ARENA_MAX = 1  # every thread allocates from the main heap, which malloc_trim can shrink
ENV_OFF = "TALKMESH_MALLOC_TUNING"  # "0" leaves the allocator's defaults


def tune_malloc_for_frames(env: dict[str, str] | None = None) -> bool:
    """Sets the thresholds above (glibc on Linux only); True if they were applied.

    ``TALKMESH_MALLOC_TUNING=0`` in the environment turns it off. Explicit ``MALLOC_*`` or
    ``GLIBC_TUNABLES`` settings of the operator win (nothing is changed then). Call it before the
    process starts threads: one that allocated before it has an arena of its own.
    """
    env = dict(os.environ) if env is None else env
    if env.get(ENV_OFF, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    if "GLIBC_TUNABLES" in env or any(k.startswith("MALLOC_") for k in env):  # (MALLOC_ARENA_MAX, MALLOC_TOP_PAD_, ...)
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    settings = (
        ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        ("M_TOP_PAD", _M_TOP_PAD, TOP_PAD),
        ("M_ARENA_MAX", _M_ARENA_MAX, ARENA_MAX),
    )
    # each is tried: one refused setting does not keep the others from applying
    refused = [name for name, param, value in settings if mallopt(param, value) != 1]
    if refused:
        log.warning(
            "mallopt refused %s; the allocator keeps its default for %s",
            ", ".join(refused),
            "them" if len(refused) > 1 else "it",
        )
    return not refused
