"""From the TTS viseme track and the audio energy to a smoothed mouth pose per video frame.

Each viseme has a target pose (opening, width, rounding). A frame's target is the overlap-weighted
mix of the visemes under it (looked at slightly ahead, so the mouth starts to shape before the
sound rises), scaled by the frame's speech loudness (the feature stage's ``activity.loudness``:
0..1 relative to the stream's noise floor and the speaker's recent peaks, so the recording level and
steady background noise do not matter), never below ``MIN_OPEN``; a bilabial (/p b m/) under a third of the frame
or more closes the mouth outright, and silence returns it to rest. The pose then follows the target
with separate attack and release time constants, which gives natural coarticulation.

Events may arrive in any order and in any number per message: they wait in a heap ordered by start
(O(log n) each), move to a heap ordered by end when the frame window reaches them, and leave it when
the window has passed them, so memory follows the events still to come and the work per event is
O(log n) whatever the order. Frames must be stepped in increasing order (the session enforces it).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from services.renderer.backends.base import MouthShape
from talkmesh.common.clock import MediaClock
from talkmesh.v1 import common_pb2 as cpb

# viseme -> (open, width, round), each in [0, 1]; width 0.5 is neutral.
VISEME_POSE: dict[int, tuple[float, float, float]] = {
    cpb.VISEME_REST: (0.0, 0.5, 0.0),
    cpb.VISEME_CLOSED: (0.0, 0.45, 0.0),
    cpb.VISEME_OPEN: (1.0, 0.55, 0.0),
    cpb.VISEME_SPREAD: (0.45, 0.9, 0.0),
    cpb.VISEME_ROUNDED: (0.55, 0.2, 1.0),
    cpb.VISEME_FV: (0.15, 0.55, 0.0),
    cpb.VISEME_TH: (0.3, 0.55, 0.0),
    cpb.VISEME_SZ: (0.2, 0.75, 0.0),
    cpb.VISEME_L: (0.45, 0.55, 0.0),
    cpb.VISEME_SH: (0.35, 0.3, 0.7),
    cpb.VISEME_KG: (0.5, 0.5, 0.0),
    cpb.VISEME_TD: (0.35, 0.6, 0.0),
    cpb.VISEME_R: (0.35, 0.35, 0.5),
    cpb.VISEME_MID: (0.55, 0.5, 0.1),
}
# A voiced frame opens the mouth at least this much of its viseme's opening, however soft.
MIN_OPEN = 0.4
# At most this many events are mixed into one frame (a real track has two or three under a frame;
# this bounds the per-frame work for a track that stacks thousands of events on one instant).
MAX_OVERLAP = 32


class VisemeEventLike(Protocol):
    start_sample: Any
    end_sample: Any
    viseme: Any


@dataclass
class MouthAnimator:
    sample_rate: int
    fps: float
    attack_ms: float = 20.0
    release_ms: float = 50.0
    anticipation_ms: float = 20.0
    # (start, seq, end, viseme) of events the frame window has not reached yet, by start
    _pending: list[tuple[int, int, int, int]] = field(default_factory=list)
    # (end, seq, start, viseme) of events the window has reached and not yet passed, by end
    _active: list[tuple[int, int, int, int]] = field(default_factory=list)
    _seq: itertools.count = field(default_factory=itertools.count)
    _pose: tuple[float, float, float] = (0.0, 0.5, 0.0)
    _clock: MediaClock = field(init=False)

    def __post_init__(self) -> None:
        # frame i's samples are the one clock's (talkmesh.common.clock), as in every other stage
        self._clock = MediaClock.of(self.fps, self.sample_rate)

    def add(self, events: Iterable[VisemeEventLike]) -> None:
        """Queues viseme events (any order; O(log n) each)."""
        pending, seq = self._pending, self._seq
        for ev in events:
            heapq.heappush(pending, (ev.start_sample, next(seq), ev.end_sample, ev.viseme))

    @property
    def queued(self) -> int:
        """Events held (waiting or under the current window)."""
        return len(self._pending) + len(self._active)

    def _target(self, frame_index: int, voiced: bool, loudness: float) -> tuple[float, float, float]:
        shift = int(self.sample_rate * self.anticipation_ms / 1000)
        lo = self._clock.start(frame_index) + shift
        hi = self._clock.start(frame_index + 1) + shift
        pending, active = self._pending, self._active
        while pending and pending[0][0] < hi:
            start, seq, end, viseme = heapq.heappop(pending)
            heapq.heappush(active, (end, seq, start, viseme))
        while active and active[0][0] <= lo:
            heapq.heappop(active)
        if not voiced:
            return VISEME_POSE[cpb.VISEME_REST]
        acc = [0.0, 0.0, 0.0]
        total = 0.0
        closed = 0.0
        for end, _seq, start, viseme in itertools.islice(active, MAX_OVERLAP):
            overlap = min(hi, end) - max(lo, start)
            if overlap > 0:
                pose = VISEME_POSE.get(viseme, VISEME_POSE[cpb.VISEME_MID])
                for k in range(3):
                    acc[k] += pose[k] * overlap
                total += overlap
                if viseme == cpb.VISEME_CLOSED:
                    closed += overlap
        if total == 0:
            pose = VISEME_POSE[cpb.VISEME_MID]
        else:
            pose = (acc[0] / total, acc[1] / total, acc[2] / total)
        if closed >= (hi - lo) / 3:
            return VISEME_POSE[cpb.VISEME_CLOSED]
        return (pose[0] * min(1.0, max(MIN_OPEN, loudness)), pose[1], pose[2])

    def step(self, frame_index: int, voiced: bool, loudness: float) -> MouthShape:
        """The mouth of frame ``frame_index`` (increasing) from its activity (``voiced``, ``loudness``)."""
        target = self._target(frame_index, voiced, loudness)
        dt = 1000.0 / self.fps
        out = []
        for cur, tgt in zip(self._pose, target, strict=True):
            tau = self.attack_ms if abs(tgt - 0.5) > abs(cur - 0.5) or tgt > cur else self.release_ms
            a = 1.0 - math.exp(-dt / max(tau, 1e-3))
            out.append(cur + (tgt - cur) * a)
        # closing for a bilabial is fast: the lips must meet within the frame
        if target == VISEME_POSE[cpb.VISEME_CLOSED]:
            out[0] = min(out[0], 0.1 * self._pose[0])
        self._pose = (out[0], out[1], out[2])
        return MouthShape(open=out[0], width=out[1], round=out[2])
