"""Static lint of the one Dockerfile and its build context (no Docker engine runs in CI).

One Dockerfile builds every service's image (``--build-arg SERVICE=<name>``), with a CPU target (the
default) and a GPU target. The install step is the project's own install script, the runtime runs as
a non-root user with a gRPC health check on the service's own port, the entrypoint is
``talkmesh serve $SERVICE``, nothing outside /tmp and the cache is written, and the build context
holds no tests, benchmarks or model tools but everything the services import.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import subprocess
import tomllib

import pytest

from tests.deploy.dockerfile import (
    DOCKERIGNORE,
    Dockerfile,
    build_context,
    dockerfile,
    ignore_patterns,
    ignored,
    in_context,
    parse,
)
from tests.deploy.manifests import REPO, SERVICES

TARGETS = ("cpu", "gpu")
ENTRYPOINT = 'exec talkmesh serve "$TALKMESH_SERVICE" --config /etc/talkmesh/config.yaml "$@"'


def make_dry_run(target: str) -> list[str]:
    out = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.startswith("docker build")]


def effective(df: Dockerfile, target: str, op: str) -> list[str]:
    """Every ``op`` argument along the target's FROM chain, base first."""
    return [a for s in df.chain(target) for a in s.all(op)]


def test_one_dockerfile_no_per_service_copies() -> None:
    assert not list((REPO / "services").glob("*/Dockerfile")), "one Dockerfile at the root builds every service"
    df = dockerfile()
    assert df.stages[-1].name == "cpu", "the default target (last stage) is the CPU image"
    assert {s.name for s in df.stages} >= set(TARGETS)
    assert "SERVICE" in df.global_args and df.global_args["SERVICE"] == "", "the service is a required build arg"
    for stage in df.stages:
        if any("${SERVICE}" in i.arg for i in stage.instructions):
            assert "SERVICE" in stage.all("ARG"), f"stage {stage.name} uses ${{SERVICE}} without ARG SERVICE"


@pytest.mark.parametrize("target", TARGETS)
def test_install_step_is_the_project_install_script(target: str) -> None:
    df = dockerfile()
    # The stages the target copies its virtual environment from, and their own bases.
    sources = [
        i.flags[0].split("=", 1)[1]
        for s in df.chain(target)
        for i in s.instructions
        if i.op == "COPY" and i.flags and i.flags[0].startswith("--from=")
    ]
    assert sources, f"{target}: copies no virtual environment from a build stage"
    runs = [r for src in sources for r in effective(df, src, "RUN")] + effective(df, target, "RUN")
    installs = [r for r in runs if "scripts/install.sh" in r]
    assert installs, "the image must install with scripts/install.sh"
    extras = set()
    for cmd in installs:
        words = shlex.split(cmd)
        (arg,) = [words[i + 1] for i, w in enumerate(words) if w.endswith("scripts/install.sh")]
        extras.add(arg)
        assert arg in {"${SERVICE}", "${SERVICE},gpu"}, cmd
    assert ("${SERVICE},gpu" in extras) == (target == "gpu"), f"{target}: {extras}"
    # No second way of installing talkmesh.
    for r in runs:
        assert "pip install" not in r or "scripts/install.sh" in r, r


@pytest.mark.parametrize("target", TARGETS)
def test_runtime_is_non_root_with_grpc_healthcheck_and_serve_entrypoint(target: str) -> None:
    df = dockerfile()
    assert df.base_image(target) == df.base_image("build"), "CPU, GPU and build stages share one OS and Python"
    users = df.stage(target).all("USER")
    assert users, f"{target}: the final stage sets USER (after its root-only steps)"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "numeric non-root uid (runAsNonRoot can verify it)"
    (health,) = effective(df, target, "HEALTHCHECK")
    cmd = shlex.split(health[health.index("CMD") + 3 :])
    assert cmd[:3] == ["python", "-m", "talkmesh.healthcheck"]
    assert cmd[3:] == ["--service", "$TALKMESH_SERVICE", "--config", "/etc/talkmesh/config.yaml", "--check", "liveness"]
    (entry,) = effective(df, target, "ENTRYPOINT")
    entry_cmd = json.loads(entry)
    assert entry_cmd[:2] == ["/bin/sh", "-c"] and entry_cmd[2] == ENTRYPOINT
    env = " ".join(effective(df, target, "ENV"))
    assert "TALKMESH_SERVICE=${SERVICE}" in env
    # Read-only root: no byte-code writes, HOME (and ~/.cache, the data dir) on a volume.
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "HOME=/home/talkmesh" in env
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in env
    assert effective(df, target, "VOLUME") == ['["/home/talkmesh/.cache"]']
    copies = effective(df, target, "COPY")
    assert "deploy/k8s/base/config/${SERVICE}.yaml /etc/talkmesh/config.yaml" in copies
    assert effective(df, target, "STOPSIGNAL") == ["SIGTERM"]


def _seconds(value: str) -> float:
    assert value.endswith("s"), value
    return float(value[:-1])


def test_the_healthcheck_is_the_liveness_probe() -> None:
    """The image's HEALTHCHECK asked for readiness (a gateway whose stage is down, a service warming
    up: "unhealthy") while Kubernetes restarts on liveness. It checks liveness now, with the
    livenessProbe's interval, timeout and retries, after the startupProbe's budget."""
    from tests.deploy.manifests import render, service_containers

    (health,) = [i for s in dockerfile().chain("cpu") for i in s.instructions if i.op == "HEALTHCHECK"]
    options = dict(f.removeprefix("--").split("=", 1) for f in health.flags)
    budgets = []
    for service, _, c in service_containers(render("cpu")):
        startup, liveness = c["startupProbe"], c["livenessProbe"]
        # (what `--check liveness` asks: gRPC health "liveness", the web edge's /healthz)
        assert liveness.get("grpc", {}).get("service") == "liveness" or liveness["httpGet"]["path"] == "/healthz"
        budgets.append(startup["periodSeconds"] * startup["failureThreshold"])
        assert _seconds(options["interval"]) == liveness["periodSeconds"], service
        assert _seconds(options["timeout"]) == liveness["timeoutSeconds"], service
        assert int(options["retries"]) == liveness["failureThreshold"], service
    assert _seconds(options["start-period"]) == max(budgets)  # one image per service, one Dockerfile


def test_gpu_target_checks_its_libraries_and_cpu_target_does_not_carry_them() -> None:
    df = dockerfile()
    gpu_runs = effective(df, "gpu", "RUN")
    (check,) = [r for r in gpu_runs if "gpu_libs.py" in r]
    assert "gpu_libs.py register" in check and "gpu_libs.py check /mnt/deploy/gpu-stack.yaml" in check
    (step,) = [i for i in df.stage("gpu").instructions if i.op == "RUN" and "gpu_libs.py" in i.arg]
    assert "--mount=type=bind,source=deploy,target=/mnt/deploy" in step.flags, "nothing of the check stays"
    assert all("gpu" not in s.name for s in df.chain("cpu"))
    cpu_sources = {i.flags[0] for i in df.stage("cpu").instructions if i.op == "COPY" and i.flags}
    assert cpu_sources == {"--from=build"}


def test_the_lint_can_fail() -> None:
    """A final stage without USER, or a second pip install, is reported."""
    text = (REPO / "Dockerfile").read_text()
    broken = parse(re.sub(r"^USER .*$", "", text, flags=re.M))
    assert not broken.stage("cpu").all("USER")
    with pytest.raises(AssertionError):
        for r in effective(parse(text + "\nRUN pip install onnxruntime-gpu\n"), "cpu", "RUN"):
            assert "pip install" not in r or "scripts/install.sh" in r, r


# -- build context ---------------------------------------------------------------------------------


def test_context_holds_what_the_dockerfile_copies_and_nothing_of_tests_tools_or_benchmarks() -> None:
    context = build_context()
    df = dockerfile()
    for stage in df.stages:
        for i in stage.instructions:
            if i.op == "COPY" and not i.flags:
                for source in i.arg.split()[:-1]:
                    for service in SERVICES:
                        path = source.replace("${SERVICE}", service)
                        assert in_context(path, context), f"COPY {path}: not in the build context"
            for flag in i.flags:
                if flag.startswith("--mount=type=bind"):
                    source = dict(kv.split("=", 1) for kv in flag[len("--mount=") :].split(","))["source"]
                    for word in i.arg.split():
                        if word.startswith("/mnt/deploy/"):
                            assert f"deploy/{word[len('/mnt/deploy/') :]}" in context, word
                    assert in_context(source, context)
    for f in context:
        name = f.rsplit("/", 1)[-1]
        assert not f.startswith(("tests/", "tools/", "docs/", "out/", ".venv/")), f
        assert "bench" not in name, f"{f}: benchmarks live outside the images"
    assert {"talkmesh/cli.py", "talkmesh/healthcheck.py", "services/renderer/config.py"} <= context


def _imports(path: str) -> set[tuple[str, bool]]:
    """(module, inside a function) for every absolute talkmesh/services/tools import of a file."""
    tree = ast.parse((REPO / path).read_text())
    package = path[: -len(".py")].replace("/", ".")
    if path.endswith("__init__.py"):
        package = package.rsplit(".", 1)[0] + ".__init__"
    found: set[tuple[str, bool]] = set()

    def visit(node: ast.AST, nested: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.update((a.name, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: -child.level]
                    base = ".".join([*parts, base] if base else parts)
                found.add((base, inner))
                found.update((f"{base}.{a.name}", inner) for a in child.names)
            visit(child, inner)

    visit(tree, False)
    return {(m, n) for m, n in found if m.split(".")[0] in {"talkmesh", "services", "tools"}}


def _module_file(module: str, files: set[str]) -> str | None:
    path = module.replace(".", "/")
    for candidate in (f"{path}.py", f"{path}/__init__.py"):
        if candidate in files:
            return candidate
    return None


def test_every_module_the_services_import_is_in_the_image() -> None:
    """Leaving benchmarks out breaks nothing: every import of every module in the image resolves to a
    module in the image, except the lazy import behind `talkmesh bench` (not available in images)."""
    context = build_context()
    everything = set(build_context(dockerignore=""))
    allowed_missing = {("talkmesh/cli.py", "talkmesh.bench")}
    for f in sorted(x for x in context if x.endswith(".py")):
        for module, nested in _imports(f):
            if _module_file(module, everything) is None:
                continue  # `from pkg import name` where name is not a module
            if _module_file(module, context) is None:
                assert nested and (f, module) in allowed_missing, f"{f} imports {module}, which is not in the image"


def test_dockerignore_semantics() -> None:
    """The matcher behaves like BuildKit's (so the checks above mean something)."""
    patterns = ignore_patterns("*\n!talkmesh/\n**/bench.py\n!talkmesh/keep/bench.py\n")
    assert ignored("README.md", patterns) and ignored("tools/x.py", patterns)
    assert not ignored("talkmesh/cli.py", patterns)
    assert ignored("talkmesh/bench.py", patterns) and ignored("talkmesh/a/b/bench.py", patterns)
    assert not ignored("talkmesh/keep/bench.py", patterns)
    lines = [x for x in DOCKERIGNORE.read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*", "allow-list: everything is out unless listed"


# -- the image list --------------------------------------------------------------------------------


def test_make_images_builds_every_service_from_the_one_dockerfile() -> None:
    cpu = make_dry_run("images")
    built = [re.search(r"SERVICE=(\w+)", c).group(1) for c in cpu]  # type: ignore[union-attr]
    assert built == list(SERVICES)
    for cmd, service in zip(cpu, SERVICES, strict=True):
        assert f"-t ghcr.io/talkmesh/{service.replace('_', '-')}:" in cmd and cmd.endswith(" .")
        assert "--target" not in cmd and "-f " not in cmd
    gpu = make_dry_run("images-gpu")
    gpu_built = {re.search(r"SERVICE=(\w+)", c).group(1) for c in gpu}  # type: ignore[union-attr]
    # Only images an overlay runs (test_every_gpu_image_built_is_used): the renderer's.
    assert gpu_built == {"renderer"}
    assert all("--target gpu" in c and re.search(r":\S+-gpu \.$", c) for c in gpu)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for service in built:
        assert service in extras, f"scripts/install.sh {service}: no such extra in pyproject.toml"
        assert (REPO / "deploy" / "k8s" / "base" / "config" / f"{service}.yaml").is_file()
    for service in gpu_built:
        assert any(d.startswith("onnxruntime") for d in extras[service]), f"{service} runs no ONNX model"


def test_every_gpu_image_built_is_used() -> None:
    """`make images-gpu` builds exactly the GPU images the overlays run: none is built for nothing
    (audio_features runs on CPU nodes in every overlay) and none an overlay needs is missing."""
    from tests.deploy.manifests import GPU_OVERLAYS, containers, of_kind, render

    built = {
        re.search(r"-t (\S+) \.$", c).group(1)  # type: ignore[union-attr]
        for c in make_dry_run("images-gpu")
    }
    used = set()
    for overlay in GPU_OVERLAYS:
        for dep in of_kind(render(overlay), "Deployment"):
            for c in containers(dep):
                if c["image"].endswith("-gpu"):
                    used.add(c["image"])
    assert used and used == built, f"built {sorted(built)}, run {sorted(used)}"


def test_images_push_pushes_what_images_builds() -> None:
    """No image is published upstream: `make images-push` (and images-gpu-push) build and push every
    image under REGISTRY, the names the overlays' `images:` rewrite from ghcr.io/talkmesh."""
    out = subprocess.run(
        ["make", "-n", "images-push", "images-gpu-push", "REGISTRY=registry.example.com/tm", "TAG=9.9"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    built = [re.search(r"-t (\S+) \.$", c).group(1) for c in out if c.startswith("docker build")]  # type: ignore[union-attr]
    pushed = [c.split()[-1] for c in out if c.startswith("docker push")]
    assert pushed == built and len(pushed) == len(SERVICES) + 1
    assert all(p.startswith("registry.example.com/tm/") for p in pushed)
    guide = (REPO / "docs" / "DEPLOY.md").read_text()
    assert "No images are published" in guide and "make images-push" in guide and "digest:" in guide
