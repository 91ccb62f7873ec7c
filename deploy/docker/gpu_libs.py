"""Build-time check of a GPU image: ONNX Runtime's CUDA and TensorRT providers find every library they need.

Run by the Dockerfile's GPU stages (nothing here needs a GPU or a driver)::

    python gpu_libs.py register                # list the pip NVIDIA wheels' lib dirs in ld.so.conf.d, run ldconfig
    python gpu_libs.py check gpu-stack.yaml    # fail the build when a needed .so is missing

``check`` reads deploy/gpu-stack.yaml (the one compatibility table) and fails, with one line per
problem, when

* the installed onnxruntime-gpu or one of the pinned NVIDIA wheels is not the version in the table, or
  the CPU ``onnxruntime`` wheel is still installed next to it (both provide the same module);
* a provider library needs (DT_NEEDED) a CUDA/TensorRT library the table does not list, e.g. a wheel
  built for another CUDA major (``libcudart.so.13`` where the table says 12);
* ``ldd`` cannot resolve a library the providers need, directly or through another library, other
  than the driver's own libraries (``libcuda.so.1`` and friends, mounted by the NVIDIA container
  runtime when the container starts);
* a library that is loaded with dlopen (TensorRT plugins, cuDNN engines, NVRTC) cannot be found.

Only the standard library and PyYAML (installed with talkmesh) are used; ``readelf`` is not needed.
"""

from __future__ import annotations

import argparse
import glob
import importlib.metadata
import importlib.util
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

# Libraries of the GPU stack (CUDA, cuDNN, TensorRT, NVIDIA driver) as opposed to system libraries.
STACK_LIBRARY = re.compile(r"^lib(cu|nv|cudnn)[A-Za-z_]*\.so")
STANDARD_DIRS = ("/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib")


def elf_needed(path: str | os.PathLike[str]) -> list[str]:
    """The DT_NEEDED entries of a 64-bit little-endian ELF shared object (what ``readelf -d`` lists)."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    # Section header: name, type, flags, addr, offset, size, link, info, addralign, entsize.
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    dynamic = [s for s in sections if s[1] == 6]  # SHT_DYNAMIC
    if not dynamic:
        raise ValueError(f"{path}: no dynamic section")
    dyn = dynamic[0]
    strings = sections[dyn[6]][4]
    needed = []
    for off in range(dyn[4], dyn[4] + dyn[5], 16):
        tag, value = struct.unpack_from("<qQ", data, off)
        if tag == 0:  # DT_NULL
            break
        if tag == 1:  # DT_NEEDED
            start = strings + value
            needed.append(data[start : data.index(b"\0", start)].decode())
    return needed


def unresolved(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> list[str]:
    """Libraries ``ldd`` reports as "not found" for ``path`` (its whole dependency tree)."""
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=dict(env or os.environ), check=False)
    return sorted({m.group(1) for m in re.finditer(r"^\s*(\S+) => not found", out.stdout, re.M)})


def locate(soname: str, env: Mapping[str, str] | None = None) -> str | None:
    """Where the dynamic loader would find ``soname`` for dlopen: LD_LIBRARY_PATH, ld.so.cache, standard dirs."""
    env = os.environ if env is None else env
    for d in [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]:
        if os.path.exists(os.path.join(d, soname)):
            return os.path.join(d, soname)
    try:
        cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, check=False).stdout
    except OSError:
        cache = ""
    m = re.search(rf"^\s*{re.escape(soname)} \([^)]*\) => (\S+)", cache, re.M)
    if m:
        return m.group(1)
    for d in STANDARD_DIRS:
        if os.path.exists(os.path.join(d, soname)):
            return os.path.join(d, soname)
    return None


def check_libraries(
    table: Mapping[str, Any], capi_dir: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> list[str]:
    """Problems with the provider libraries in ``capi_dir`` (onnxruntime/capi) against ``table``."""
    problems: list[str] = []
    driver = set(table["driver_libraries"])
    for lib, expected in table["provider_needs"].items():
        path = Path(capi_dir) / lib
        if not path.is_file():
            problems.append(f"{lib}: not in {capi_dir} (is onnxruntime-gpu installed?)")
            continue
        needed = elf_needed(path)
        for name in sorted(set(expected) - set(needed)):
            problems.append(f"{lib}: does not need {name} although deploy/gpu-stack.yaml says so (another build?)")
        for name in needed:
            if STACK_LIBRARY.match(name) and name not in expected and name not in driver:
                problems.append(
                    f"{lib}: needs {name}, which deploy/gpu-stack.yaml does not list "
                    "(a wheel built for another CUDA, cuDNN or TensorRT major?)"
                )
        for name in unresolved(path, env):
            if name not in driver:
                problems.append(f"{lib}: needs {name}, which the dynamic loader cannot find")
    for name in table["dlopened"]:
        found = locate(name, env)
        if found is None:
            problems.append(f"{name}: loaded at run time, but the dynamic loader cannot find it")
            continue
        for dep in unresolved(found, env):
            if dep not in driver:
                problems.append(f"{name}: needs {dep}, which the dynamic loader cannot find")
    return problems


def check_wheels(table: Mapping[str, Any], versions: Mapping[str, str | None]) -> list[str]:
    """Problems with the installed distributions (``versions``: name -> version or None) against ``table``."""
    problems = []
    for name, pinned in table["wheels"].items():
        got = versions.get(name)
        if got != str(pinned):
            problems.append(f"{name}: installed {got or 'nothing'}, deploy/gpu-stack.yaml pins {pinned}")
    if versions.get("onnxruntime") is not None:
        problems.append("onnxruntime (the CPU wheel) is installed next to onnxruntime-gpu: both provide the module")
    return problems


def installed_versions(names: Iterable[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def capi_directory() -> Path:
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("onnxruntime is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "capi"


def library_dirs(site_packages: Iterable[str]) -> list[str]:
    """The lib directories of the pip NVIDIA wheels (nvidia/*/lib) and of tensorrt-cu12-libs."""
    dirs: list[str] = []
    for base in site_packages:
        dirs += glob.glob(os.path.join(base, "nvidia", "*", "lib"))
        dirs += glob.glob(os.path.join(base, "tensorrt_libs"))
    return sorted(set(dirs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    reg = sub.add_parser("register", help="write an ld.so.conf.d file for the wheels' libraries, run ldconfig")
    reg.add_argument("--conf", default="/etc/ld.so.conf.d/talkmesh-gpu.conf")
    chk = sub.add_parser("check", help="fail when a library the providers need is missing")
    chk.add_argument("table", help="deploy/gpu-stack.yaml")
    args = parser.parse_args(argv)
    if args.cmd == "register":
        site = [p for p in sys.path if p.endswith("site-packages")]
        dirs = library_dirs(site)
        if not dirs:
            print("no NVIDIA wheel libraries found in " + ", ".join(site), file=sys.stderr)
            return 1
        Path(args.conf).write_text("".join(d + "\n" for d in dirs))
        subprocess.run(["ldconfig"], check=True)
        print(f"{args.conf}: {len(dirs)} directories")
        return 0
    table = yaml.safe_load(Path(args.table).read_text())
    problems = check_wheels(table, installed_versions([*table["wheels"], "onnxruntime"]))
    problems += check_libraries(table, capi_directory())
    for p in problems:
        print(f"GPU stack: {p}", file=sys.stderr)
    if problems:
        print(f"GPU stack: {len(problems)} problem(s); see deploy/gpu-stack.yaml", file=sys.stderr)
        return 1
    print(
        f"GPU stack OK: onnxruntime-gpu {table['onnxruntime_gpu']}, CUDA {table['cuda']['version']}, "
        f"cuDNN {table['cudnn']['version']}, TensorRT {table['tensorrt']['version']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
