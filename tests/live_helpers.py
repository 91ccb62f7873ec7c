"""Recording a live session for the tests: every message with the time it arrived, and the media
decoded with an independent decoder (FFmpeg through PyAV)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from talkmesh.client import LiveSession
from talkmesh.v1 import live_pb2 as lpb


@dataclass
class Recorded:
    at: float
    msg: lpb.LiveServerMessage

    @property
    def kind(self) -> str:
        return self.msg.WhichOneof("kind") or ""

    @property
    def event(self) -> str:
        return self.msg.event.WhichOneof("kind") or "" if self.kind == "event" else ""


@dataclass
class Recorder:
    """Consumes a live session in the background."""

    session: LiveSession
    messages: list[Recorded] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    t0: float = field(default_factory=time.monotonic)

    def start(self) -> Recorder:
        self.task = asyncio.create_task(self._run(), name="live-recorder")
        return self

    async def _run(self) -> None:
        async for msg in self.session:
            self.messages.append(Recorded(time.monotonic(), msg))

    async def wait_for(self, predicate, timeout: float = 20.0) -> Recorded:  # type: ignore[no-untyped-def]
        """The first recorded message matching ``predicate`` (waits for it)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for rec in self.messages[seen:]:
                if predicate(rec):
                    return rec
            seen = len(self.messages)
            if self.task is not None and self.task.done():
                self.task.result()
                break
            await asyncio.sleep(0.01)
        raise AssertionError(f"no matching live message within {timeout} s; got {[r.kind for r in self.messages]}")

    async def wait_event(self, name: str, turn_id: str | None = None, timeout: float = 20.0) -> Recorded:
        def match(r: Recorded) -> bool:
            if r.event != name:
                return False
            body = getattr(r.msg.event, name)
            return turn_id is None or getattr(body, "turn_id", None) == turn_id

        return await self.wait_for(match, timeout)

    async def finish(self, timeout: float = 30.0) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, timeout)

    @property
    def started(self) -> lpb.SessionStarted:
        return next(r.msg.started for r in self.messages if r.kind == "started")

    def media(self) -> list[lpb.LiveMedia]:
        return [r.msg.media for r in self.messages if r.kind == "media"]

    def fragments(self) -> list[Recorded]:
        return [r for r in self.messages if r.kind == "media" and not r.msg.media.init_segment]

    def events(self, name: str) -> list[Recorded]:
        return [r for r in self.messages if r.event == name]

    def write(self, path: Path) -> Path:
        path.write_bytes(b"".join(m.data for m in self.media()))
        return path


@dataclass
class Decoded:
    frames: list[np.ndarray]
    pts: list[int]
    time_base: Fraction
    audio: np.ndarray
    audio_rate: int

    @property
    def video_seconds(self) -> float:
        return len(self.frames) * float(self.frame_seconds)

    @property
    def frame_seconds(self) -> Fraction:
        steps = {b - a for a, b in zip(self.pts, self.pts[1:], strict=False)}
        (step,) = steps
        return step * self.time_base

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / self.audio_rate


def decode(path: Path, *, bgr: bool = True) -> Decoded:
    frames, pts = [], []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        tb = stream.time_base
        for f in c.decode(stream):
            frames.append(f.to_ndarray(format="bgr24" if bgr else "gray"))
            pts.append(int(f.pts))
    audio, rate = [], 0
    with av.open(str(path)) as c:
        for a in c.decode(c.streams.audio[0]):
            audio.append(a.to_ndarray().astype(np.float32).reshape(-1))
            rate = a.sample_rate
    assert tb is not None
    return Decoded(frames, pts, Fraction(tb), np.concatenate(audio) if audio else np.zeros(0), rate)


def mouth_openness(frames: list[np.ndarray]) -> np.ndarray:
    """Open-mouth area per frame (dark pixels inside the lips, beyond those of frame 0), as a
    fraction of the mouth box; the box comes from the face mesh on frame 0 (a resting frame)."""
    from services.renderer.avatars.analysis import FaceAnalyzer
    from services.renderer.avatars.face_models import load_face_models, roi_from_eyes
    from talkmesh.bench.lipsync import dark_area, mouth_region

    models = load_face_models()
    assert models is not None, "the face models are installed with the renderer"
    analyzer = FaceAnalyzer(models)
    (det, *_rest) = analyzer.detect(frames[0])
    pts, _ = analyzer.mesh(frames[0], roi_from_eyes(det.box, det.keypoints[0], det.keypoints[1]))
    h, w = frames[0].shape[:2]
    box = mouth_region(pts, (w, h))
    area = max(1, (box[2] - box[0]) * (box[3] - box[1]))
    return dark_area(frames, frames[0], box) / area
