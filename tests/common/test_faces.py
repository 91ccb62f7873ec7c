"""The one rule for a face too small to see it speak (talkmesh.common.faces): `talkmesh avatar add`
and the web edge's upload answer say it alike, and the renderer's automatic framing crops exactly
then, to the head and shoulders as the hint describes it."""

from __future__ import annotations

import pytest

from talkmesh.common.faces import (
    CROP_ASPECT,
    CROP_FACE_WIDTHS,
    SMALL_FACE_PX,
    face_is_small,
    face_width_in_video,
    framing_note,
    head_and_shoulders,
    small_face_hint,
)
from talkmesh.v1 import types_pb2 as api


def _info(width: int, height: int, face_width: float) -> api.AvatarInfo:
    face = api.FaceReport(box=[100, 100, 100 + face_width, 100 + face_width], confidence=0.9)
    return api.AvatarInfo(width=width, height=height, frame_count=1, face=face)


def test_a_face_under_64_px_in_a_default_video_is_small_whatever_the_pictures_shape() -> None:
    assert SMALL_FACE_PX == 64
    assert face_width_in_video(165, 4000, 3000) == 165 * 512 / 4000
    assert face_width_in_video(165, 3000, 4000) == face_width_in_video(165, 4000, 3000)  # (the longer side)
    phone = small_face_hint(_info(4000, 3000, 165))
    assert phone == (
        "the face is small in the picture: about 21 px wide in a video of the default size (512), too small "
        "to see it speak; crop the picture to the head and shoulders (the face about a third of its width) "
        "and add that"
    )
    assert small_face_hint(_info(4000, 3000, 165), "upload that").endswith("its width) and upload that")
    assert small_face_hint(_info(1280, 960, 160)) == ""  # 64 px: big enough
    assert small_face_hint(_info(1280, 960, 159)) != ""
    assert small_face_hint(_info(512, 512, 210)) == ""
    assert small_face_hint(api.AvatarInfo(width=64, height=64, frame_count=1)) == ""  # (no face report)


def test_the_command_line_says_the_rule_as_it_is() -> None:
    from talkmesh.cli import face_lines

    info = _info(4000, 3000, 165)
    assert face_lines(info)[1].startswith(f"  {small_face_hint(info)}")
    # auto framing that kept the whole picture (the face not found again in its crop) is not
    # offered again; asked for as_is, it is
    assert face_lines(info)[1] == f"  {small_face_hint(info)}"
    assert face_lines(info, "as_is")[1].endswith(", or add it again with --framing auto (the server crops it)")


def test_the_hint_and_the_framing_decide_with_one_rule() -> None:
    for w, h, face in ((4000, 3000, 165), (1280, 960, 160), (1280, 960, 159), (512, 512, 210), (3000, 4000, 499)):
        assert face_is_small(face, w, h) == bool(small_face_hint(_info(w, h, face))), (w, h, face)


def _check_crop(crop: tuple[float, ...], width: int, height: int) -> tuple[float, float]:
    x1, y1, x2, y2 = crop
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height, crop
    assert (y2 - y1) / (x2 - x1) == pytest.approx(CROP_ASPECT, rel=1e-6), crop
    return x2 - x1, y2 - y1


def test_the_head_and_shoulders_crop_has_the_face_a_third_of_its_width_with_the_shoulders_below() -> None:
    face = (2000.0, 1000.0, 2150.0, 1180.0)  # 150 px wide in a 4000x3000 phone photo
    crop = head_and_shoulders(face, 4000, 3000)
    w, h = _check_crop(crop, 4000, 3000)
    assert w == pytest.approx(CROP_FACE_WIDTHS * 150) and CROP_FACE_WIDTHS == 3
    assert (crop[0] + crop[2]) / 2 == pytest.approx(2075)  # centred across
    assert crop[1] < face[1] - 0.5 * 150, "room above the head"
    assert crop[3] - face[3] > 1.5 * 150, "the shoulders below the chin"
    assert not face_is_small(150, round(w), round(h)), "large enough once cropped"


@pytest.mark.parametrize(
    "face",
    [
        (3880.0, 20.0, 4000.0, 160.0),  # the top right corner
        (0.0, 2850.0, 150.0, 3000.0),  # the bottom left corner
        (10.0, 1400.0, 160.0, 1580.0),  # the left edge
    ],
)
def test_a_face_near_the_edge_gets_a_crop_moved_inside_the_picture(face: tuple[float, float, float, float]) -> None:
    crop = head_and_shoulders(face, 4000, 3000)
    w, _h = _check_crop(crop, 4000, 3000)
    assert w == pytest.approx(CROP_FACE_WIDTHS * (face[2] - face[0]))  # the same size: moved, not shrunk
    assert crop[0] <= face[0] and face[2] <= crop[2] and crop[1] <= face[1] and face[3] <= crop[3]


def test_a_crop_larger_than_the_picture_shrinks_to_fit_keeping_its_shape() -> None:
    crop = head_and_shoulders((150.0, 150.0, 350.0, 390.0), 512, 512)  # a close portrait
    w, h = _check_crop(crop, 512, 512)
    assert h == pytest.approx(512) and w == pytest.approx(384)
    crop = head_and_shoulders((1800.0, 80.0, 2200.0, 560.0), 4000, 600)  # a wide, low strip
    _check_crop(crop, 4000, 600)
    assert crop[0] <= 1800 and 2200 <= crop[2], "the face stays inside"


def test_a_moving_head_gets_one_crop_covering_it_everywhere() -> None:
    first = (1000.0, 1000.0, 1150.0, 1180.0)
    cover = (800.0, 950.0, 1350.0, 1230.0)  # the head went 200 px either way and up and down
    crop = head_and_shoulders(first, 4000, 3000, cover)
    _check_crop(crop, 4000, 3000)
    assert crop[0] <= 800 - 100 and crop[2] >= 1350 + 100, "a margin beyond every place the face was"
    assert crop[1] < 950 and crop[3] > 1230 + 1.5 * 150


@pytest.mark.parametrize(
    ("face", "width", "height", "cover"),
    [
        ((360.0, 10.0, 640.0, 290.0), 1000, 300, None),  # a landscape close-up: the face wider than 3/4 of the height
        ((610.0, 330.0, 670.0, 390.0), 1280, 720, (210.0, 330.0, 1070.0, 390.0)),  # a head moving 400 px either way
    ],
)
def test_a_crop_shrunk_to_the_picture_still_holds_the_face_and_its_path(
    face: tuple[float, float, float, float], width: int, height: int, cover: tuple[float, float, float, float] | None
) -> None:
    """Shrunk to fit with its 3:4 shape kept, the crop was 0.75 x the picture's height wide, whatever
    the face needed: it cut the face, or left a moving head out of half a video's frames."""
    crop = head_and_shoulders(face, width, height, cover)
    hold = cover or face
    assert crop[0] <= hold[0] and hold[2] <= crop[2] and crop[1] <= hold[1] and hold[3] <= crop[3], crop
    assert 0 <= crop[0] and crop[2] <= width and 0 <= crop[1] and crop[3] <= height


def test_a_framed_avatar_says_so_and_is_not_told_to_crop_by_hand() -> None:
    info = _info(300, 400, 100)  # (the crop: the face a third of it)
    assert framing_note(info) == "" and small_face_hint(info) == ""
    small = _info(1280, 960, 20)
    assert small_face_hint(small)
    small.face.framed_box.extend([2600, 1700, 2900, 2100])
    assert small_face_hint(small) == "", "the server framed it: no advice to crop by hand"
    assert framing_note(small) == (
        "framed to the head and shoulders (the face about a third of its width): the avatar shows 300x400 px "
        "at (2600, 1700) of the picture"
    )
