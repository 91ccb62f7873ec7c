"""Rendering the kustomize overlays and finding things in the output (shared by the deploy tests)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from talkmesh.common import registry

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
GPU_OVERLAYS = [o for o in OVERLAYS if o.startswith("gpu")]
SERVICES = registry.NAMES
GPU_SERVICES = ("renderer", "encoder")
# Optional components an overlay can enable (the tests render each overlay with each of them).
OPTIONAL_COMPONENTS = ("mtls", "nvidia-runtime-class", "web-tokens")

# Headless twins of entry-point Services, for in-cluster clients that balance themselves
# (Service name -> the talkmesh service it reaches): gRPC port only, never scraped.
HEADLESS_TWINS = {"gateway-pods": "gateway"}

Manifest = dict[str, Any]


def k8s_name(service: str) -> str:
    return registry.spec(service).k8s_name


def kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl not found: `kubectl kustomize` renders the overlays (install kubectl >= 1.27)")
    return exe


def _kustomize(directory: Path) -> tuple[Manifest, ...]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], check=True, capture_output=True, text=True).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


@functools.cache
def _render(overlay: str, components: tuple[str, ...]) -> tuple[Manifest, ...]:
    if not components:
        return _kustomize(K8S / "overlays" / overlay)
    # An overlay with optional components added, as a user's own overlay would list them. kustomize
    # wants relative paths; the namespace transformer (unsetOnly) keeps the device plugin config where
    # it belongs, like the GPU overlays do.
    with tempfile.TemporaryDirectory() as tmp:
        rel = os.path.relpath(K8S, tmp)
        doc = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [f"{rel}/overlays/{overlay}"],
            "components": [f"{rel}/components/{c}" for c in components],
            "transformers": ["namespace.yaml"],
        }
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(doc))
        (Path(tmp) / "namespace.yaml").write_text(
            "apiVersion: builtin\nkind: NamespaceTransformer\nmetadata: {name: ns, namespace: talkmesh}\n"
            "unsetOnly: true\n"
        )
        return _kustomize(Path(tmp))


def render(overlay: str, *components: str) -> list[Manifest]:
    return list(_render(overlay, tuple(components)))


# The cluster admin's step for the GPU overlays (not part of any overlay): the device plugin config.
GPU_OPERATOR = K8S / "gpu-operator"


@functools.cache
def _device_plugin_docs() -> tuple[Manifest, ...]:
    return _kustomize(GPU_OPERATOR)


def device_plugin_config() -> Manifest:
    """The device plugin ConfigMap of ``deploy/k8s/gpu-operator``."""
    (cm,) = _device_plugin_docs()
    return cm


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(deployment: Manifest) -> Manifest:
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def containers(deployment: Manifest) -> Iterator[Manifest]:
    """Init containers, then the app containers."""
    spec = pod_spec(deployment)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def service_of(container: Manifest) -> str | None:
    """The talkmesh service a container runs (`talkmesh serve <service>`), or None."""
    command = container.get("command", [])
    return command[2] if command[:2] == ["talkmesh", "serve"] and len(command) > 2 else None


def service_containers(docs: list[Manifest]) -> Iterator[tuple[str, Manifest, Manifest]]:
    """(service, Deployment, container) for every container that runs a talkmesh service."""
    for dep in of_kind(docs, "Deployment"):
        for c in pod_spec(dep)["containers"]:
            service = service_of(c)
            if service is not None:
                yield service, dep, c


def runs(docs: list[Manifest], service: str) -> tuple[Manifest, Manifest]:
    """The Deployment and the container that run ``service`` (exactly one of each)."""
    found = [(dep, c) for s, dep, c in service_containers(docs) if s == service]
    assert len(found) == 1, f"{service} runs in {len(found)} containers"
    return found[0]


def matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label selector semantics (matchLabels + matchExpressions, or a plain map)."""
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        return all(labels.get(k) == v for k, v in selector.items())
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def pod_labels(deployment: Manifest) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"].get("labels", {})  # type: ignore[no-any-return]


def pods_selected(docs: list[Manifest], selector: Mapping[str, Any]) -> list[str]:
    """Names of the Deployments whose pods the selector picks."""
    return [d["metadata"]["name"] for d in of_kind(docs, "Deployment") if matches(selector, pod_labels(d))]


def env_of(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def mounts_of(container: Manifest) -> dict[str, Manifest]:
    """mountPath -> volumeMount."""
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def volume(deployment: Manifest, name: str) -> Manifest:
    (found,) = [v for v in pod_spec(deployment).get("volumes", []) if v["name"] == name]
    return found  # type: ignore[no-any-return]


def config_of(docs: list[Manifest], deployment: Manifest, container: Manifest) -> dict[str, Any]:
    """The container's config.yaml as mounted from its ConfigMap."""
    mount = mounts_of(container)["/etc/talkmesh/config.yaml"]
    cm_name = volume(deployment, mount["name"])["configMap"]["name"]
    cm = named(docs, "ConfigMap", cm_name)
    return yaml.safe_load(cm["data"][mount["subPath"]]) or {}  # type: ignore[no-any-return]


def ports_of(container: Manifest) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}
