"""Rendering the kustomize overlays and finding things in the output (shared by the deploy tests)."""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
GPU_OVERLAYS = [o for o in OVERLAYS if o.startswith("gpu")]
SERVICES = ("gateway", "tts", "audio_features", "renderer", "encoder")
GPU_SERVICES = ("renderer", "encoder")

Manifest = dict[str, Any]


def k8s_name(service: str) -> str:
    return service.replace("_", "-")


def kubectl() -> str:
    exe = shutil.which("kubectl")
    if exe is None:
        pytest.skip("kubectl not found: `kubectl kustomize` renders the overlays (install kubectl >= 1.27)")
    return exe


@functools.cache
def _render(overlay: str) -> tuple[Manifest, ...]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def render(overlay: str) -> list[Manifest]:
    return list(_render(overlay))


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(deployment: Manifest) -> Manifest:
    return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def containers(deployment: Manifest) -> Iterator[Manifest]:
    spec = pod_spec(deployment)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


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


def pods_selected(docs: list[Manifest], selector: Mapping[str, Any]) -> list[str]:
    """Names of the Deployments whose pods the selector picks."""
    return [
        d["metadata"]["name"]
        for d in of_kind(docs, "Deployment")
        if matches(selector, d["spec"]["template"]["metadata"].get("labels", {}))
    ]


def env_of(container: Manifest) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def config_of(docs: list[Manifest], deployment: Manifest) -> dict[str, Any]:
    """The service's config.yaml as mounted from its ConfigMap."""
    volumes = {v["name"]: v for v in pod_spec(deployment).get("volumes", [])}
    cm_name = volumes["config"]["configMap"]["name"]
    cm = named(docs, "ConfigMap", cm_name)
    return yaml.safe_load(cm["data"]["config.yaml"]) or {}  # type: ignore[no-any-return]
