"""Frame skip: run every Nth frame through the model and interpolate the mouth crop in between.

A speed/quality knob (``wav2lip.frame_skip`` / ``musetalk.frame_skip``, 1 = off). Within one
render call, the frames whose index is a multiple of N are key frames, and so are the call's first
and last frame (so every skipped frame lies between two inferred ones and a call never waits for
frames it has not been given). Skipped frames get a linear cross-fade of the two neighbouring model
outputs, weighted by frame-index distance, before the usual blend into the avatar frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_keyframes(frame_indices: Sequence[int], skip: int) -> list[bool]:
    """Which of these frames run the model (True) and which are interpolated (False)."""
    n = len(frame_indices)
    if skip <= 1 or n <= 2:
        return [True] * n
    return [i in (0, n - 1) or idx % skip == 0 for i, idx in enumerate(frame_indices)]


def fill_skipped(
    frame_indices: Sequence[int], keys: Sequence[bool], key_outputs: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Every frame's model-space output: key frames' own, skipped frames' interpolated.

    ``key_outputs`` holds the outputs of the key frames in order. Interpolation runs in float32
    and is cast back to the outputs' dtype (uint8 crops round to nearest).
    """
    if len(key_outputs) != sum(keys):
        raise ValueError("fill_skipped: one output per key frame expected")
    key_pos = [i for i, k in enumerate(keys) if k]
    out: list[np.ndarray] = []
    k = 0  # index into key_pos of the key at or before i
    for i in range(len(keys)):
        if keys[i]:
            k = key_pos.index(i)
            out.append(key_outputs[k])
            continue
        a, b = key_pos[k], key_pos[k + 1]
        span = frame_indices[b] - frame_indices[a]
        t = (frame_indices[i] - frame_indices[a]) / span if span else 0.5
        lo, hi = key_outputs[k], key_outputs[k + 1]
        mixed = (1.0 - t) * lo.astype(np.float32) + t * hi.astype(np.float32)
        if np.issubdtype(lo.dtype, np.integer):
            info = np.iinfo(lo.dtype)
            mixed = np.clip(np.rint(mixed), info.min, info.max)
        out.append(mixed.astype(lo.dtype))
    return out
