"""The protos: the committed stubs in talkmesh/v1 are exactly what scripts/gen_protos.sh produces, and
buf lint passes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_generated_stubs_are_fresh(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run([str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)], check=True, env=env)
    generated = sorted(p.name for p in (tmp_path / "talkmesh" / "v1").glob("*_pb2*.py*"))
    committed = sorted(p.name for p in (ROOT / "talkmesh" / "v1").glob("*_pb2*.py*"))
    assert generated == committed
    protos = sorted(p.stem for p in (ROOT / "protos" / "talkmesh" / "v1").glob("*.proto"))
    assert {n.split("_pb2")[0] for n in generated} == set(protos)
    stale = [
        n
        for n in generated
        if (tmp_path / "talkmesh" / "v1" / n).read_bytes() != (ROOT / "talkmesh" / "v1" / n).read_bytes()
    ]
    assert not stale, f"stale stubs (run `make proto`): {stale}"


def test_buf_lint_passes():
    """buf lint (buf.yaml: STANDARD + COMMENTS, with its justified exceptions) finds nothing.

    scripts/buf.sh installs buf from npm on first use (``make lint`` does the same); the test is
    skipped only when that is impossible here (no npm, or the install failed).
    """
    env = dict(os.environ, BUF_NODE_DIR=str(ROOT / ".venv" / "node"))
    run = subprocess.run(
        [str(ROOT / "scripts" / "buf.sh"), "lint", "--error-format=text"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode == 127:
        pytest.skip(f"buf is not installed and could not be installed: {run.stderr.strip()}")
    assert run.returncode == 0, f"buf lint found problems (exit {run.returncode}):\n{run.stdout}{run.stderr}"
    assert run.stdout == ""


def test_the_public_api_depends_on_no_internal_stage_file():
    """gateway.proto and live.proto import only types.proto, which imports nothing: a change to a
    stage's own messages cannot reach a client (the client distribution ships only these three)."""
    v1 = ROOT / "protos" / "talkmesh" / "v1"

    def imports(name: str) -> list[str]:
        return re.findall(r'^import\s+(?:public\s+)?"([^"]+)";', (v1 / name).read_text(), re.M)

    assert imports("gateway.proto") == ["talkmesh/v1/types.proto"]
    assert imports("live.proto") == ["talkmesh/v1/types.proto"]
    assert imports("types.proto") == []
    assert "import public" not in (v1 / "gateway.proto").read_text() + (v1 / "live.proto").read_text()
