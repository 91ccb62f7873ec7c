"""Automatic head-and-shoulders framing at registration (AvatarMeta.framing): a phone photo of a
whole person or a room whose face would be too small to see it speak is cropped by the renderer
(talkmesh.common.faces: the same rule as the hint), "as_is" keeps the whole picture,
"head_and_shoulders" always crops; the framed avatar is another avatar (id) and its report is in the crop's pixels, with
`upload_box` and `framed_box` in the upload's."""

from __future__ import annotations

from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest

from services.renderer.avatars import AvatarStore
from services.renderer.avatars.decode import decode
from services.renderer.avatars.store import FRAMINGS
from services.renderer.backends.viseme import VisemeBackend
from services.renderer.config import AvatarConfig, RendererConfig
from services.renderer.server import face_report
from talkmesh.bench.face_cases import portrait, transformed_portraits
from talkmesh.common.channel import create_channel
from talkmesh.common.enums import choices
from talkmesh.common.errors import InvalidArgument
from talkmesh.common.faces import CROP_ASPECT, CROP_FACE_WIDTHS, SMALL_FACE_PX, face_width_in_video, small_face_hint
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from talkmesh.v1 import renderer_pb2 as rpb
from talkmesh.v1 import renderer_pb2_grpc
from talkmesh.v1 import types_pb2 as api
from tests.renderer.uploading import upload_service


def _store(root: Path) -> AvatarStore:
    cfg = RendererConfig(avatars=AvatarConfig(cache_dir=str(root)))
    return AvatarStore(cfg.avatars, {"viseme": VisemeBackend(cfg, Telemetry("renderer"))})


def _scene() -> np.ndarray:
    """The bench's 4000x3000 "phone photo" (talkmesh.bench.face_cases): the portrait in a room,
    its face about 235 px wide, 30 px in a default-size video."""
    case = transformed_portraits()[0]
    assert case.name == "scene-4000x3000"
    return case.frames[0]


def _jpeg(img: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()  # type: ignore[no-any-return]


def _in_video(avatar: object) -> float:
    """The width of the avatar's face in a video of the default size."""
    box = avatar.report["box"]  # type: ignore[attr-defined]
    w, h = avatar.size  # type: ignore[attr-defined]
    return face_width_in_video(box[2] - box[0], w, h)


def _info(avatar: object) -> api.AvatarInfo:
    w, h = avatar.size  # type: ignore[attr-defined]
    return api.AvatarInfo(width=w, height=h, frame_count=1, face=face_report(avatar.report))  # type: ignore[attr-defined]


def _inside(inner: list[float], outer: list[float], slack: float = 0.0) -> bool:
    return (
        inner[0] >= outer[0] - slack and inner[1] >= outer[1] - slack
        and inner[2] <= outer[2] + slack and inner[3] <= outer[3] + slack
    )  # fmt: skip


def test_a_phone_photo_with_a_small_face_is_framed_to_the_head_and_shoulders_by_default(tmp_path):
    store = _store(tmp_path)
    scene = _scene()
    data = _jpeg(scene)
    avatar, cached = store.register(data, "room.jpg")  # (the default framing: auto)
    assert not cached
    assert _in_video(avatar) >= SMALL_FACE_PX, f"the face is {_in_video(avatar):.0f} px in a 512 video"
    w, h = avatar.size
    assert h / w == pytest.approx(CROP_ASPECT, abs=0.01), avatar.size  # a 3:4 portrait
    framed = avatar.report["framed_box"]
    assert _inside(framed, [0, 0, 4000, 3000]) and framed[2] - framed[0] == pytest.approx(w, abs=2), framed
    # the face report: `box` on the stored (cropped) frames, `upload_box` in the upload's pixels
    box, shown = np.array(avatar.report["box"]), np.array(avatar.report["upload_box"])
    np.testing.assert_allclose(shown, box + np.array(framed[:2] * 2), atol=1.5)
    assert _inside(list(shown), framed)
    # the stored frame is that part of the picture (at the upload's resolution: no scaling here)
    x1, y1 = round(framed[0]), round(framed[1])
    part = scene[y1 : y1 + h, x1 : x1 + w].astype(np.int16)
    assert np.abs(avatar.frames[0].astype(np.int16) - part).mean() < 4, "the stored frame is the crop"
    # the whole picture as-is: the same face, in the same upload pixels, and another avatar
    whole, cached = store.register(data, "room.jpg", framing="as_is")
    assert not cached and whole.id != avatar.id and whole.id == store.content_id(data)
    assert avatar.id == store.content_id(data, framed=True)
    np.testing.assert_allclose(whole.report["upload_box"], shown, atol=4)
    assert "framed_box" not in whole.report and max(whole.size) == 1280
    assert _in_video(whole) < SMALL_FACE_PX and small_face_hint(_info(whole)), "as-is keeps today's picture"
    assert small_face_hint(_info(avatar)) == "", "no advice to crop a framed avatar by hand"
    # "head_and_shoulders" crops the same way: the same avatar, found again; and auto again is instant
    again, cached = store.register(data, "room.jpg", framing="head_and_shoulders")
    assert cached and again.id == avatar.id
    again, cached = store.register(data, "room.jpg")
    assert cached and again.id == avatar.id
    assert store.precomputes == 2


def test_auto_keeps_a_picture_whose_face_is_large_enough_as_the_same_avatar(tmp_path):
    store = _store(tmp_path)
    data = cv2.imencode(".png", portrait())[1].tobytes()
    avatar, cached = store.register(data, "portrait.png")
    assert not cached and avatar.size == (512, 512) and "framed_box" not in avatar.report
    assert avatar.id == store.content_id(data), "the id the whole picture always had"
    same, cached = store.register(data, "portrait.png", framing="as_is")
    assert cached and same.id == avatar.id
    # "head_and_shoulders" crops it anyway: a 3:4 portrait, the face a third of its width, inside the picture
    head, cached = store.register(data, "portrait.png", framing="head_and_shoulders")
    assert not cached and head.id != avatar.id and head.size[1] / head.size[0] == pytest.approx(CROP_ASPECT, abs=0.01)
    box = head.report["box"]
    assert (box[2] - box[0]) / head.size[0] == pytest.approx(1 / CROP_FACE_WIDTHS, abs=0.02)
    assert _inside(head.report["framed_box"], [0, 0, 512, 512])
    # a picture that is its own head-and-shoulders crop already: it is kept whole (the same avatar)
    box = [round(v) for v in head.report["framed_box"]]
    crop = _jpeg(np.ascontiguousarray(portrait()[box[1] : box[3], box[0] : box[2]]))
    kept, cached = store.register(crop, "crop.jpg", framing="head_and_shoulders")
    assert not cached and "framed_box" not in kept.report and kept.id == store.content_id(crop)
    again, cached = store.register(crop, "crop.jpg", framing="head_and_shoulders")
    assert cached and again.id == kept.id


def test_a_face_near_the_pictures_edge_gets_a_crop_moved_inside_it(tmp_path):
    """The portrait (face ~190 px) in the top right corner of a 4000x3000 room, its face 30 px
    from the top and the right edge: the crop stays inside the picture, the face inside the crop."""
    store = _store(tmp_path)
    scene = _scene()
    scene[1200:2480, 2300:3580] = 120  # (the room without the bench's portrait)
    big = cv2.resize(portrait(), (1024, 1024), interpolation=cv2.INTER_CUBIC)  # face x 358..547, y 134..349
    x0, y0 = 4000 - 547 - 30, 30 - 134
    scene[0 : 1024 + y0, x0:4000] = big[-y0:, : 4000 - x0]
    avatar, _ = store.register(_jpeg(scene), "corner.jpg")
    framed, shown = avatar.report["framed_box"], avatar.report["upload_box"]
    assert framed[1] == 0 and framed[2] == pytest.approx(4000, abs=1), f"moved to the corner: {framed}"
    assert _inside(framed, [0, 0, 4000, 3000]) and _inside(shown, framed), (framed, shown)
    w, h = avatar.size
    assert h / w == pytest.approx(CROP_ASPECT, abs=0.01) and _in_video(avatar) >= SMALL_FACE_PX


def test_a_video_is_framed_with_one_box_covering_the_moving_head(tmp_path):
    """A 1280x720 clip with a small head moving 120 px across: one crop for every frame, holding
    the face on all of them."""
    path = tmp_path / "walk.mp4"
    canvas = np.full((720, 1280, 3), 90, np.uint8)
    face = cv2.resize(portrait(), (320, 320), interpolation=cv2.INTER_AREA)  # face ~60 px: 24 px in a 512 video
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25, (1280, 720))
    for i in range(20):
        frame = canvas.copy()
        x = 400 + 6 * i
        frame[200:520, x : x + 320] = face
        writer.write(frame)
    writer.release()
    store = _store(tmp_path / "store")
    stages: list[str] = []
    whole, _ = store.register(path.read_bytes(), "walk.mp4", framing="as_is")
    avatar, _ = store.register(path.read_bytes(), "walk.mp4", progress=lambda s, d, t: stages.append(s))
    assert "framing" in stages and avatar.id != whole.id
    assert avatar.frames.shape[0] == 20 and avatar.report["frames_kept"] == 20
    framed = avatar.report["framed_box"]
    # the whole picture's track, in the upload's pixels, is inside the one box on every frame
    scale = whole.size[0] / 1280
    for box in whole.face_boxes[whole.kept]:
        assert _inside(list(box / scale), framed, slack=2), (box / scale, framed)
    w, h = avatar.size
    for box in avatar.face_boxes[avatar.kept]:
        assert _inside(list(box), [0, 0, w, h], slack=1), box
    assert _in_video(avatar) >= SMALL_FACE_PX


def test_an_unknown_framing_is_refused_naming_the_field(tmp_path):
    store = _store(tmp_path)
    assert FRAMINGS == tuple(choices(api.Framing))
    with pytest.raises(InvalidArgument, match=r"meta\.framing"):
        store.register(b"x", "x.png", framing="crop")


async def test_the_grpc_error_for_an_unknown_framing_names_the_field(tmp_path):
    service = upload_service(tmp_path)

    async def upload(framing: int):  # type: ignore[no-untyped-def]
        yield rpb.AvatarUpload(meta=rpb.AvatarMeta(filename="p.png", framing=framing))  # type: ignore[arg-type]
        yield rpb.AvatarUpload(data=cv2.imencode(".png", portrait())[1].tobytes())

    async with serve(service) as host, create_channel(host.address) as channel:
        stub = renderer_pb2_grpc.RendererStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterAvatar(upload(7))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("meta.framing: unknown framing 7"), err.value.details()
        assert "FRAMING_HEAD_AND_SHOULDERS (3)" in err.value.details()
        info = await stub.RegisterAvatar(upload(api.FRAMING_HEAD_AND_SHOULDERS))
        assert info.height > info.width and len(info.face.framed_box) == 4, info
        assert list(info.face.upload_box) != list(info.face.box), "the box in the crop, upload_box in the upload"


def test_a_face_not_found_again_in_its_crop_keeps_the_whole_picture(tmp_path, monkeypatch, caplog):
    """Should the face not be found again in the crop, the registration does not fail: the whole
    picture is kept (as "as_is" keeps it), and the log says why."""
    store = _store(tmp_path)
    data = _jpeg(_scene())
    real = store.faces.analyse
    calls = []

    def analyse(frames, choice, **kw):  # type: ignore[no-untyped-def]
        calls.append(frames.shape)
        if len(calls) == 2:  # (the crop's)
            raise InvalidArgument("data", "no face found")
        return real(frames, choice, **kw)

    monkeypatch.setattr(store.faces, "analyse", analyse)
    avatar, _ = store.register(data, "room.jpg")
    assert len(calls) == 2 and avatar.id == store.content_id(data) and "framed_box" not in avatar.report
    assert "not found again in its head-and-shoulders crop" in caplog.text


def test_the_framed_id_changes_with_the_crop_rule(tmp_path, monkeypatch):
    store = _store(tmp_path)
    data = _jpeg(portrait())
    whole, framed = store.content_id(data), store.content_id(data, framed=True)
    monkeypatch.setattr("services.renderer.avatars.store.CROP_FACE_WIDTHS", 4)
    assert store.content_id(data) == whole and store.content_id(data, framed=True) != framed


async def test_a_framed_upload_under_the_whole_pictures_name_says_how_to_keep_the_whole_picture(tmp_path):
    """A file added before framing came (its face small: the whole picture) and added again by a
    script under its name: the framed avatar is another avatar, refused under that name; the
    refusal said only "remove that name first"."""
    service = upload_service(tmp_path)
    scene = _jpeg(_scene())

    async def upload(framing: int):  # type: ignore[no-untyped-def]
        yield rpb.AvatarUpload(meta=rpb.AvatarMeta(filename="room.jpg", name="alice", framing=framing))  # type: ignore[arg-type]
        yield rpb.AvatarUpload(data=scene)

    async with serve(service) as host, create_channel(host.address) as channel:
        stub = renderer_pb2_grpc.RendererStub(channel)
        whole = await stub.RegisterAvatar(upload(api.FRAMING_AS_IS))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RegisterAvatar(upload(api.FRAMING_AUTO))
        assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert f"'alice' is already the name of avatar {whole.id}" in err.value.details()
        assert err.value.details().endswith(
            "(this upload was framed: framing as_is keeps the whole picture, which has that name)"
        )
        again = await stub.RegisterAvatar(upload(api.FRAMING_AS_IS))
        assert (again.id, again.cached) == (whole.id, True)


def _across(path: Path) -> None:
    """A 360x480 clip whose small head (~43 px: 46 px in a 512 video) crosses the picture: the
    3:4 box that holds it on every frame is the whole picture, so framing keeps it whole."""
    canvas = np.full((480, 360, 3), 90, np.uint8)
    face = cv2.resize(portrait(), (240, 240), interpolation=cv2.INTER_AREA)  # face x 84..127
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 25, (360, 480))
    for i in range(24):  # (13 px a frame: the tracker follows it)
        frame = canvas.copy()
        x = -76 + round(i * 300 / 23)  # (the face from x 8 to 351)
        left, right = max(x, 0), min(x + 240, 360)
        frame[120:360, left:right] = face[:, left - x : right - x]
        writer.write(frame)
    writer.release()


@pytest.mark.parametrize("fallback", ["whole-crop", "face-not-found-again"])
def test_a_framing_that_kept_the_whole_picture_is_remembered(tmp_path, monkeypatch, fallback):
    """A re-add with auto (or head_and_shoulders) of a file whose framing fell back to the whole
    picture (the crop is the whole picture: a small head crossing it; or the face was not found
    again in its crop) is the stored whole picture at once: no second decode and face track."""
    store = _store(tmp_path / "store")
    if fallback == "whole-crop":
        path = tmp_path / "across.mp4"
        _across(path)
        data, filename = path.read_bytes(), "across.mp4"
    else:
        data, filename = _jpeg(_scene()), "room.jpg"
    real_analyse, real_decode = store.faces.analyse, decode
    calls: list[str] = []

    def analyse(frames, choice, **kw):  # type: ignore[no-untyped-def]
        calls.append("analyse")
        if fallback == "face-not-found-again" and calls.count("analyse") == 2:  # (the crop's)
            raise InvalidArgument("data", "no face found")
        return real_analyse(frames, choice, **kw)

    def counted_decode(*args, **kw):  # type: ignore[no-untyped-def]
        calls.append("decode")
        return real_decode(*args, **kw)

    monkeypatch.setattr(store.faces, "analyse", analyse)
    monkeypatch.setattr("services.renderer.avatars.store.decode", counted_decode)
    avatar, cached = store.register(data, filename)
    assert not cached and avatar.id == store.content_id(data) and "framed_box" not in avatar.report
    small = avatar.report["box"]
    assert _in_video(avatar) < SMALL_FACE_PX, f"a small face ({small}): auto tried to frame it"
    assert calls.count("decode") == (1 if fallback == "whole-crop" else 2), calls
    first = len(calls)
    for framing in ("auto", "head_and_shoulders", "auto"):
        again, cached = store.register(data, filename, framing=framing)
        assert cached and again.id == avatar.id, framing
    assert calls[first:] == [], f"decoded or tracked again: {calls[first:]}"
    assert store.precomputes == 1
    # another replica (a fresh store on the same root) reads the decision from disk
    other = _store(tmp_path / "store")
    monkeypatch.setattr(other.faces, "analyse", analyse)
    again, cached = other.register(data, filename)
    assert cached and again.id == avatar.id and calls[first:] == []
    # a new crop rule may crop it: decided again (the decision is the crop rule's)
    monkeypatch.setattr("services.renderer.avatars.store.CROP_FACE_WIDTHS", 4)
    other.register(data, filename)
    assert "analyse" in calls[first:]


def test_a_note_that_cannot_be_written_does_not_fail_the_registration(tmp_path, monkeypatch):
    """The kept-whole note is a shortcut for the next registration: a cache directory that cannot
    take it (full, a passing I/O error) leaves the whole picture registered, not an error for an
    avatar that was made (and for a re-add that found it stored)."""
    import errno

    import services.renderer.avatars.store as store_module

    store = _store(tmp_path / "store")
    data = _jpeg(_scene())
    real_analyse, real_write = store.faces.analyse, store_module._write_atomic
    analysed: list[int] = []

    def analyse(frames, choice, **kw):  # type: ignore[no-untyped-def]
        analysed.append(1)
        if len(analysed) % 2 == 0:  # (the crop's: the face not found again)
            raise InvalidArgument("data", "no face found")
        return real_analyse(frames, choice, **kw)

    def write(path: Path, content: bytes) -> None:
        if not path.parent.name.startswith("."):  # (an installed entry's file, not one being built)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, content)

    monkeypatch.setattr(store.faces, "analyse", analyse)
    monkeypatch.setattr(store_module, "_write_atomic", write)
    avatar, cached = store.register(data, "room.jpg")
    assert not cached and avatar.id == store.content_id(data) and "framed_box" not in avatar.report
    again, cached = store.register(data, "room.jpg", framing="head_and_shoulders")
    assert cached and again.id == avatar.id
    assert "kept_whole" not in store._meta(avatar.id)  # (not noted: decided again next time)
