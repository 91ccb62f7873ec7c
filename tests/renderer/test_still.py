"""A still avatar (RenderConfig.idle_motion OFF): no blinks and no head motion while silent, only the
mouth moves with speech; a video avatar holds one frame; the server's switch (viseme.idle_motion)
wins over a request's ON; an unknown value is INVALID_ARGUMENT naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import grpc
import numpy as np
import pytest

from services.renderer.main import create_service, load_config
from talkmesh.common.channel import create_channel
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import renderer_pb2_grpc
from tests.media import drifting_clip

SR, FPS, SIDE = 16000, 25, 512
SILENT = [False] * 40  # 1.6 s of idling: the head moves every few frames
# an /a/ between two silences
SPEECH = [False] * 5 + [True] * 10 + [False] * 5

Renderer = Callable[..., AbstractAsyncContextManager[renderer_pb2_grpc.RendererStub]]


@pytest.fixture
def renderer(tmp_path: Path) -> Renderer:
    """A renderer on port 0 with its defaults (idle motion on) or ``idle_motion`` as given."""

    @asynccontextmanager
    async def start(idle_motion: bool = True) -> AsyncIterator[renderer_pb2_grpc.RendererStub]:
        env = {
            "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache"),
            "TALKMESH_RENDERER__VISEME__IDLE_MOTION": str(idle_motion).lower(),
        }
        service = create_service(load_config(None, env=env), Telemetry("renderer"))
        async with serve(service) as host, create_channel(host.address) as ch:
            yield renderer_pb2_grpc.RendererStub(ch)

    return start


async def _render(
    stub: renderer_pb2_grpc.RendererStub, voiced: list[bool], avatar_id: str = "", **config: object
) -> list[np.ndarray]:
    """The frames' luma planes."""
    cfg = rpb.RenderConfig(request_id="r", avatar_id=avatar_id, fps=FPS, sample_rate=SR, **config)  # type: ignore[arg-type]

    async def requests() -> AsyncIterator[rpb.RenderRequest]:
        yield rpb.RenderRequest(config=cfg)
        spf = SR // FPS
        first = voiced.index(True) if any(voiced) else 0
        events = [
            cpb.VisemeEvent(
                viseme=cpb.VISEME_OPEN, start_sample=first * spf, end_sample=(first + sum(voiced)) * spf, phoneme="a"
            )
        ]
        yield rpb.RenderRequest(seq=1, visemes=rpb.VisemeTrack(events=events if any(voiced) else []))
        for i, v in enumerate(voiced):
            activity = cpb.FrameActivity(rms_dbfs=-15.0 if v else -90.0, voiced=v)
            yield rpb.RenderRequest(seq=2 + i, features=fpb.FeatureChunk(frame_index=i, activity=activity))
        yield rpb.RenderRequest(seq=2 + len(voiced), end_of_stream=True)

    lumas = []
    async for m in stub.Render(requests()):
        if m.end_of_stream:
            break
        assert m.part_count <= 1, "frames fit one message here"
        lumas.append(np.frombuffer(m.data, np.uint8)[: m.width * m.height].reshape(m.height, m.width))
    assert len(lumas) == len(voiced)
    return lumas


def _all_equal(frames: list[np.ndarray]) -> bool:
    return all(np.array_equal(f, frames[0]) for f in frames[1:])


def _changed(frames: list[np.ndarray]) -> float:
    """The share of the pixels that differ from the first frame's in some frame."""
    moved = np.zeros(frames[0].shape, bool)
    for f in frames[1:]:
        moved |= f != frames[0]
    return float(moved.mean())


async def test_a_still_photo_does_not_move_while_silent_and_only_its_mouth_moves_with_speech(renderer) -> None:
    async with renderer() as stub:
        assert _all_equal(await _render(stub, SILENT, idle_motion=rpb.IDLE_MOTION_OFF))
        # the default, and ON said explicitly, sway the head and shoulders
        assert not _all_equal(await _render(stub, SILENT))
        assert not _all_equal(await _render(stub, SILENT, idle_motion=rpb.IDLE_MOTION_ON))

        still = await _render(stub, SPEECH, idle_motion=rpb.IDLE_MOTION_OFF)
        idle = still[0]
        assert all(np.array_equal(f, idle) for f, v in zip(still, SPEECH, strict=True) if not v)
        assert 0 < _changed(still) < 0.03, "the mouth moves with the speech, and nothing else"
        assert _changed(await _render(stub, SPEECH)) > 0.2, "by default the head and shoulders sway too"


def _video(path: Path, frames: int) -> bytes:
    """A clip of the bundled portrait drifting by a few pixels (a 'video avatar')."""
    return drifting_clip(path, frames, (SIDE, SIDE), drift=(4, 2), periods=(3, 4), fps=FPS).read_bytes()


async def test_a_still_video_avatar_holds_one_frame(renderer, tmp_path: Path) -> None:
    data = _video(tmp_path / "clip.mp4", 12)

    async def upload() -> AsyncIterator[rpb.AvatarUpload]:
        yield rpb.AvatarUpload(meta=rpb.AvatarMeta(name="clip", filename="clip.mp4"))
        yield rpb.AvatarUpload(data=data)

    async with renderer() as stub:
        info = await stub.RegisterAvatar(upload())
        assert info.frame_count == 12
        assert _all_equal(await _render(stub, SILENT, info.id, idle_motion=rpb.IDLE_MOTION_OFF))
        assert not _all_equal(await _render(stub, SILENT, info.id))  # its own frames, back and forth
        still = await _render(stub, SPEECH, info.id, idle_motion=rpb.IDLE_MOTION_OFF)
        assert not _all_equal(still), "it speaks on the frame it holds"


async def test_the_servers_switch_wins_over_a_requests_on(renderer) -> None:
    async with renderer(idle_motion=False) as stub:
        assert _all_equal(await _render(stub, SILENT, idle_motion=rpb.IDLE_MOTION_ON))
        assert _all_equal(await _render(stub, SILENT))


async def test_an_unknown_idle_motion_is_invalid_argument_naming_it(renderer) -> None:
    async with renderer() as stub:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await _render(stub, SILENT, idle_motion=7)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("config.idle_motion: "), err.value.details()
