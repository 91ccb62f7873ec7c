"""The mesh-warp renderer's fast path for still photos: the pose grid placed on the photo once gives
the frames the per-frame placement gives, and is kept only while it is small."""

from __future__ import annotations

import numpy as np

from services.renderer.avatars import AvatarStore, default_avatar_bytes
from services.renderer.backends import mesh_warp
from services.renderer.backends.base import FrameJob, MouthShape
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from talkmesh.common.telemetry import Telemetry

PORTRAIT = default_avatar_bytes()


def test_placed_grid_draws_what_per_frame_placement_draws(tmp_path, monkeypatch):
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(tmp_path)))
    backend = VisemeBackend(cfg, Telemetry("renderer"))
    avatar = AvatarStore(cfg.avatars, {"viseme": backend}).register(PORTRAIT, "me.png")[0]
    rig = backend.rig(avatar)
    placed = backend.placed(avatar, rig)
    assert placed is not None and backend.placed(avatar, rig) is placed  # placed once, kept
    photo = np.asarray(avatar.frames[0])
    rng = np.random.default_rng(3)
    shapes = [MouthShape(1.0, 1.0, 0.0), MouthShape(1.0, 0.0, 1.0), MouthShape(0.25, 0.5, 0.0)]
    shapes += [MouthShape(float(o), float(w), float(r)) for o, w, r in rng.uniform(0, 1, (20, 3))]
    for shape in shapes:
        fast = backend.render(avatar, [FrameJob("s", 0, 0, True, -20.0, mouth=shape)])[0]
        slow = mesh_warp.draw(photo, rig, 0, shape)
        assert not np.array_equal(fast, photo)
        # the same warp, mixed after placing instead of before: equal up to float rounding
        assert np.abs(fast.astype(int) - slow).max() <= 4, shape
        assert np.abs(fast.astype(int) - slow).mean() < 0.01, shape
    # a face so large that its grid would not fit the budget is placed per frame instead
    monkeypatch.setattr("services.renderer.backends.viseme.MAX_PLACED_BYTES", 1 << 10)
    avatar.extras.pop("viseme.placed")
    assert backend.placed(avatar, rig) is None
    big = backend.render(avatar, [FrameJob("s", 0, 0, True, -20.0, mouth=shapes[0])])[0]
    assert np.array_equal(big, mesh_warp.draw(photo, rig, 0, shapes[0]))
