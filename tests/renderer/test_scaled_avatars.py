"""Large avatars (phone photos): stored at most avatars.max_side, rendered on a copy scaled to the
output size (services/renderer/avatars/scaled.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.renderer.avatars import AvatarStore
from services.renderer.avatars.scaled import scaled
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from services.renderer.main import create_service, load_config
from talkmesh.common.channel import create_channel
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import audio_features_pb2 as fpb
from talkmesh.v1 import common_pb2 as cpb
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import renderer_pb2_grpc
from tests.media import portrait

SR, FPS = 16000, 25


def _phone_photo(width: int, height: int) -> bytes:
    """The portrait upscaled into a tall canvas, as a JPEG (a phone photo's shape)."""
    face = cv2.resize(portrait(), (width, width), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((height, width, 3), 90, np.uint8)
    top = (height - width) // 2
    canvas[top : top + width] = face
    ok, data = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return data.tobytes()


def _store(tmp_path: Path, **avatar_cfg) -> AvatarStore:
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(tmp_path / "cache"), **avatar_cfg))
    return AvatarStore(cfg.avatars, {"viseme": VisemeBackend(cfg, Telemetry("renderer"))})


def test_a_phone_photo_is_stored_at_max_side(tmp_path):
    store = _store(tmp_path)
    avatar, _ = store.register(_phone_photo(3000, 4000), "phone.jpg")
    assert avatar.size == (960, 1280)
    assert avatar.report["frames_kept"] == 1  # the face is found on the stored photo
    # the portrait's own face box, carried into the stored photo (x 960/512, 160 rows of canvas above)
    ok, png = cv2.imencode(".png", portrait())
    assert ok
    original, _ = store.register(png.tobytes(), "portrait.png")
    expected = original.face_boxes[0] * 960 / 512 + np.array([0, 160, 0, 160])
    assert np.abs(avatar.face_boxes[0] - expected).max() < 0.08 * (expected[2] - expected[0])


def test_scaled_copy_carries_every_coordinate(tmp_path):
    store = _store(tmp_path)
    avatar, _ = store.register(_phone_photo(1000, 1200), "p.jpg")
    store.get(avatar.id, "viseme")
    small = scaled(avatar, (500, 600))
    assert small.size == (500, 600) and small.variant == "500x600" and not small.extras
    assert not small.frames.flags.writeable
    assert np.abs(small.face_boxes - avatar.face_boxes / 2).max() <= 1
    assert np.abs(small.mouth_boxes - avatar.mouth_boxes / 2).max() <= 1
    assert avatar.landmarks is not None and small.landmarks is not None
    np.testing.assert_allclose(small.landmarks, (avatar.landmarks + 0.5) / 2 - 0.5, atol=1e-3)  # pixel centres
    assert avatar.crop_boxes and small.crop_boxes.keys() == avatar.crop_boxes.keys()
    for name, box in avatar.crop_boxes.items():
        np.testing.assert_allclose(small.crop_boxes[name], box / 2, atol=1e-3)
    reference = cv2.resize(np.asarray(avatar.frames[0]), (500, 600), interpolation=cv2.INTER_AREA)
    assert np.array_equal(small.frames[0], reference)


def test_the_store_scales_once_per_size_and_keeps_the_precompute_apart(tmp_path):
    store = _store(tmp_path)
    avatar, _ = store.register(_phone_photo(1000, 1200), "p.jpg")
    assert store.at_size(avatar, avatar.size, "viseme") is avatar  # not larger: itself
    quota_before = store.disk_bytes(avatar.id)
    small = store.at_size(avatar, (500, 600), "viseme")
    assert small is not avatar and "viseme" in small.extras
    assert store.at_size(avatar, (500, 600), "viseme") is small  # made once
    entry = tmp_path / "cache" / avatar.id
    assert (entry / "viseme@500x600.npz").is_file() and (entry / "viseme.npz").is_file()
    assert [a.backends for a in store.list()] == [("viseme",)]  # the sized precompute is not a backend
    # a fresh store (a restart) loads that precompute instead of making it again
    again = _store(tmp_path)
    made: list[tuple[int, int]] = []
    backend = again.backends["viseme"]
    prepare = backend.prepare
    backend.prepare = lambda a: (made.append(a.size), prepare(a))[1]  # type: ignore[method-assign]
    reloaded = again.at_size(again.get(avatar.id), (500, 600), "viseme")
    assert made == [], "the stored precompute at that size was made again"
    for key, value in small.extras["viseme"].items():
        assert np.array_equal(reloaded.extras["viseme"][key], value)
    (entry / "viseme@500x600.npz").unlink()  # (the check above can fail: without the file it is made)
    third = _store(tmp_path)
    third.backends["viseme"].prepare = backend.prepare  # type: ignore[method-assign]
    third.at_size(third.get(avatar.id), (500, 600), "viseme")
    assert made == [(500, 600)]
    # rendering at output sizes does not use up the owner's disk quota
    assert store.disk_bytes(avatar.id) == quota_before
    # a deleted avatar's copies leave memory with it
    store.delete(avatar.id)
    assert not any(k[0] == avatar.id for k in store._scaled.keys())


async def _speak(config: rpb.RenderConfig) -> AsyncIterator[rpb.RenderRequest]:
    yield rpb.RenderRequest(request_id="r", config=config)
    spf = SR // FPS
    events = [cpb.VisemeEvent(viseme=cpb.VISEME_OPEN, start_sample=3 * spf, end_sample=9 * spf, phoneme="a")]
    yield rpb.RenderRequest(request_id="r", seq=1, visemes=rpb.VisemeTrack(events=events))
    for i in range(10):
        voiced = 3 <= i < 9
        activity = cpb.FrameActivity(rms_dbfs=-15.0 if voiced else -90.0, voiced=voiced)
        yield rpb.RenderRequest(
            request_id="r", seq=2 + i, features=fpb.FeatureChunk(request_id="r", frame_index=i, activity=activity)
        )
    yield rpb.RenderRequest(request_id="r", seq=12, end_of_stream=True)


@pytest.mark.parametrize("size", ["512", "360p"])
async def test_a_large_avatar_renders_at_the_output_size_like_its_scaled_photo(tmp_path, size):
    """A 1200x1600 photo (max_side raised so it is stored whole) at 512 / 360p: the silent frame is
    the stored photo scaled to the output (area), and the mouth opens where it is."""
    env = {
        "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "cache"),
        "TALKMESH_RENDERER__AVATARS__MAX_SIDE": "2048",
        "TALKMESH_RENDERER__VISEME__IDLE_MOTION": "false",
    }
    service = create_service(load_config(None, env=env), Telemetry("renderer"))
    async with serve(service) as host, create_channel(host.address) as ch:
        stub = renderer_pb2_grpc.RendererStub(ch)

        async def upload(data: bytes):
            yield rpb.AvatarUpload(meta=rpb.AvatarMeta(name="phone", filename="phone.jpg"))
            for i in range(0, len(data), 65536):
                yield rpb.AvatarUpload(data=data[i : i + 65536])

        info = await stub.RegisterAvatar(upload(_phone_photo(1200, 1600)))
        assert (info.width, info.height) == (1200, 1600)
        config = rpb.RenderConfig(request_id="r", fps=FPS, sample_rate=SR, avatar_id=info.id, size=size)
        messages = [m async for m in stub.Render(_speak(config))]
    frames = [m for m in messages if not m.end_of_stream]
    w, h = (384, 512) if size == "512" else (270, 360)
    assert all((m.width, m.height) == (w, h) for m in frames)
    luma = [np.frombuffer(m.data, np.uint8)[: w * h].reshape(h, w).astype(np.int16) for m in frames]
    stored = service.store.get(info.id)  # type: ignore[attr-defined]
    photo = cv2.resize(np.asarray(stored.frames[0]), (w, h), interpolation=cv2.INTER_AREA)
    expected = cv2.cvtColor(photo, cv2.COLOR_BGR2YUV_I420)[:h].astype(np.int16)
    assert np.abs(luma[0] - expected).max() <= 1  # silent: the photo at the output size
    mouth = stored.mouth_boxes[0] * np.array([w / 1200, h / 1600, w / 1200, h / 1600])
    x1, y1, x2, y2 = (int(v) for v in mouth)
    opened = luma[6] - luma[0]
    assert (opened[y1:y2, x1:x2] < -40).sum() > 20  # the open mouth darkens inside the mouth box
    assert np.abs(opened[: y1 - h // 8]).max() == 0  # and nothing above the face's lower part moves
    # rendered on the copy at the output size (its own precompute), not on the 1200x1600 frames
    assert (tmp_path / "cache" / info.id / f"viseme@{w}x{h}.npz").is_file()


TIMES = "\N{MULTIPLICATION SIGN}"  # (the README writes sizes as 384 TIMES 512)


def test_the_readme_says_the_size_presets_as_the_renderer_makes_them():
    """The README said a stream of the default size ("512") was 512x512: so is the bundled square
    avatar's, a portrait's is 384x512 (a new user's trial)."""
    from services.renderer.frames import output_size

    readme = " ".join((Path(__file__).resolve().parents[2] / "README.md").read_text().split())
    for preset, stored, said in [
        ("512", (512, 512), "for a square avatar"),
        ("512", (960, 1280), "for that 3:4 portrait"),
        ("360p", (1280, 720), "for a 16:9 video"),
        ("360p", (960, 1280), "for the portrait"),
    ]:
        width, height = output_size(preset, stored)
        assert f"{width}{TIMES}{height} {said}" in readme, (preset, stored, said)
