"""Structural lint of the service Dockerfiles (no Docker engine runs in CI): the install step is the
project's own install script, the runtime stages run as a non-root user with a gRPC health check,
the entrypoint is `talkmesh serve <service>`, and nothing outside /tmp and the cache is written."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

import pytest

from tests.deploy.manifests import REPO, SERVICES

PORTS = {"gateway": 50051, "tts": 50052, "audio_features": 50053, "renderer": 50054, "encoder": 50055}
GPU_STAGE = {"audio_features", "renderer", "encoder"}


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse(text: str) -> list[Stage]:
    """Instructions per stage, with line continuations joined and comments dropped."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    stages: list[Stage] = []
    for line in logical:
        op, _, arg = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            words = arg.split()
            stages.append(Stage(base=words[0], name=words[2] if len(words) > 2 else ""))
        elif stages:
            stages[-1].instructions.append((op, arg.strip()))
    return stages


def dockerfile(service: str) -> list[Stage]:
    return parse((REPO / "services" / service / "Dockerfile").read_text())


def runtime_stages(stages: list[Stage]) -> list[Stage]:
    return [s for s in stages if s.all("ENTRYPOINT")]


def install_commands(text: str) -> set[str]:
    """`scripts/install.sh ...` invocations in a file."""
    return {m.group(0).split()[0] for m in re.finditer(r"scripts/install\.sh(\s+\S+)?", text)}


@pytest.mark.parametrize("service", SERVICES)
def test_install_step_is_the_project_install_script(service: str) -> None:
    stages = dockerfile(service)
    runs = [r for s in stages for r in s.all("RUN")]
    installs = [r for r in runs if "scripts/install.sh" in r]
    assert installs, "the Dockerfile must install with scripts/install.sh"
    for cmd in installs:
        words = shlex.split(cmd)
        i = words.index("scripts/install.sh")
        extras = words[i + 1].split(",")
        assert extras[0] == service and set(extras[1:]) <= {"gpu"}, cmd
    # No second way of installing talkmesh: pip only appears for the documented GPU runtime swap.
    for r in runs:
        if "pip install" in r and "scripts/install.sh" not in r:
            assert "onnxruntime-gpu" in r and "--no-deps" in r, r
    copied = [c for s in stages for c in s.all("COPY")]
    assert "scripts/install.sh scripts/install.sh" in copied


def test_readme_and_makefile_use_the_same_install_script() -> None:
    makefile = (REPO / "Makefile").read_text()
    readme = (REPO / "README.md").read_text()
    assert "scripts/install.sh" in makefile
    if not readme.strip():
        pytest.skip("README.md is still empty")
    assert "scripts/install.sh" in readme or "make install" in readme, (
        "the README's install must be scripts/install.sh (directly or through `make install`)"
    )
    if "make install" in readme and "scripts/install.sh" not in readme:
        assert re.search(r"^install:.*\n(?:\t.*\n)*", makefile, re.M)
    for service in SERVICES:
        text = (REPO / "services" / service / "Dockerfile").read_text()
        assert install_commands(text) == {"scripts/install.sh"}


@pytest.mark.parametrize("service", SERVICES)
def test_runtime_stages_are_non_root_with_grpc_healthcheck(service: str) -> None:
    stages = dockerfile(service)
    assert stages[-1].name == "cpu", "the default target (last stage) is the CPU image"
    runtimes = runtime_stages(stages)
    expected = {"cpu", "gpu"} if service in GPU_STAGE else {"cpu"}
    assert {s.name for s in runtimes} == expected
    port = PORTS[service]
    for stage in runtimes:
        users = stage.all("USER")
        assert users, f"{stage.name}: no USER"
        uid = users[-1].split(":")[0]
        assert uid.isdigit() and int(uid) >= 1000, "numeric non-root uid (runAsNonRoot can verify it)"
        (health,) = stage.all("HEALTHCHECK")
        cmd = json.loads(health[health.index("CMD") + 3 :].strip())
        assert cmd[:3] == ["python", "-m", "talkmesh.healthcheck"]
        assert cmd[3] == f"127.0.0.1:{port}"
        (entry,) = stage.all("ENTRYPOINT")
        assert json.loads(entry) == ["talkmesh", "serve", service, "--config", "/etc/talkmesh/config.yaml"]
        exposed = {int(p) for e in stage.all("EXPOSE") for p in e.split()}
        assert port in exposed
        copies = stage.all("COPY")
        assert f"deploy/k8s/base/config/{service}.yaml /etc/talkmesh/config.yaml" in copies
        env = " ".join(stage.all("ENV"))
        # Read-only root: no byte-code writes, HOME (and ~/.cache, the data dir) on a volume.
        assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/home/talkmesh" in env
        assert stage.all("VOLUME") == ['["/home/talkmesh/.cache"]']
        if stage.name == "gpu":
            assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in env


def test_parser_sees_a_missing_user() -> None:
    """The lint can fail: a runtime stage without USER is reported."""
    text = (REPO / "services" / "tts" / "Dockerfile").read_text()
    stages = parse(re.sub(r"^USER .*$", "", text, flags=re.M))
    assert not runtime_stages(stages)[-1].all("USER")
