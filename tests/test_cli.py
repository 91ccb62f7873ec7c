"""The `talkmesh` command against a running mesh: say, voices, avatar add / list / rm."""

from __future__ import annotations

import asyncio
import sys
from importlib import resources

from tests.media import probe
from tests.mesh import inprocess_mesh


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "talkmesh.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_say_voices_and_avatars_from_the_command_line(tmp_path):
    portrait = tmp_path / "portrait.png"
    portrait.write_bytes(resources.files("services.renderer").joinpath("assets/default_avatar.png").read_bytes())
    async with inprocess_mesh(tmp_path) as mesh:
        gw = ("--target", mesh.gateway)
        code, out, err = await _cli("voices", *gw)
        assert code == 0, err
        assert "espeak:en-us" in out

        code, out, err = await _cli("avatar", "add", str(portrait), "--name", "astro", *gw)
        assert code == 0, err
        avatar_id = out.split()[0]
        # content-addressed: the same file as the default avatar is found, not prepared again
        assert "512x512  1 frame(s)  (already prepared)" in out
        assert "uploaded 0.8 MB; prepared in" in err

        code, out, err = await _cli("avatar", "list", *gw)
        assert code == 0 and avatar_id in out

        code, out, err = await _cli("say", "Hello from the command line.", "-o", str(tmp_path / "s.mp4"), *gw)
        assert code == 0, err
        assert "time to first fragment (client)" in out and "renderer_first_frame" in out
        assert probe(tmp_path / "s.mp4").frames > 10

        code, out, err = await _cli("say", "Hi.", "--voice", "espeak:nope", "-o", str(tmp_path / "x.mp4"), *gw)
        assert code == 1
        assert err.startswith("error: NOT_FOUND: tts: config.voice")
        assert not (tmp_path / "x.mp4").exists()

        code, out, err = await _cli("avatar", "rm", "0123456789abcdef0123", *gw)
        assert code == 0 and out.strip() == "not found"
