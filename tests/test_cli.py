"""The `talkmesh` command against a running mesh: say, voices, avatar add / list / rm."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from services.renderer.avatars import default_avatar_bytes
from talkmesh.client import TalkmeshClient
from tests.media import drifting_clip, portrait, probe
from tests.mesh import inprocess_mesh

PORTRAIT = default_avatar_bytes()


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "talkmesh.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


def _mirrored_portrait(path: Path) -> Path:
    """Another picture of a face (so a new avatar, not the default one found again)."""
    cv2.imwrite(str(path), cv2.flip(portrait(), 1))
    return path


def _video(path: Path, frames: int, faceless: int = 0) -> Path:
    """A short clip of the portrait moving a little; its last ``faceless`` frames show no face."""
    return drifting_clip(path, frames, (256, 256), faceless=faceless)


def _atoms(data: bytes) -> list[str]:
    """Top-level MP4 box types in file order."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        out.append(data[pos + 4 : pos + 8].decode("latin-1"))
        if size < 8:
            break
        pos += size
    return out


async def test_say_voices_and_avatars_from_the_command_line(tmp_path):
    portrait = tmp_path / "portrait.png"
    portrait.write_bytes(PORTRAIT)
    async with inprocess_mesh(tmp_path) as mesh:
        gw = ("--target", mesh.gateway)
        code, out, err = await _cli("voices", *gw)
        assert code == 0, err
        assert "espeak:en-us" in out and "espeak:en-gb" in out

        code, out, err = await _cli("avatar", "add", str(portrait), "--name", "astro", *gw)
        assert code == 0, err
        avatar_id = out.split()[0]
        # content-addressed: the same file as the default avatar is found, not prepared again
        assert "512x512  1 frame(s)  (already prepared)" in out
        assert "uploaded 0.8 MB; prepared in" in err

        code, out, err = await _cli("avatar", "list", *gw)
        assert code == 0 and avatar_id in out
        # (that file is the default avatar's: the list marks it)
        assert [line for line in out.splitlines() if line.endswith("  (default)")] == [
            line for line in out.splitlines() if line.startswith(avatar_id)
        ], out

        # TALKMESH_TARGET instead of --target
        code, out, err = await _cli("say", "Hello from the command line.", "-o", str(tmp_path / "s.mp4"),
                                    env={"TALKMESH_TARGET": mesh.gateway})  # fmt: skip
        assert code == 0, err
        assert "whole file received after" in out and "renderer_first_frame" in out
        assert probe(tmp_path / "s.mp4").frames > 10

        code, out, err = await _cli("say", "Hi.", "--voice", "espeak:nope", "-o", str(tmp_path / "x.mp4"), *gw)
        assert code == 1
        assert err.startswith("error: NOT_FOUND: tts: voice: "), err  # the request's field, set by --voice
        assert "(field voice; set by --voice)" in err, err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "x.mp4").exists()

        code, out, err = await _cli("avatar", "rm", "0123456789abcdef0123", *gw)
        assert code == 1 and out == ""
        assert err.strip() == "error: avatar '0123456789abcdef0123' not found (see `talkmesh avatar list`)"


async def test_say_writes_a_seekable_mp4_unless_fragments_are_asked_for(tmp_path):
    async with inprocess_mesh(tmp_path) as mesh:
        gw = ("--target", mesh.gateway)
        whole, frag = tmp_path / "whole.mp4", tmp_path / "frag.mp4"
        code, out, err = await _cli("say", "Hello there, how are you?", "-o", str(whole), *gw)
        assert code == 0, err
        code, out, err = await _cli("say", "Hello there, how are you?", "-o", str(frag), "--container", "fmp4", *gw)
        assert code == 0, err
        assert "time to first fragment (client)" in out
    atoms = _atoms(whole.read_bytes())
    # a normal MP4: the index (moov) first (+faststart), one mdat, no fragments
    assert atoms[0] == "ftyp" and atoms.index("moov") < atoms.index("mdat") and "moof" not in atoms
    assert "moof" in _atoms(frag.read_bytes())
    a, b = probe(whole), probe(frag)
    assert a.frames == b.frames and abs(a.audio_seconds - b.audio_seconds) < 0.05
    import av

    with av.open(str(whole)) as container:  # the duration is in the header, as a browser reads it
        assert abs(container.duration / 1e6 - a.video_seconds) < 0.1


async def test_say_options_reach_the_services(tmp_path):
    async with inprocess_mesh(tmp_path) as mesh:
        gw = ("--target", mesh.gateway)
        base, fast = tmp_path / "base.mp4", tmp_path / "fast.mp4"
        text = "The quick brown fox jumps over the lazy dog."
        code, out, err = await _cli("say", text, "-o", str(base), "--voice", "espeak:en_GB", *gw)
        assert code == 0, err
        assert ", voice espeak:en-gb" in out, out  # the spelling given, resolved to the listed voice
        assert "encoder_first_fragment" not in out, out  # a whole file: no fragment was timed
        code, _, err = await _cli(
            "say", text, "-o", str(fast), "--voice", "espeak:en-GB", "--rate", "2", "--pitch", "1.5",
            "--volume", "0.5", "--size", "360p", "--backend", "viseme", "--audio-codec", "opus",
            "--container", "fmp4", "--still", *gw,
        )  # fmt: skip
        assert code == 0, err
    a, b = probe(base), probe(fast)
    assert b.audio_seconds < 0.75 * a.audio_seconds  # twice the rate: clearly shorter
    assert (b.width, b.height) != (a.width, a.height) and b.height == 360
    assert b.audio_codec == "opus" and a.audio_codec == "aac"


async def test_avatar_names_work_wherever_ids_do(tmp_path):
    face = _mirrored_portrait(tmp_path / "mirror.png")
    async with inprocess_mesh(tmp_path) as mesh:
        gw = ("--target", mesh.gateway)
        code, out, err = await _cli("avatar", "add", str(face), "--name", "Mirror", *gw)
        assert code == 0, err
        avatar_id = out.split()[0]
        for spelling in ("Mirror", "mirror", avatar_id):
            code, out, err = await _cli("say", "Hi.", "--avatar", spelling, "-o", str(tmp_path / "m.mp4"), *gw)
            assert code == 0, (spelling, err)
        # the same file uploaded again under another name (another user of the same photo): the
        # avatar answers to both names; the first one is not renamed away
        code, out, err = await _cli("avatar", "add", str(face), "--name", "Second", *gw)
        assert code == 0 and out.split()[:2] == [avatar_id, "Second"], err
        code, out, err = await _cli("avatar", "ls", *gw)
        assert code == 0 and f"{avatar_id}  Mirror,Second  " in out, out
        for spelling in ("Mirror", "Second"):
            code, out, err = await _cli("say", "Hi.", "--avatar", spelling, "-o", str(tmp_path / "m.mp4"), *gw)
            assert code == 0, (spelling, err)
        # removing one name leaves the other working; the last name takes the avatar with it
        code, out, err = await _cli("avatar", "rm", "Mirror", *gw)
        assert code == 0 and out.strip() == f"deleted the name 'Mirror'; avatar {avatar_id} keeps its other name(s)"
        code, out, err = await _cli("avatar", "list", *gw)
        assert code == 0 and f"{avatar_id}  Second  " in out and "Mirror" not in out
        code, out, err = await _cli("say", "Hi.", "--avatar", "Second", "-o", str(tmp_path / "m.mp4"), *gw)
        assert code == 0, err
        code, out, err = await _cli("avatar", "delete", "second", *gw)
        assert code == 0 and out.strip() == "deleted"
        code, out, err = await _cli("avatar", "list", *gw)
        assert code == 0 and avatar_id not in out and "Second" not in out


async def test_avatar_add_shows_the_renderers_progress_in_frames(tmp_path):
    video = _video(tmp_path / "clip.mp4", 20)
    async with inprocess_mesh(tmp_path) as mesh:
        seen = []
        async with TalkmeshClient(mesh.gateway) as client:
            info = await client.register_avatar(
                video, name="clip", preparing=lambda p: seen.append((p.stage, p.done, p.total))
            )
        assert info.frame_count == 20 and not info.cached
        faces = [(done, total) for stage, done, total in seen if stage == "faces"]
        assert faces and faces[-1] == (20, 20)  # the renderer counted every frame it tracked
        assert all(total == 20 for _, total in faces) and [d for d, _ in faces] == sorted(d for d, _ in faces)
        stages = [stage for stage, _, _ in seen]
        assert stages[0] == "received" and "backend:viseme" in stages

        # a clip whose face is missing from some frames: the counts, and what becomes of those frames
        other = _video(tmp_path / "other.mp4", 12, faceless=3)
        code, out, err = await _cli("avatar", "add", str(other), "--target", mesh.gateway)
        assert code == 0, err
        assert "12 frame(s) analysed" in err and "tracked" not in err and "12 frame(s)  (prepared)" in out
        lines = out.splitlines()
        assert lines[1].startswith("face ") and " px at (" in lines[1] and "confidence" in lines[1], out
        assert lines[2] == "face found on 9 of 12 frame(s) (3 rejected)", out
        assert "the 3 frame(s) without a face are shown as they are, without lip-sync" in lines[3]


def test_a_face_too_small_to_see_speak_is_said_with_what_to_do() -> None:
    """A phone photo of 4000x3000 with a 165 px face: about 21 px in the default 512 video, which
    registered silently (a user's trial); a portrait's face is not flagged."""
    from talkmesh.cli import face_lines
    from talkmesh.v1 import types_pb2 as api

    def info(width: int, height: int, box: list[float]) -> api.AvatarInfo:
        face = api.FaceReport(box=box, upload_box=box, confidence=0.9, frames_kept=1)
        return api.AvatarInfo(width=width, height=height, frame_count=1, face=face)

    phone = face_lines(info(4000, 3000, [3600, 2600, 3765, 2790]))
    assert phone[0] == "face 165x190 px at (3600, 2600) in the picture, confidence 0.90"
    assert "about 21 px wide in a video of the default size (512)" in phone[1] and "crop the picture" in phone[1]
    portrait = info(512, 512, [150, 120, 360, 380])
    assert face_lines(portrait) == ["face 210x260 px at (150, 120) in the picture, confidence 0.90"]
    assert face_lines(api.AvatarInfo(width=64, height=64, frame_count=1)) == []  # (no face report)


def test_the_face_box_is_said_in_the_pixels_of_face_point(capsys) -> None:
    """A 4000x3000 phone photo stored at 1280x960: the box it printed was the stored copy's (`face
    37x38 px at (478, 600)`), while --face-point takes the picture's pixels (a new user's trial)."""
    from talkmesh.cli import build_parser, face_lines
    from talkmesh.v1 import types_pb2 as api

    face = api.FaceReport(box=[478, 600, 515, 638], upload_box=[1494, 1875, 1609, 1994], confidence=0.9)
    stored = api.AvatarInfo(width=1280, height=960, frame_count=1, face=face)
    assert face_lines(stored)[0] == "face 115x119 px at (1494, 1875) in the picture, confidence 0.90"
    # an avatar prepared before the renderer reported the upload's box: the stored frames', said so
    del face.upload_box[:]
    old = api.AvatarInfo(width=1280, height=960, frame_count=1, face=face)
    assert face_lines(old)[0] == "face 37x38 px at (478, 600) in the stored frames (1280x960), confidence 0.90"
    import pytest

    with pytest.raises(SystemExit):
        build_parser().parse_args(["avatar", "add", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "pixels of the picture as it is shown (after its EXIF rotation;" in text, text


def test_say_states_the_voice_settings_ranges_tts_enforces(capsys: pytest.CaptureFixture[str]) -> None:
    from talkmesh.cli import build_parser
    from talkmesh.common.names import VOICE_SETTING_RANGES

    with pytest.raises(SystemExit):
        build_parser().parse_args(["say", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, (low, high) in VOICE_SETTING_RANGES.items():
        assert f"--{name} {name.upper()} " in text and f"x normal ({low:g}..{high:g}; 0 = default)" in text, name


async def test_errors_show_the_offending_field(tmp_path):
    """An upload's errors on the file itself name the user's file, not the protocol's field `data`;
    one without a face says what picture works (a new user's trial)."""
    from talkmesh.common.faces import NO_FACE_ADVICE

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("just text")
    no_face = tmp_path / "photos" / "no_face.png"
    no_face.parent.mkdir()
    ramp = np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))
    cv2.imwrite(str(no_face), cv2.merge([ramp, ramp.T, ramp]))
    async with inprocess_mesh(tmp_path) as mesh:
        code, _, err = await _cli("avatar", "add", str(not_an_image), "--target", mesh.gateway)
        assert code == 1
        (line,) = err.strip().splitlines()
        assert line.startswith(f"error: INVALID_ARGUMENT: {not_an_image} is not a decodable image"), line
        assert "(field" not in line and " data: " not in line, line
        code, _, err = await _cli("avatar", "add", str(no_face), "--target", mesh.gateway)
        assert code == 1
        (line,) = err.strip().splitlines()
        assert line == (
            f"error: INVALID_ARGUMENT: {no_face}: no face found (0 of 1 frame(s) have a detectable face): "
            f"{NO_FACE_ADVICE}"
        ), line
        # another command's error keeps its field
        out = str(tmp_path / "x.mp4")
        code, _, err = await _cli("say", "Hi", "--voice", "nope:x", "-o", out, "--target", mesh.gateway)
        assert "(field " in err and "set by --voice" in err, err


async def test_voices_into_a_closed_pipe_ends_quietly(tmp_path):
    async with inprocess_mesh(tmp_path) as mesh:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "talkmesh.cli", "voices", "--target", mesh.gateway,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.feed_eof()
        transport = proc._transport  # type: ignore[attr-defined]
        transport.get_pipe_transport(1).close()  # `| head -0`: the reader is gone
        err = await asyncio.wait_for(proc.stderr.read(), 60)
        assert await proc.wait() == 141  # 128 + SIGPIPE, as `ls | head` ends
    assert err.decode() == ""  # quiet: the reader had all it wanted


def test_up_help_names_every_service_and_port_from_the_registry(capsys, monkeypatch):
    """`talkmesh up --help` lists as many services as it starts, and BASE offsets that cover every
    service's main and metrics port (the web edge's HTTP port included), no more."""
    import re

    import pytest

    from talkmesh.cli import build_parser
    from talkmesh.common.registry import SERVICES

    monkeypatch.setenv("COLUMNS", "400")  # one line per option
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    top = capsys.readouterr().out
    assert f"start all {len(SERVICES)} services" in top
    assert all(s.name in top for s in SERVICES)
    with pytest.raises(SystemExit):
        parser.parse_args(["up", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    ranges: dict[str, range] = {}
    for kind, first, last in re.findall(r"(gRPC|HTTP|metrics) BASE(?:\+(\d+))?(?:\.\.BASE\+(\d+))?", text):
        start = int(first or 0)
        ranges[kind] = range(start, int(last or start) + 1)
    for s in SERVICES:
        main, metrics = s.ports(0)
        assert main in ranges["HTTP" if s.protocol == "http" else "gRPC"], (s.name, text)
        assert metrics in ranges["metrics"], (s.name, text)
    assert sum(len(r) for r in ranges.values()) == 2 * len(SERVICES), text


def test_bench_without_a_target_starts_its_own_mesh_and_clients_get_the_default(monkeypatch):
    """`talkmesh bench` with no --target benches a mesh it starts (its target stays None), while
    a client command dials the local mesh's gateway (TALKMESH_PORT_BASE's block)."""
    from talkmesh import cli

    seen: dict[str, object] = {}

    def fake_run(args):
        seen[args.cmd] = args.target
        return 0

    monkeypatch.setattr(cli, "run", fake_run)
    monkeypatch.delenv("TALKMESH_TARGET", raising=False)
    monkeypatch.setenv("TALKMESH_PORT_BASE", "47000")
    assert cli.main(["bench", "--quick"]) == 0
    assert cli.main(["voices"]) == 0
    assert seen == {"bench": None, "voices": "127.0.0.1:47000"}


@pytest.mark.parametrize("command", [["say", "Hello."], ["live"]])
def test_still_asks_for_no_idle_motion(command):
    from talkmesh.cli import build_parser
    from talkmesh.live_cli import idle_motion
    from talkmesh.v1 import types_pb2

    parser = build_parser()
    assert idle_motion(parser.parse_args([*command, "--still"])) == types_pb2.IDLE_MOTION_OFF
    assert idle_motion(parser.parse_args(command)) == types_pb2.IDLE_MOTION_UNSPECIFIED
