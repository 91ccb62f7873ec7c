"""Per-frame cost of the default (mesh-warp) backend: render + blend, then the session's compose
step (idle life, resize, I420 conversion), on the packaged default avatar, and the mean process CPU
of a whole session frame, speaking and idle (``frame_cpu``); and, per avatar (the
default portrait and the transformed test portraits of ``talkmesh.bench.face_cases``), the landmark
time per registered frame, the render time per frame and the lip-sync figure: the open-mouth area
on the decoded output video against the speech energy, correlated at the best lag within +-2
frames, spoken through the five stages in this process.

    python -m talkmesh.bench.stages.renderer
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from services.renderer.avatars import DEFAULT_ALIAS, DEFAULT_AVATAR_FILE, AvatarStore, default_avatar_bytes
from services.renderer.avatars.analysis import FaceChoice
from services.renderer.backends.base import Avatar, FrameJob, MouthShape
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from services.renderer.frames import I420Regions, encode_pixels, output_size, resize
from services.renderer.idle import IdleLife
from services.renderer.session import ping_pong
from talkmesh.bench.face_cases import Case, portrait, transformed_portraits, write_avatar
from talkmesh.bench.lipsync import dark_area, decode, energy, lag_correlations, mouth_region
from talkmesh.bench.speakers import InProcessSpeaker
from talkmesh.client import TalkmeshClient
from talkmesh.common.inprocess import InProcessContext
from talkmesh.common.telemetry import Telemetry
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import types_pb2 as api

LIPSYNC_SENTENCE = "Papa, bring me the big blue map. ... Now open wide and say: ah, oh, ee!"
FACE_CASES = ("rotated+20", "mirrored", "tight-crop", "twice-second", "scene-4000x3000", "video-pan-rotate")


def run_bench(quick: bool = False, sizes: tuple[str, ...] = ("512", "360p", "720p")) -> dict[str, Any]:
    frames = 100 if quick else 500
    with tempfile.TemporaryDirectory() as cache:
        config = RendererConfig(avatars=AvatarConfig(cache_dir=cache))
        backend = VisemeBackend(config, Telemetry("renderer-bench"))
        store = AvatarStore(config.avatars, {"viseme": backend})
        data = default_avatar_bytes()
        start = time.perf_counter()
        avatar, _ = store.register(data, DEFAULT_AVATAR_FILE, DEFAULT_ALIAS)
        precompute_ms = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        store.register(data, DEFAULT_AVATAR_FILE, DEFAULT_ALIAS)
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
        result.update(frame_cpu(backend, avatar, jobs, output_size("512", avatar.size)))
    result["faces"] = faces_bench(quick)
    return result


def frame_cpu(backend: VisemeBackend, avatar: Avatar, jobs: list[FrameJob], size: tuple[int, int]) -> dict[str, float]:
    """Mean process CPU per frame of what the renderer does for each frame of a session (render,
    idle life at consecutive ticks, resize, I420: at the avatar's own size, of the regions that
    changed, as the session does), speaking (a new mouth every frame) and idle (the photo): a
    mean, so the ticks that re-render the moving body are counted."""
    out: dict[str, float] = {}
    for label, speaking in (("speaking", True), ("idle", False)):
        idle = IdleLife(avatar, 25.0)
        regions = I420Regions() if size == avatar.size else None
        start = time.process_time()
        for i, job in enumerate(jobs):
            frame = idle.apply(np.asarray(backend.render(avatar, [job])[0] if speaking else avatar.frames[0]), i)
            if regions is not None:
                regions.encode(frame, idle.base, idle.redone)
            else:
                encode_pixels(resize(frame, size), cpb.PIXEL_FORMAT_I420)
        out[f"{label}_frame_cpu_ms_mean"] = round(1000 * (time.process_time() - start) / len(jobs), 3)
    return out


def faces_bench(quick: bool = False, names: tuple[str, ...] = ("default", *FACE_CASES)) -> dict[str, Any]:
    """Per avatar: landmark ms per registered frame, render ms per frame (median over random mouth
    poses), and the lip-sync figure on the decoded video (idle motion off: the mouth alone)."""
    cases = [Case("default", [portrait()], [np.eye(2, 3)]), *transformed_portraits()]
    cases = [c for c in cases if c.name in names]
    renders = 50 if quick else 200
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(Path(tmp) / "avatars"),
            "TALKMESH_RENDERER__VISEME__IDLE_MOTION": "false",
        }

        async def run() -> None:
            speaker = await InProcessSpeaker.start(env)
            try:
                renderer = speaker.services["renderer"]
                store: AvatarStore = renderer.store
                backend = store.backends["viseme"]
                for case in cases:
                    path = write_avatar(case, Path(tmp))
                    frames = np.stack(case.frames)
                    choice = FaceChoice(index=case.face_index)
                    store.faces.analyse(frames[:1], choice)  # warm the interpreters
                    landmark_ms = []
                    for _ in range(1 if len(frames) > 1 else 3):
                        t = time.perf_counter()
                        store.faces.analyse(frames, choice)
                        landmark_ms.append(1000 * (time.perf_counter() - t) / len(frames))
                    avatar, _ = await asyncio.to_thread(
                        store.register, path.read_bytes(), path.name, case.name, choice=choice, framing="as_is"
                    )  # (the whole picture, as the case's transforms and earlier runs have it)
                    rng = np.random.default_rng(0)
                    render_ms = []
                    for i, (o, w, r) in enumerate(rng.uniform(0, 1, (renders, 3))):
                        job = FrameJob("bench", i, i % len(frames), True, -20.0, mouth=MouthShape(o, w, r))
                        t = time.perf_counter()
                        backend.render(avatar, [job])
                        render_ms.append(1000 * (time.perf_counter() - t))
                    size = "native" if frames[0].size < 2e6 else "720p"
                    figure = await _lipsync(speaker, avatar, size, Path(tmp) / f"{case.name}.mp4")
                    out[case.name] = {
                        "size": f"{frames.shape[2]}x{frames.shape[1]}x{len(frames)}",
                        "landmark_ms_per_frame": round(statistics.median(landmark_ms), 1),
                        "render_ms_median": round(statistics.median(render_ms), 2),
                        "render_ms_p95": round(float(np.percentile(render_ms, 95)), 2),
                        **figure,
                    }
            finally:
                await speaker.close()

        asyncio.run(run())
    return out


async def _lipsync(speaker: Any, avatar: Avatar, size: str, path: Path) -> dict[str, Any]:
    """Speaks the sentence with ``avatar`` into ``path``; the open-mouth area per output frame (its
    avatar frame's mouth box, beyond that frame's own dark pixels) against the speech energy."""
    request = TalkmeshClient.request(LIPSYNC_SENTENCE, avatar=avatar.id, size=size, container=api.CONTAINER_MP4)
    with path.open("wb") as fh:
        async for chunk in speaker.servicer.Speak(request, InProcessContext()):
            if chunk.WhichOneof("kind") == "media" and chunk.media.data:
                fh.write(chunk.media.data)
    frames, audio, rate = decode(path)
    oh, ow = frames[0].shape[:2]
    scale = np.array([ow / avatar.size[0], oh / avatar.size[1]], np.float32)
    assert avatar.landmarks is not None
    mouth = np.zeros(len(frames))
    for i, frame in enumerate(frames):
        k = ping_pong(i, len(avatar.frames))
        rest = resize(np.asarray(avatar.frames[k]), (ow, oh))
        mouth[i] = dark_area([frame], rest, mouth_region(avatar.landmarks[k] * scale, (ow, oh)))[0]
    speech = energy(audio, rate, len(frames))
    lags = lag_correlations(mouth, speech)
    best = max(lags, key=lambda k: lags[k])
    silent = speech < 10 ** (-50 / 20)
    closed = mouth[silent] <= 0.05 * max(1.0, float(mouth.max()))
    return {
        "lipsync_r": round(lags[best], 3),
        "lipsync_lag_frames": best,
        "lipsync_r_lag0": round(lags[0], 3),
        "closed_in_silence": round(float(closed.mean()), 3) if silent.any() else None,
        "frames": len(frames),
    }


if __name__ == "__main__":
    print(json.dumps(run_bench(), indent=2))
