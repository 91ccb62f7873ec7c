"""Head-and-shoulders framing through the mesh: `talkmesh avatar add` of a phone photo whose face is
small makes an avatar that speaks with its face large (the video decoded), says it was framed and
from where; `--framing as_is` keeps today's picture and hint; the Python client's `framing=`; a bad
value is refused naming the field."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import av
import cv2
import grpc
import numpy as np
import pytest

from services.renderer.avatars.analysis import FaceAnalyzer
from services.renderer.avatars.face_models import load_face_models
from talkmesh.bench.face_cases import transformed_portraits
from talkmesh.client import TalkmeshClient
from talkmesh.common.faces import SMALL_FACE_PX, face_width_in_video
from talkmesh.v1 import types_pb2 as api
from tests.media import portrait
from tests.mesh import inprocess_mesh


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "talkmesh.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


def _first_frame(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return np.asarray(frame.to_ndarray(format="bgr24"))


def _face_in_video(frame: np.ndarray) -> float:
    """The width of the largest face found on a decoded frame, in a video of the default size."""
    faces = FaceAnalyzer(load_face_models("")).detect(frame)
    assert faces, "no face on the decoded frame"
    x1, _, x2, _ = faces[0].box[:4]
    return face_width_in_video(x2 - x1, frame.shape[1], frame.shape[0])


async def test_a_phone_photo_added_from_the_command_line_speaks_with_its_face_large(tmp_path: Path) -> None:
    photo = tmp_path / "room.jpg"  # the bench's 4000x3000 scene: the face ~235 px, 30 px at 512
    cv2.imwrite(str(photo), transformed_portraits()[0].frames[0], [cv2.IMWRITE_JPEG_QUALITY, 90])
    async with inprocess_mesh(tmp_path) as mesh:
        gw = ("--target", mesh.gateway)
        code, out, err = await _cli("avatar", "add", str(photo), "--name", "room", *gw)
        assert code == 0, err
        head, framed, face = out.splitlines()[:3]
        assert head.split()[1:3] == ["room", "706x940"], out
        assert framed.startswith("framed to the head and shoulders (the face about a third of its width): "
                                 "the avatar shows 706x940 px at ("), out  # fmt: skip
        assert face.startswith("face 23") and "crop" not in out and "small" not in out, out

        code, out, err = await _cli("avatar", "add", str(photo), "--name", "whole", "--framing", "as_is", *gw)
        assert code == 0, err
        assert out.split()[1:3] == ["whole", "1280x960"] and "framed" not in out, out
        assert "the face is small in the picture" in out and "or add it again with --framing auto" in out, out

        code, _, err = await _cli("avatar", "add", str(photo), "--framing", "crop", *gw)
        assert code == 2 and "--framing: invalid choice: 'crop'" in err, err

        for name in ("room", "whole"):
            out_file = str(tmp_path / f"{name}.mp4")
            code, out, err = await _cli("say", "Hello there.", "--avatar", name, "-o", out_file, *gw)
            assert code == 0, err

        async with TalkmeshClient(mesh.gateway) as client:
            still = tmp_path / "portrait.png"
            cv2.imwrite(str(still), portrait())
            info = await client.register_avatar(still, framing=api.FRAMING_HEAD_AND_SHOULDERS)
            assert info.height > info.width and len(info.face.framed_box) == 4, info
            info = await client.register_avatar(still)  # auto: a face large enough is kept whole
            assert (info.width, info.height) == (512, 512) and not info.face.framed_box
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await client.register_avatar(still, framing=9)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "meta.framing: unknown framing 9" in (bad.value.details() or "")

    framed_frame, whole_frame = _first_frame(tmp_path / "room.mp4"), _first_frame(tmp_path / "whole.mp4")
    assert framed_frame.shape[:2] == (512, 384) and whole_frame.shape[:2] == (384, 512)
    assert _face_in_video(framed_frame) >= 2 * SMALL_FACE_PX  # ~129 px
    assert _face_in_video(whole_frame) < SMALL_FACE_PX  # ~30 px: as the photo was
