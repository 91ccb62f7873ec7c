"""scripts/install.sh, the one install command: what it asks pip to do, with a pip that records its
calls (the real GPU install needs NVIDIA's package index and gigabytes of wheels)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.deploy.manifests import REPO

FAKE_PIP = """#!/bin/sh
echo "$*" >> "{log}"
[ "$1" = check ] && exit {check_rc}
exit 0
"""
FAKE_PYTHON = """#!/bin/sh
echo 1.26.0
"""


def run(tmp_path: Path, extras: str, check_rc: int = 0, editable: str = "0") -> tuple[int, list[str]]:
    log = tmp_path / "pip.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "pip").write_text(FAKE_PIP.format(log=log, check_rc=check_rc))
    (bin_dir / "python").write_text(FAKE_PYTHON)
    for exe in ("pip", "python"):
        (bin_dir / exe).chmod(0o755)
    env = dict(os.environ, PIP=str(bin_dir / "pip"), EDITABLE=editable)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), extras], env=env, capture_output=True, text=True
    )
    return proc.returncode, log.read_text().splitlines() if log.exists() else []


def test_cpu_install_is_one_pip_install(tmp_path: Path) -> None:
    rc, calls = run(tmp_path, "renderer")
    assert rc == 0
    assert calls == ["install --upgrade pip>=24", f"install {REPO}[renderer]"]


def test_editable_install(tmp_path: Path) -> None:
    rc, calls = run(tmp_path, "all,dev,tools", editable="1")
    assert rc == 0 and calls[-1] == f"install -e {REPO}[all,dev,tools]"


def test_gpu_install_swaps_onnxruntime_and_ends_consistent(tmp_path: Path) -> None:
    rc, calls = run(tmp_path, "renderer,gpu")
    assert rc == 0
    assert calls == [
        "install --upgrade pip>=24",
        f"install {REPO}[renderer,gpu]",
        # Both wheels provide the onnxruntime module: remove both, put the GPU one back alone.
        "uninstall -y onnxruntime onnxruntime-gpu",
        "install --no-deps onnxruntime-gpu==1.26.0",
        "check",
    ]


def test_gpu_install_fails_when_pip_check_does(tmp_path: Path) -> None:
    rc, calls = run(tmp_path, "renderer,gpu", check_rc=1)
    assert rc != 0 and calls[-1] == "check"
