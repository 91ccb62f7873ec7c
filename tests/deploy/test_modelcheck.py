"""`python -m talkmesh.modelcheck FILE...` (the `check-models` init containers of the neural
component): a model file missing or empty, or the external data file its graph names (MuseTalk's
`unet.onnx.data`) missing or empty beside it, fails the pod before the service starts, naming the
file; nothing is loaded, so it fits the init container's memory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from talkmesh import modelcheck
from talkmesh.common.onnx_files import external_data_locations, model_file_problems
from tests.common.test_gpu import model_with_weights as model
from tests.deploy.manifests import REPO, pod_spec, render, runs


@pytest.fixture
def export(tmp_path: Path) -> list[Path]:
    """A MuseTalk-shaped export directory: the UNet with external data, the VAE files inline."""
    d = tmp_path / "musetalk"
    d.mkdir()
    return [model(d / "unet.onnx", 1000, external=True), model(d / "vae_encoder.onnx", 10, external=False)]


def test_a_whole_export_passes_and_a_lost_external_data_file_fails(export: list[Path], capsys) -> None:
    unet, vae = export
    assert external_data_locations(unet) == ["unet.onnx.data"] and external_data_locations(vae) == []
    assert modelcheck.main([str(p) for p in export]) == 0
    data = unet.parent / "unet.onnx.data"
    data.write_bytes(b"")  # an interrupted copy
    assert modelcheck.main([str(p) for p in export]) == 1
    data.unlink()  # the docs' old upload loop copied only the .onnx files
    assert modelcheck.main([str(p) for p in export]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(str(unet) in line and "unet.onnx.data" in line for line in err), err
    assert "missing or empty" in err[-1] and "whole directory" in err[-1]


def test_missing_empty_and_escaping_files_are_named(export: list[Path], tmp_path: Path) -> None:
    unet, vae = export
    assert model_file_problems(tmp_path / "nope.onnx") == [f"model file {tmp_path / 'nope.onnx'} is missing"]
    vae.write_bytes(b"")
    assert model_file_problems(vae) == [f"model file {vae} is empty"]
    (tmp_path / "secret.bin0").write_bytes(b"x")
    unet.write_bytes(unet.read_bytes().replace(b"unet.onnx.data", b"../secret.bin0"))  # same length
    (problem,) = model_file_problems(unet)
    assert problem == f"model file {unet} names external data '../secret.bin0' outside its directory"
    assert modelcheck.main([]) == 2 and modelcheck.main(["--help"]) == 2


def test_the_check_imports_nothing_heavy() -> None:
    """The init container has 64 MiB: the check runs on the standard library alone (no numpy,
    ONNX Runtime, onnx or gRPC, which importing talkmesh.common.gpu would pull in)."""
    code = "import sys, talkmesh.modelcheck; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    heavy = {"numpy", "onnx", "onnxruntime", "grpc", "yaml", "google"}
    assert not {m.split(".")[0] for m in out.split()} & heavy


@pytest.mark.parametrize("service", ["renderer", "audio_features"])
def test_the_init_containers_command_fails_on_a_lost_external_data_file(service: str, export: list[Path]) -> None:
    """The `check-models` command as rendered (gpu overlay), run here on the export's files: it
    passed a UNet whose `unet.onnx.data` was never copied (it tested `[ -s unet.onnx ]` only)."""
    dep, _ = runs(render("gpu"), service)
    (check,) = [c for c in pod_spec(dep)["initContainers"] if c["name"] == "check-models"]
    command = check["command"][:4]  # sh -c SCRIPT $0; then the files
    assert check["command"][4:] and all(f.startswith("/models/") for f in check["command"][4:])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    files = [str(p) for p in export]
    ok = subprocess.run([*command, *files], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    (export[0].parent / "unet.onnx.data").unlink()
    lost = subprocess.run([*command, *files], capture_output=True, text=True, env=env)
    assert lost.returncode == 1
    assert "unet.onnx.data" in lost.stderr and "fill the talkmesh-models volume" in lost.stderr


def test_a_cut_short_external_data_file_fails_naming_it(export: list[Path], capsys) -> None:
    """An interrupted copy leaves ``unet.onnx.data`` shorter than its graph reads: the check passed
    it (not missing, not empty) and the renderer then failed in ONNX Runtime with a message cut
    before its reason. The graph's offset and length entries say how many bytes it needs."""
    unet, _ = export
    data = unet.parent / "unet.onnx.data"
    whole = data.stat().st_size
    assert whole == 4000 and model_file_problems(unet) == []
    with data.open("r+b") as f:
        f.truncate(whole - 1)
    (problem,) = model_file_problems(unet)
    assert problem == (
        f"model file {unet} keeps its weights in unet.onnx.data beside it, which is cut short "
        f"({whole - 1} bytes; its graph reads {whole}): copy the model's whole directory again"
    )
    assert modelcheck.main([str(unet)]) == 1
    assert "cut short" in capsys.readouterr().err
