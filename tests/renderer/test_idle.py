"""Idle life of still photos: blinks close the real eyelids, the sway is subtle and continuous."""

from __future__ import annotations

import concurrent.futures
import itertools
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.renderer import idle as idle_module
from services.renderer.avatars import AvatarStore, default_avatar_bytes
from services.renderer.backends.base import FrameJob, MouthShape
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from services.renderer.frames import I420Regions, encode_pixels
from services.renderer.idle import BLINK_CURVE, STEP_PX, IdleLife, changed_box, motion
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import common_pb2 as cpb

PORTRAIT = default_avatar_bytes()


def _avatar(tmp_path: Path):
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(tmp_path)))
    store = AvatarStore(cfg.avatars, {"viseme": VisemeBackend(cfg, Telemetry("renderer"))})
    return store.register(PORTRAIT, "me.png")[0]


def _dark(img: np.ndarray) -> int:
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return int((gray < 70).sum())


def test_eyes_are_found_inside_the_upper_face(tmp_path):
    avatar = _avatar(tmp_path)
    life = IdleLife(avatar, 25.0)
    x1, y1, x2, y2 = (int(v) for v in avatar.face_boxes[0])
    (lx, ly), (rx, ry) = avatar.extras["idle"]["eyes"]
    assert x1 < lx < (x1 + x2) / 2 < rx < x2
    assert y1 < ly < (y1 + y2) / 2 and y1 < ry < (y1 + y2) / 2
    assert all(e.valid for e in life.eyes)


def _blink_ticks(life: IdleLife, n: int = 2000) -> list[int]:
    return [t for t in range(n) if life.closure(t) == 1.0]


def test_a_blink_covers_the_irises_with_the_lids_and_reopens(tmp_path):
    avatar = _avatar(tmp_path)
    life = IdleLife(avatar, 25.0)
    frame = np.asarray(avatar.frames[0])
    closed_tick = _blink_ticks(life)[0]
    for eye in life.eyes:
        open_dark = _dark(frame[eye.y1 : eye.y2, eye.x1 : eye.x2])
        shut = np.array(frame, copy=True)
        eye.close(shut, 1.0)
        shut_dark = _dark(shut[eye.y1 : eye.y2, eye.x1 : eye.x2])
        # iris and pupil (the dark pixels) mostly disappear under the lid; the lash line stays
        assert shut_dark < 0.6 * open_dark, (open_dark, shut_dark)
    start = closed_tick - BLINK_CURVE.index(1.0)
    assert [life.closure(start + k) for k in range(len(BLINK_CURVE))] == list(BLINK_CURVE)
    assert life.closure(start - 1) == 0.0 and life.closure(start + len(BLINK_CURVE)) == 0.0


def test_blinks_come_at_irregular_intervals_and_never_on_a_clips_first_frame(tmp_path):
    avatar = _avatar(tmp_path)
    life = IdleLife(avatar, 25.0)
    starts = [t - BLINK_CURVE.index(1.0) for t in _blink_ticks(life, 3000)]
    gaps = np.diff(starts)
    assert len(starts) >= 10
    assert gaps.min() >= 2 * 25 and gaps.max() <= 6 * 25
    assert len(set(gaps.tolist())) >= 5  # not a fixed period
    # a clip that starts on a blink's first frame (or inside it) shows no blink at its start
    for clip_start in (starts[3], starts[3] + 1):
        clipped = IdleLife(avatar, 25.0, clip_start=clip_start)
        assert all(clipped.closure(clip_start + k) == 0.0 for k in range(len(BLINK_CURVE)))
        assert clipped.closure(starts[4] + BLINK_CURVE.index(1.0)) == 1.0  # later blinks still come


def test_sway_is_subtle_and_continuous_and_leaves_the_background_still(tmp_path):
    avatar = _avatar(tmp_path)
    life = IdleLife(avatar, 25.0)
    frame = np.asarray(avatar.frames[0])
    ticks = [t for t in range(10, 60) if life.closure(t) == 0.0]
    frames = [life.apply(frame, t).astype(np.float32) for t in ticks]
    # it moves ...
    assert np.abs(frames[0] - frames[len(frames) // 2]).mean() > 0.3
    # ... by less than a pixel's worth between consecutive frames, and stays close to the photo
    for a, b in itertools.pairwise(frames):
        assert np.abs(a - b).mean() < 3.0
    assert max(np.abs(f - frame).mean() for f in frames) < 8.0
    # the background away from the head and body does not move at all (top corners of the photo)
    for f in frames:
        assert np.array_equal(f[:40, :40], frame[:40, :40].astype(np.float32))
        assert np.array_equal(f[:40, -40:], frame[:40, -40:].astype(np.float32))


def test_the_fast_path_equals_moving_the_whole_frame_and_steps_stay_small(tmp_path):
    """apply() re-renders the moved body on key ticks only and redoes just the regions that differ
    from the photo (a drawn mouth, blinking eyes): the result equals remapping the whole frame."""
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(tmp_path)))
    backend = VisemeBackend(cfg, Telemetry("renderer"))
    store = AvatarStore(cfg.avatars, {"viseme": backend})
    avatar = store.register(PORTRAIT, "me.png")[0]
    life = IdleLife(avatar, 25.0)
    photo = np.asarray(avatar.frames[0])
    blink = _blink_ticks(life)[0]
    ticks = [0, 1, 2, 3, 37, 401, blink - 1, blink, blink + 1, life.loop + 5]
    for i, t in enumerate(ticks):
        job = FrameJob("s", i, 0, True, -20.0, mouth=MouthShape(open=0.3 + 0.07 * i, width=0.5 + 0.04 * i))
        spoken = backend.render(avatar, [job])[0]
        for frame in (photo, spoken):
            assert np.array_equal(life.apply(frame, t), life.reference(frame, t)), t
    # the maps (interpolated from a coarse grid) are the mask-weighted similarity of the tick's key
    bx1, by1, bx2, by2 = life.mask_box
    xx, yy = np.meshgrid(np.arange(bx1, bx2, dtype=np.float64), np.arange(by1, by2, dtype=np.float64))
    for t in (0, 123, 555):
        (a, b, c), (d, e, f) = motion(np.array(life.key(t)), life.loop)
        rx, ry = xx - life.centre[0], yy - life.centre[1]
        exact = np.stack([xx + life.mask * (a * rx + b * ry + c), yy + life.mask * (d * rx + e * ry + f)], -1)
        assert np.abs(life.maps(t) - exact).max() < 0.05
    # the motion loops exactly, and between key ticks it holds: consecutive frames never jump
    assert np.array_equal(life.apply(photo, 5), life.apply(photo, life.loop + 5))
    keys = life.keys
    assert len(keys) > life.loop / 8  # re-rendered often enough to look continuous ...
    assert len(keys) < life.loop / 2  # ... and rarely enough to save most of the work
    # no pixel is ever shown more than STEP_PX away from where the motion puts it at that tick
    corners = np.array([[x - life.centre[0], y - life.centre[1], 1.0] for x in (bx1, bx2) for y in (by1, by2)])
    t = np.arange(life.loop)
    shown = motion(np.array([life.key(int(k)) for k in t]), life.loop) @ corners.T
    exact = motion(t, life.loop) @ corners.T
    assert np.abs(shown - exact).max() <= STEP_PX
    assert np.abs(exact).max() > 1.0  # and the motion itself is not negligible


def test_sessions_of_one_avatar_share_the_moved_photos_and_show_the_same_frames(tmp_path):
    """A key tick's moved photo is made once per avatar: a second session finds every key the
    first one made, and every frame equals one made without sharing (another avatar object of the
    same photo, cache off). The budget bounds how many are kept."""
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(tmp_path)))
    backend = VisemeBackend(cfg, Telemetry("renderer"))
    store = AvatarStore(cfg.avatars, {"viseme": backend})
    avatar = store.register(PORTRAIT, "me.png")[0]
    alone = _avatar(tmp_path / "another-store")  # the same photo, another avatar object
    assert alone is not avatar
    photo = np.asarray(avatar.frames[0])
    ticks = [*range(60), 401, 402]
    keys = {IdleLife(alone, 25.0).key(t) for t in ticks}
    heard: list[list[bool]] = [[], []]
    for i in range(2):
        life = IdleLife(avatar, 25.0, cache_bytes=64 * 2**20, on_cache=heard[i].append)
        solo = IdleLife(alone, 25.0)  # its own moved photos, none shared (cache_bytes 0)
        for t in ticks:
            job = FrameJob("s", t, 0, True, -20.0, mouth=MouthShape(open=0.2 + 0.01 * (t % 30), width=0.5))
            spoken = backend.render(avatar, [job])[0]
            for frame in (photo, spoken):
                assert np.array_equal(life.apply(frame, t), solo.apply(frame, t)), (i, t)
    assert heard == [[False] * len(keys), [True] * len(keys)]  # made once, then found
    assert len(avatar.extras["idle"]["moved"]) == len(keys)
    assert len(alone.extras["idle"]["moved"]) == 0
    off: list[bool] = []
    IdleLife(alone, 25.0, on_cache=off.append).apply(photo, 0)
    assert off == []  # no sharing, nothing to count (a dashboard would read all misses as broken)

    budget = _avatar(tmp_path / "a-third-store")
    life = IdleLife(budget, 25.0, cache_bytes=3 * photo.nbytes)  # three moved photos
    for t in ticks:
        life.apply(photo, t)
    assert len(budget.extras["idle"]["moved"]) == 3


def test_tick_0_stays_shared_while_streams_keep_starting(tmp_path):
    """A long stream walks through more keys than the budget keeps; new streams starting meanwhile
    (at tick 0) keep finding tick 0's photo, because finding it counts as a use."""
    avatar = _avatar(tmp_path)
    photo = np.asarray(avatar.frames[0])
    budget = 10 * photo.nbytes
    long = IdleLife(avatar, 25.0, cache_bytes=budget)
    openers: list[bool] = []
    keys_seen = 0
    for t in range(long.loop // 2):
        before = long._key
        long.apply(photo, t)
        if long._key != before:
            keys_seen += 1
            if keys_seen % 5 == 0:  # a new stream starts
                IdleLife(avatar, 25.0, cache_bytes=budget, on_cache=openers.append).apply(photo, 0)
    assert keys_seen > 50 and len(openers) > 10
    assert all(openers)


def test_a_failed_key_tick_leaves_no_mixed_state(tmp_path, monkeypatch):
    """A remap that fails on a key change leaves the session at its previous key, whole: the next
    frame of that tick is the one a fresh session makes."""
    avatar = _avatar(tmp_path)
    photo = np.asarray(avatar.frames[0])
    life = IdleLife(avatar, 25.0)
    life.apply(photo, 0)
    tick = next(t for t in range(1, 50) if life.key(t) != life.key(0))
    real = idle_module._remap

    def broken(src, maps):
        raise MemoryError("no room for the moved photo")

    monkeypatch.setattr(idle_module, "_remap", broken)
    with pytest.raises(MemoryError):
        life.apply(photo, tick)
    monkeypatch.setattr(idle_module, "_remap", real)
    job = FrameJob("s", 0, 0, True, -20.0, mouth=MouthShape(open=0.4, width=0.6))
    spoken = VisemeBackend(RendererConfig(), Telemetry("renderer")).render(avatar, [job])[0]
    fresh = IdleLife(_avatar(tmp_path / "fresh"), 25.0)
    for frame in (photo, spoken):
        assert np.array_equal(life.apply(frame, tick), fresh.apply(frame, tick))


def test_sessions_opening_at_once_on_a_new_avatar_share_one_cache(tmp_path):
    """Sessions are built in worker threads: the first ones of an avatar, built at the same moment
    (listeners starting together after a restart), must end up with the same shared photos."""
    avatar = _avatar(tmp_path)
    start = threading.Barrier(4)

    def build(_: int) -> IdleLife:
        start.wait()
        return IdleLife(avatar, 25.0, cache_bytes=64 * 2**20)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        lives = list(pool.map(build, range(4)))
    assert all(life.shared is avatar.extras["idle"]["moved"] for life in lives)


@pytest.mark.parametrize("width", [512, 511, 7])
@pytest.mark.parametrize("channels", [3, 1])
def test_changed_box_holds_every_changed_pixel_and_little_else(width, channels):
    rng = np.random.default_rng(width + channels)
    shape = (37, width, 3) if channels == 3 else (37, width)
    rest = rng.integers(0, 255, shape, dtype=np.uint8)
    assert changed_box(rest.copy(), rest) is None
    assert changed_box(rest, rest) is None
    for _ in range(40):
        x1, x2 = sorted(int(v) for v in rng.integers(0, width + 1, 2))
        y1, y2 = sorted(int(v) for v in rng.integers(0, 38, 2))
        if x1 == x2 or y1 == y2:
            continue
        frame = rest.copy()
        frame[y1:y2, x1:x2] ^= 1
        bx1, by1, bx2, by2 = changed_box(frame, rest)  # type: ignore[misc]
        assert (by1, by2) == (y1, y2)
        assert x1 - 8 <= bx1 <= x1 and x2 <= bx2 <= min(width, x2 + 8)
    flipped = rest[:, ::-1]  # not contiguous: compared byte by byte
    frame = np.ascontiguousarray(flipped)
    frame[3, 2] ^= 1
    assert changed_box(frame, flipped) == (2, 3, 3, 4)


def test_i420_of_the_changed_regions_equals_converting_the_whole_frame(tmp_path):
    """The session converts only what differs from the key tick's moved photo (I420Regions): over
    key ticks, blinks, speech and silence its bytes equal the whole frame's conversion, and a frame
    equal to the moved photo re-uses its bytes."""
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(tmp_path)))
    backend = VisemeBackend(cfg, Telemetry("renderer"))
    store = AvatarStore(cfg.avatars, {"viseme": backend})
    avatar = store.register(PORTRAIT, "me.png")[0]
    life = IdleLife(avatar, 25.0)
    regions = I420Regions()
    photo = np.asarray(avatar.frames[0])
    blink = _blink_ticks(life)[0]
    ticks = sorted({*range(12), *range(blink - 2, blink + len(BLINK_CURVE) + 1), 401, 402})
    reused = converted = 0
    for i, t in enumerate(ticks):
        job = FrameJob("s", i, 0, True, -20.0, mouth=MouthShape(open=0.2 + 0.05 * (i % 12), width=0.4 + 0.03 * i))
        for src in (photo, backend.render(avatar, [job])[0]):
            frame = life.apply(src, t)
            assert all(v % 2 == 0 for box in life.redone for v in box)
            data = regions.encode(frame, life.base, life.redone)
            assert data == encode_pixels(frame, cpb.PIXEL_FORMAT_I420), (t, life.redone)
            slot = np.full((frame.shape[0] * 3 // 2, frame.shape[1]), 7, np.uint8)  # a used frame ring slot
            assert regions.encode(frame, life.base, life.redone, out=slot) is None
            assert slot.tobytes() == data
            reused += frame is life.base
            converted += bool(life.redone)
    assert reused and converted  # both paths ran: silent frames between blinks, and redone regions
