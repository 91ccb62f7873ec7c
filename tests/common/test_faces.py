"""The one rule for a face too small to see it speak (talkmesh.common.faces): `talkmesh avatar add`
and the web edge's upload answer say it alike."""

from __future__ import annotations

from talkmesh.common.faces import SMALL_FACE_PX, face_width_in_video, small_face_hint
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
    assert face_lines(info)[1] == f"  {small_face_hint(info)}"
