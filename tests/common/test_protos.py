"""The committed stubs in talkmesh/v1 must be exactly what scripts/gen_protos.sh produces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
