"""Every overlay whose renderer-bearing Deployment can run more than one pod keeps its prepared avatars
on a ReadWriteMany volume shared by those pods (components/shared-avatars; docs/DEPLOY.md, "Avatar
storage"): otherwise an avatar registered through one pod is NOT_FOUND on the others."""

from __future__ import annotations

import copy
import posixpath

import pytest

from tests.deploy.manifests import (
    OPTIONAL_COMPONENTS,
    OVERLAYS,
    Manifest,
    config_of,
    env_of,
    mounts_of,
    named,
    of_kind,
    render,
    runs,
    volume,
)

HOME = "/home/talkmesh"  # the images' HOME (Dockerfile)
DEFAULT_CACHE = f"{HOME}/.cache/talkmesh/avatars"  # avatars.cache_dir "" (services/renderer/config.py)
ENV = "TALKMESH_RENDERER__AVATARS__CACHE_DIR"


def max_replicas(docs: list[Manifest], deployment: Manifest) -> int:
    name = deployment["metadata"]["name"]
    hpas = [
        h
        for h in of_kind(docs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["kind"] == "Deployment" and h["spec"]["scaleTargetRef"]["name"] == name
    ]
    if hpas:
        return max(int(h["spec"]["maxReplicas"]) for h in hpas)
    return int(deployment["spec"].get("replicas", 1))


def avatar_cache_dir(docs: list[Manifest], deployment: Manifest, renderer: Manifest) -> str:
    configured = env_of(renderer).get(ENV) or config_of(docs, deployment, renderer).get("avatars", {}).get("cache_dir")
    path = configured or DEFAULT_CACHE
    return posixpath.normpath(path.replace("~", HOME, 1) if path.startswith("~") else path)


def problems(docs: list[Manifest]) -> list[str]:
    """Why the renderer's avatar store is not shared by its replicas (empty when it is, or when
    there can be only one replica)."""
    dep, renderer = runs(docs, "renderer")
    replicas = max_replicas(docs, dep)
    if replicas <= 1:
        return []
    where = avatar_cache_dir(docs, dep, renderer)
    holding = [m for p, m in mounts_of(renderer).items() if where == p or where.startswith(p.rstrip("/") + "/")]
    if not holding:
        return [f"up to {replicas} replicas, and the avatar cache {where} is on the container's own file system"]
    mount = max(holding, key=lambda m: len(m["mountPath"]))
    vol = volume(dep, mount["name"])
    if "persistentVolumeClaim" not in vol:
        return [f"up to {replicas} replicas, and the avatar cache {where} is on volume {vol['name']}, not a claim"]
    claim = named(docs, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])
    out = []
    if "ReadWriteMany" not in claim["spec"].get("accessModes", []):
        out.append(f"claim {claim['metadata']['name']} is not ReadWriteMany")
    if mount.get("readOnly") or vol["persistentVolumeClaim"].get("readOnly"):
        out.append(f"the avatar cache {where} is mounted read-only")
    return out


@pytest.mark.parametrize("components", [(), *((c,) for c in OPTIONAL_COMPONENTS)])
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_replicas_share_their_avatar_store(overlay: str, components: tuple[str, ...]) -> None:
    docs = render(overlay, *components)
    assert problems(docs) == []


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if o.startswith("gpu")])
def test_gpu_overlays_scale_out_on_the_shared_volume(overlay: str) -> None:
    docs = render(overlay)
    dep, renderer = runs(docs, "renderer")
    assert max_replicas(docs, dep) > 1
    assert avatar_cache_dir(docs, dep, renderer) == "/var/cache/talkmesh/avatars"
    assert named(docs, "PersistentVolumeClaim", "talkmesh-avatars")["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_cpu_overlay_keeps_one_media_pod() -> None:
    docs = render("cpu")
    dep, _ = runs(docs, "renderer")
    assert max_replicas(docs, dep) == 1


def test_the_check_can_fail() -> None:
    docs = copy.deepcopy(render("cpu"))  # one media pod, avatars in its emptyDir
    hpa = [h for h in of_kind(docs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == "media"]
    hpa[0]["spec"]["maxReplicas"] = 2
    assert any("not a claim" in p for p in problems(docs))
    shared = copy.deepcopy(render("gpu"))
    named(shared, "PersistentVolumeClaim", "talkmesh-avatars")["spec"]["accessModes"] = ["ReadWriteOnce"]
    assert any("not ReadWriteMany" in p for p in problems(shared))
    shared = copy.deepcopy(render("gpu"))
    _, renderer = runs(shared, "renderer")
    renderer["env"] = [e for e in renderer["env"] if e["name"] != ENV]  # back to ~/.cache (an emptyDir)
    assert any("not a claim" in p for p in problems(shared))
