"""Every shell command and the Python sample in README.md run as written, against a mesh on free
ports (``talkmesh up`` reads ``TALKMESH_PORT_BASE``, clients ``TALKMESH_TARGET``), in a scratch
directory that links the clone's files."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from talkmesh.common.registry import PORT_SPAN

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: Commands the test does not run, and why (each must still appear in the README).
NOT_RUN = {
    "make test": "is this test suite",
    "make lint": "part of `make test`",
    "make typecheck": "part of `make test`",
    ".venv/bin/pytest tests/renderer -q": "part of `make test`",
    "make proto": "rewrites the generated stubs in place; tests/common/test_protos.py checks they are current",
    "make bench": "a long measurement; `talkmesh bench --help` and the bench's parts are tested",
    "make install-dev && .venv/bin/talkmesh bench --backend wav2lip": "a long measurement",
}


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def commands(body: str) -> list[str]:
    out = []
    for line in body.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def command_of(line: str) -> str:
    """The command without its trailing comment."""
    return re.sub(r"\s+#\s.*$", "", line).strip()


def free_port_base() -> int:
    import random

    for _ in range(200):
        base = random.randrange(20000, 32000 - PORT_SPAN)
        ok = True
        for port in range(base, base + PORT_SPAN):
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    pytest.skip("no free block of ports")


def scratch(tmp_path: Path) -> Path:
    """A working directory that looks like the clone (links), where outputs land."""
    work = tmp_path / "clone"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in (".git", "out"):
            (work / entry.name).symlink_to(entry)
    venv = Path(sys.prefix)
    if not (work / ".venv").exists():
        (work / ".venv").symlink_to(venv)
    return work


def wait_for(proc: subprocess.Popen[str], marker: str, timeout: float = 180) -> list[str]:
    """Reads ``proc``'s stdout lines (in a thread) until one contains ``marker``."""
    import queue
    import threading

    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout

    def read() -> None:
        for line in stdout:
            lines.put(line)
            if marker in line:
                return
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no {marker!r} within {timeout:.0f}s: {seen}")
        if not line:
            pytest.fail(f"exited before {marker!r}: {seen} {proc.stderr.read() if proc.stderr else ''}")
        seen.append(line)
        if marker in line:
            return seen


@pytest.mark.timeout(900)
def test_every_readme_example_runs_as_written(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    found = blocks(readme)
    shell = [command_of(c) for lang, body in found if lang in ("bash", "sh") for c in commands(body)]
    python = [body for lang, body in found if lang == "python"]
    assert shell and python
    for cmd in NOT_RUN:
        assert cmd in shell, f"NOT_RUN lists {cmd!r}, which the README no longer has"

    base = free_port_base()
    work = scratch(tmp_path)
    env = {
        **os.environ,
        "TALKMESH_PORT_BASE": str(base),
        "TALKMESH_TARGET": f"127.0.0.1:{base}",
        "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "avatars"),
        # a service started alone (`talkmesh serve`) must not take a port of the mesh
        **{f"TALKMESH_{s}__SERVER__PORT": "0" for s in ("GATEWAY", "TTS", "AUDIO_FEATURES", "RENDERER", "ENCODER")},
        **{
            f"TALKMESH_{s}__SERVER__METRICS_PORT": "-1"
            for s in ("GATEWAY", "TTS", "AUDIO_FEATURES", "RENDERER", "ENCODER")
        },
    }
    env.pop("VIRTUAL_ENV", None)

    def popen(cmd: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", cmd],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    mesh: subprocess.Popen[str] | None = None
    ran: list[str] = []
    try:
        for cmd in shell:
            if cmd in NOT_RUN:
                continue
            if cmd == "make demo":
                dry = subprocess.run(["make", "-n", "demo"], cwd=work, capture_output=True, text=True, env=env)
                if "install.sh" in dry.stdout:
                    continue  # it would (re)install the venv first: not in a test
            if re.search(r"talkmesh up\b", cmd):
                mesh = popen(cmd)
                wait_for(mesh, "Ctrl-C stops")
            elif re.search(r"talkmesh serve\b", cmd):
                proc = popen(cmd)
                wait_for(proc, "READY ")
                os.killpg(proc.pid, signal.SIGTERM)
                _, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, f"{cmd}: {err}"
            else:
                res = subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", cmd],
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,  # interactive commands (`talkmesh live`) see end of input
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                assert res.returncode == 0, f"{cmd}\n{res.stdout}\n{res.stderr}"
            ran.append(cmd)
        assert mesh is not None, "the README starts no mesh"
        for i, body in enumerate(python):
            script = work / f"readme_sample_{i}.py"
            script.write_text(body)
            res = subprocess.run(
                [str(Path(sys.prefix) / "bin" / "python"), script.name],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert res.returncode == 0, f"README Python sample {i}:\n{res.stdout}\n{res.stderr}"
    finally:
        if mesh is not None:
            os.killpg(mesh.pid, signal.SIGINT)
            out, err = mesh.communicate(timeout=60)
    assert mesh.returncode == 0, err
    assert "stopped: " in out
    # what the examples wrote is really there
    for name in ("hello.mp4", "hi.mp4", "me.mp4", "fragments.mp4", "llm.mp4", "whole.mp4", "my-renderer.yaml"):
        assert (work / name).stat().st_size > 0, name
    assert any("avatar add" in c for c in ran) and any("say" in c for c in ran)
