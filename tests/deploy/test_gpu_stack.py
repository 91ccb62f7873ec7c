"""One GPU stack: the pins in pyproject.toml, the Dockerfile, the Kubernetes driver floors and the docs
agree with the one compatibility table (deploy/gpu-stack.yaml), and the image's build-time library
check (deploy/docker/gpu_libs.py) fails when a provider library's needed .so files are missing."""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.deploy.dockerfile import dockerfile
from tests.deploy.manifests import DEPLOY, REPO

TABLE_PATH = DEPLOY / "gpu-stack.yaml"


def table() -> dict[str, Any]:
    return yaml.safe_load(TABLE_PATH.read_text())  # type: ignore[no-any-return]


def gpu_libs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_libs", DEPLOY / "docker" / "gpu_libs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def table_problems(t: dict[str, Any]) -> list[str]:
    """Ways the table contradicts itself or the known compatibility rules of its parts."""
    problems = []
    cuda, cudnn, trt = t["cuda"]["major"], t["cudnn"]["major"], t["tensorrt"]["major"]
    ort = version_tuple(t["onnxruntime_gpu"])
    # onnxruntime-gpu on PyPI: CUDA 12 builds up to 1.26, CUDA 13 from 1.27 (TensorRT 10 in both).
    if (cuda == 12) != (ort < (1, 27)):
        problems.append(f"onnxruntime-gpu {t['onnxruntime_gpu']} is not a CUDA {cuda} build")
    if trt != 10:
        problems.append(f"TensorRT {trt}: ONNX Runtime's TensorRT provider links libnvinfer.so.10")
    if t["wheels"].get("onnxruntime-gpu") != t["onnxruntime_gpu"]:
        problems.append("wheels.onnxruntime-gpu differs from onnxruntime_gpu")
    for name, version in t["wheels"].items():
        m = re.search(r"-cu(\d+)(?:-libs)?$", name)
        if m and int(m.group(1)) != cuda:
            problems.append(f"{name}: a CUDA {m.group(1)} wheel in a CUDA {cuda} stack")
        if name.startswith("nvidia-cuda-runtime") and not str(version).startswith(t["cuda"]["version"] + "."):
            problems.append(f"{name} {version} is not CUDA {t['cuda']['version']}")
        if name.startswith("nvidia-cudnn") and not str(version).startswith(t["cudnn"]["version"] + "."):
            problems.append(f"{name} {version} is not cuDNN {t['cudnn']['version']}")
        if name.startswith("tensorrt") and not str(version).startswith(t["tensorrt"]["version"] + "."):
            problems.append(f"{name} {version} is not TensorRT {t['tensorrt']['version']}")
    expected_major = {"libcudart": cuda, "libnvrtc": cuda, "libcudnn": cudnn, "libnvinfer": trt, "libnvonnxparser": trt}
    sonames = [s for libs in t["provider_needs"].values() for s in libs] + list(t["dlopened"])
    for soname in sonames:
        m = re.fullmatch(r"(lib[A-Za-z]+)(?:_[a-z_]+)?\.so\.(\d+)", soname)
        if m and m.group(1) in expected_major and int(m.group(2)) != expected_major[m.group(1)]:
            problems.append(f"{soname}: major {m.group(2)}, the table says {expected_major[m.group(1)]}")
    floor = t["driver_floor"]
    minimum = 580 if cuda == 13 else 535  # CUDA 13 needs R580; TensorRT 10 on CUDA 12 needs R535
    if floor["inference"] < minimum:
        problems.append(f"driver_floor.inference {floor['inference']} < R{minimum} for CUDA {cuda} + TensorRT")
    if floor["nvenc"] < floor["inference"]:
        problems.append("driver_floor.nvenc below driver_floor.inference (a media pod runs both)")
    if not t["base_image"].startswith(f"python:{t['python']}-"):
        problems.append(f"base image {t['base_image']} is not Python {t['python']}")
    return problems


def pin_problems(t: dict[str, Any], pyproject: dict[str, Any], python_image: str) -> list[str]:
    """Ways the repository's pins disagree with the table."""
    problems = []
    gpu = pyproject["project"]["optional-dependencies"]["gpu"]
    pins = {}
    for req in gpu:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+-]*)", req)
        if m is None:
            problems.append(f"pyproject gpu extra: {req!r} is not an exact pin")
            continue
        pins[m.group(1)] = m.group(2)
    if pins != {k: str(v) for k, v in t["wheels"].items()}:
        problems.append(f"pyproject gpu extra {pins} != deploy/gpu-stack.yaml wheels {t['wheels']}")
    if python_image != t["base_image"]:
        problems.append(f"Dockerfile PYTHON_IMAGE {python_image} != deploy/gpu-stack.yaml base_image {t['base_image']}")
    return problems


def test_the_table_is_consistent() -> None:
    assert table_problems(table()) == []


def test_the_pins_agree_with_the_table() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    df = dockerfile()
    assert pin_problems(table(), pyproject, df.global_args["PYTHON_IMAGE"]) == []
    assert df.base_image("gpu") == table()["base_image"]


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (("onnxruntime_gpu",), "1.27.0", "not a CUDA 12 build"),
        (("wheels", "nvidia-cudnn-cu12"), "9.11.0.98", "is not cuDNN 9.10.2"),
        (("wheels", "tensorrt-cu13-libs"), "10.16.1.11", "a CUDA 13 wheel"),
        (("provider_needs", "libonnxruntime_providers_cuda.so"), ["libcudart.so.13"], "major 13"),
        (("driver_floor", "inference"), 525, "< R535"),
    ],
)
def test_a_mismatch_is_reported(path: tuple[str, ...], value: Any, needle: str) -> None:
    t = copy.deepcopy(table())
    node = t
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert any(needle in p for p in table_problems(t)), table_problems(t)


def test_a_pin_mismatch_is_reported() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pyproject["project"]["optional-dependencies"]["gpu"] = ["onnxruntime-gpu>=1.18"]
    problems = pin_problems(table(), pyproject, "python:3.13-slim")
    assert any("not an exact pin" in p for p in problems)
    assert any("PYTHON_IMAGE" in p for p in problems)


def test_docs_list_the_exact_versions() -> None:
    t = table()
    text = (REPO / "docs" / "DEPLOY.md").read_text()
    rows = {
        "onnxruntime-gpu": t["onnxruntime_gpu"],
        "CUDA": t["cuda"]["version"],
        "cuDNN": t["cudnn"]["version"],
        "TensorRT": t["tensorrt"]["version"],
        "NVIDIA driver (inference)": f"≥ {t['driver_floor']['inference']}",
        "NVIDIA driver (NVENC, media pods)": f"≥ {t['driver_floor']['nvenc']}",
    }
    for name, version in rows.items():
        assert re.search(rf"^\| {re.escape(name)} \| {re.escape(version)}[ .|]", text, re.M), f"{name} {version}"


def _libavcodec() -> Path:
    av = pytest.importorskip("av")
    base = Path(av.__file__).parent
    found = sorted(base.parent.glob("av.libs/libavcodec*")) + sorted(base.glob("**/libavcodec*.so*"))
    if not found:
        pytest.skip("no libavcodec next to the PyAV module (a system FFmpeg?)")
    return found[0]


def test_nvenc_driver_floor_covers_the_pyav_ffmpeg() -> None:
    """FFmpeg's h264_nvenc refuses drivers older than the NVENC SDK it was built with; the wheel's
    libavcodec states that minimum ("570.0" for SDK 13). The NVENC floor must not be below it."""
    data = _libavcodec().read_bytes()
    assert b"The minimum required Nvidia driver for nvenc is %s or newer" in data
    versions = {m.group(1).decode() for m in re.finditer(rb"\x00(\d{3}\.\d{1,2})\x00", data)}
    assert len(versions) == 1, versions
    (minimum,) = versions
    assert int(minimum.split(".")[0]) <= table()["driver_floor"]["nvenc"], minimum


def test_installed_onnxruntime_gpu_needs_what_the_table_says() -> None:
    """Where onnxruntime-gpu is installed (not in the CPU test environment), its providers' NEEDED
    entries are exactly the table's."""
    try:
        import importlib.metadata

        version = importlib.metadata.version("onnxruntime-gpu")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("onnxruntime-gpu is not installed here (CPU environment)")
    t = table()
    if version != t["onnxruntime_gpu"]:
        pytest.skip(f"onnxruntime-gpu {version} installed, the table pins {t['onnxruntime_gpu']}")
    g = gpu_libs()
    capi = g.capi_directory()
    for lib, expected in t["provider_needs"].items():
        stack = [n for n in g.elf_needed(capi / lib) if g.STACK_LIBRARY.match(n)]
        assert sorted(stack) == sorted(expected), lib


# -- the build-time check, against small libraries compiled here ------------------------------------


@pytest.fixture
def cc() -> str:
    exe = shutil.which("cc") or shutil.which("gcc")
    if exe is None:
        pytest.skip("no C compiler to build test libraries")
    return exe


def _shared(cc: str, out: Path, soname: str, needs: list[Path] = ()) -> Path:  # type: ignore[assignment]
    src = out.with_suffix(".c")
    src.write_text(f"int f_{abs(hash(soname))}(void) {{ return 0; }}\n")
    cmd = [cc, "-shared", "-fPIC", "-o", str(out), str(src), f"-Wl,-soname,{soname}", "-Wl,--no-as-needed"]
    cmd += [str(p) for p in needs]
    subprocess.run(cmd, check=True, capture_output=True)
    return out


def _fake_stack(cc: str, tmp: Path, cudart: str = "libcudart.so.12") -> tuple[Path, Path, dict[str, Any]]:
    """A capi dir with a provider needing cudart (in libs/) and libcuda.so.1 (a driver library)."""
    libs, capi, driver = tmp / "libs", tmp / "capi", tmp / "driver"
    for d in (libs, capi, driver):
        d.mkdir()
    cudart_lib = _shared(cc, libs / cudart, cudart)
    cuda = _shared(cc, driver / "libcuda.so.1", "libcuda.so.1")
    _shared(cc, libs / "libnvinfer_plugin.so.10", "libnvinfer_plugin.so.10", [cudart_lib])
    _shared(cc, capi / "libonnxruntime_providers_cuda.so", "libonnxruntime_providers_cuda.so", [cudart_lib, cuda])
    shutil.move(str(driver / "libcuda.so.1"), str(tmp / "gone"))  # the driver is absent at build time
    t = {
        "provider_needs": {"libonnxruntime_providers_cuda.so": ["libcudart.so.12"]},
        "dlopened": ["libnvinfer_plugin.so.10"],
        "driver_libraries": ["libcuda.so.1"],
    }
    return libs, capi, t


def test_check_passes_when_every_library_resolves(cc: str, tmp_path: Path) -> None:
    g = gpu_libs()
    libs, capi, t = _fake_stack(cc, tmp_path)
    assert g.elf_needed(capi / "libonnxruntime_providers_cuda.so")[:2] == ["libcudart.so.12", "libcuda.so.1"]
    env = dict(os.environ, LD_LIBRARY_PATH=str(libs))
    assert g.check_libraries(t, capi, env) == []


def test_check_fails_when_a_needed_library_is_missing(cc: str, tmp_path: Path) -> None:
    g = gpu_libs()
    _libs, capi, t = _fake_stack(cc, tmp_path)
    env = dict(os.environ, LD_LIBRARY_PATH=str(tmp_path / "elsewhere"))
    problems = g.check_libraries(t, capi, env)
    assert any("needs libcudart.so.12, which the dynamic loader cannot find" in p for p in problems), problems
    assert any(p.startswith("libnvinfer_plugin.so.10: loaded at run time") for p in problems), problems
    assert not any("libcuda.so.1" in p for p in problems), "driver libraries come with the driver"


def test_check_fails_on_a_provider_built_for_another_cuda(cc: str, tmp_path: Path) -> None:
    g = gpu_libs()
    libs, capi, t = _fake_stack(cc, tmp_path, cudart="libcudart.so.13")
    env = dict(os.environ, LD_LIBRARY_PATH=str(libs))
    problems = g.check_libraries(t, capi, env)
    assert any("needs libcudart.so.13, which deploy/gpu-stack.yaml does not list" in p for p in problems), problems
    assert any("does not need libcudart.so.12" in p for p in problems), problems


def test_wheel_versions_are_checked() -> None:
    g = gpu_libs()
    t = table()
    good = {name: str(v) for name, v in t["wheels"].items()} | {"onnxruntime": None}
    assert g.check_wheels(t, good) == []
    bad = good | {"nvidia-cudnn-cu12": "9.11.0.98", "onnxruntime": "1.32.0"}
    problems = g.check_wheels(t, bad)
    assert any("nvidia-cudnn-cu12: installed 9.11.0.98" in p for p in problems)
    assert any("onnxruntime (the CPU wheel)" in p for p in problems)


def test_library_dirs_are_the_wheels_lib_dirs(tmp_path: Path) -> None:
    g = gpu_libs()
    for d in ("nvidia/cudnn/lib", "nvidia/cublas/lib", "tensorrt_libs", "nvidia/cudnn/include"):
        (tmp_path / d).mkdir(parents=True)
    assert g.library_dirs([str(tmp_path)]) == [
        str(tmp_path / "nvidia/cublas/lib"),
        str(tmp_path / "nvidia/cudnn/lib"),
        str(tmp_path / "tensorrt_libs"),
    ]


def test_the_runtime_checks_agree_with_the_table() -> None:
    """What the services check at start-up (talkmesh.common.onnx pre-flight) and what `talkmesh doctor`
    reports as driver floors are the table's values."""
    from talkmesh.common.gpu import DRIVER_FLOOR
    from talkmesh.common.onnx import CUDA, CUDA_MAJOR, PROVIDER_LIBRARIES, TENSORRT

    t = table()
    assert CUDA_MAJOR == t["cuda"]["major"]
    assert DRIVER_FLOOR == t["driver_floor"]
    needs = t["provider_needs"]
    assert list(PROVIDER_LIBRARIES[CUDA]) == needs["libonnxruntime_providers_cuda.so"]
    assert list(PROVIDER_LIBRARIES[TENSORRT]) == needs["libonnxruntime_providers_tensorrt.so"]
