"""The default backend: moves the person's own lips and jaw, no model weights needed.

Per avatar it builds a mouth rig from the face-mesh landmarks (``mesh_warp``): a piecewise-affine
warp of the lower face precomputed for a grid of mouth poses, and an inner-mouth colour taken from
the avatar's own darkest lip colours. Per frame it interpolates the pose's warp, applies it to the
small region around the mouth with one ``remap`` and fills the gap opened between the lips. Frames
of a video where the face was lost are shown as they are, never animated somewhere else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.renderer.backends import mesh_warp
from services.renderer.backends.base import Avatar, FrameJob, MouthShape, RenderBackend
from services.renderer.config import RendererConfig
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import audio_features_pb2 as fpb

# A still photo's placed pose grid is kept in memory up to this size (16 bytes per pixel and pose):
# the default portrait's takes 2.5 MB.
MAX_PLACED_BYTES = 32 << 20


class VisemeBackend(RenderBackend):
    name = "viseme"
    feature_type = fpb.FEATURE_TYPE_ACTIVITY

    def __init__(self, config: RendererConfig, telemetry: Telemetry) -> None:
        self.config = config
        self.telemetry = telemetry

    def precompute_key(self) -> str:
        """The rig's version: a rig cached under another (older geometry) is built again."""
        return mesh_warp.RIG_VERSION

    def prepare(self, avatar: Avatar) -> None:
        if avatar.landmarks is None:  # an entry prepared before landmarks existed: fit the template
            from services.renderer.avatars.analysis import template_landmarks

            avatar.landmarks = template_landmarks(avatar.mouth_boxes.astype(np.float32))
        avatar.extras[self.name] = mesh_warp.build_rig(avatar).arrays()
        avatar.extras.pop(f"{self.name}.placed", None)

    def rig(self, avatar: Avatar) -> mesh_warp.Rig:
        if self.name not in avatar.extras:
            self.prepare(avatar)
        return mesh_warp.Rig.from_arrays(avatar.extras[self.name])

    def placed(self, avatar: Avatar, rig: mesh_warp.Rig) -> mesh_warp.Placed | None:
        """A still photo's pose grid carried onto the photo once (kept in memory with the avatar),
        so a frame only mixes four placed maps and samples the mouth's box. Video avatars place
        each frame's one pose instead (their head moves from frame to frame)."""
        if len(avatar.frames) != 1 or not avatar.animated(0):
            return None
        box = mesh_warp.region(rig, 0, avatar.size)
        poses = rig.maps.shape[0] * rig.maps.shape[1]
        if box is None or (box[2] - box[0]) * (box[3] - box[1]) * poses * 16 > MAX_PLACED_BYTES:
            return None  # a face thousands of pixels wide: placed per frame, not kept
        key = f"{self.name}.placed"
        if key not in avatar.extras:  # two threads may both compute it: the same result
            avatar.extras[key] = mesh_warp.place(rig, 0, avatar.size)
        placed: mesh_warp.Placed | None = avatar.extras[key]
        return placed

    def render(self, avatar: Avatar, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        rig = self.rig(avatar)
        placed = self.placed(avatar, rig)
        out = []
        for job in jobs:
            frame = np.asarray(avatar.frames[job.avatar_frame])
            if avatar.animated(job.avatar_frame):
                frame = mesh_warp.draw(frame, rig, job.avatar_frame, job.mouth or MouthShape(), placed)
            out.append(frame)  # the avatar's own (read-only) frame when nothing moved
        return out
