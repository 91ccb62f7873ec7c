"""Per-frame cost of the default (procedural viseme) backend: render + blend, then the session's
compose step (idle life, resize, I420 conversion), on the packaged default avatar.

    python -m talkmesh.bench.stages.renderer
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from importlib import resources
from typing import Any

import numpy as np

from services.renderer.avatars import AvatarStore
from services.renderer.backends.base import FrameJob, MouthShape
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from services.renderer.frames import encode_pixels, output_size, resize
from services.renderer.idle import IdleLife
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import common_pb2 as cpb


def run_bench(quick: bool = False, sizes: tuple[str, ...] = ("512", "360p", "720p")) -> dict[str, Any]:
    frames = 100 if quick else 500
    with tempfile.TemporaryDirectory() as cache:
        config = RendererConfig(avatars=AvatarConfig(cache_dir=cache))
        backend = VisemeBackend(config, Telemetry("renderer-bench"))
        store = AvatarStore(config.avatars, {"viseme": backend})
        data = resources.files("services.renderer").joinpath("assets/default_avatar.png").read_bytes()
        start = time.perf_counter()
        avatar, _ = store.register(data, "default_avatar.png", "default")
        precompute_ms = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        store.register(data, "default_avatar.png", "default")
        cached_ms = 1000 * (time.perf_counter() - start)
        rng = np.random.default_rng(0)
        jobs = [
            FrameJob("bench", i, 0, True, -20.0, mouth=MouthShape(float(o), float(w), float(r)))
            for i, (o, w, r) in enumerate(rng.uniform(0, 1, (frames, 3)))
        ]
        idle = IdleLife(avatar, 25.0)
        result: dict[str, Any] = {
            "avatar": f"{avatar.size[0]}x{avatar.size[1]}",
            "precompute_ms": round(precompute_ms, 1),
            "second_registration_ms": round(cached_ms, 2),
        }
        render_ms = []
        for job in jobs:
            t = time.perf_counter()
            backend.render(avatar, [job])
            render_ms.append(1000 * (time.perf_counter() - t))
        result["render_blend_ms_median"] = round(statistics.median(render_ms), 3)
        result["render_blend_ms_p95"] = round(float(np.percentile(render_ms, 95)), 3)
        rendered = backend.render(avatar, jobs[:1])[0]
        for preset in sizes:
            size = output_size(preset, avatar.size)
            compose_ms = []
            for i in range(frames):
                t = time.perf_counter()
                encode_pixels(resize(idle.apply(rendered, i), size), cpb.PIXEL_FORMAT_I420)
                compose_ms.append(1000 * (time.perf_counter() - t))
            result[f"compose_{preset}_ms_median"] = round(statistics.median(compose_ms), 3)
            result[f"total_{preset}_ms_median"] = round(
                result["render_blend_ms_median"] + statistics.median(compose_ms), 3
            )
    return result


if __name__ == "__main__":
    print(json.dumps(run_bench(), indent=2))
