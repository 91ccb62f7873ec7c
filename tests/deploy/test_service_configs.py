"""The container configs (deploy/k8s/base/config, also baked into the images) load with each
service's own config loader, with the environment each overlay sets on its container.

Keys of the co-location contract (the renderer's `server.unix_socket`, the encoder's `renderer.target`)
are set in the manifests before the services accept them; while a service's loader does not know such
a key yet, it is left out of that service's check (and reported), and every other key must load.
"""

from __future__ import annotations

import importlib
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from talkmesh.common.config import ConfigError
from talkmesh.common.registry import NAMES, spec
from tests.deploy.manifests import (
    HEADLESS_TWINS,
    K8S,
    OVERLAYS,
    config_of,
    env_of,
    ports_of,
    render,
    service_containers,
)

# Keys the manifests set ahead of the code (issue 16's co-location contract): dotted config paths.
PENDING = {"server.unix_socket", "renderer.target"}


def _loader(service: str):  # type: ignore[no-untyped-def]
    try:
        module = importlib.import_module(f"services.{service}.main")
    except ImportError as exc:
        pytest.skip(f"services.{service}.main is not importable yet: {exc}")
    return module.load_config


def _env_key(service: str, dotted: str) -> str:
    return f"TALKMESH_{service.upper()}__" + "__".join(p.upper() for p in dotted.split("."))


def _without(service: str, config: dict[str, Any], env: dict[str, str], dotted: str) -> None:
    env.pop(_env_key(service, dotted), None)
    section, _, key = dotted.rpartition(".")
    node = config
    for part in section.split(".") if section else []:
        node = node.get(part, {})
    node.pop(key, None)
    if section and not node and section in config:
        config.pop(section)


def load(service: str, config: dict[str, Any], env: dict[str, str], tmp_path: Path) -> tuple[Any, set[str]]:
    """Loads like the service does; pending keys the loader rejects are dropped and returned."""
    load_config = _loader(service)
    dropped: set[str] = set()
    while True:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        try:
            return load_config(str(path), env=env), dropped
        except ConfigError as exc:
            m = re.match(r"(\w[\w.]*|\w+Config): unknown key\(s\) (.+)$", str(exc))
            if m is None:
                raise
            where = "" if m.group(1).endswith("Config") else m.group(1) + "."
            keys = set()
            for unknown in (where + k.strip() for k in m.group(2).split(",")):
                # An unknown key is a pending key, or a section that only pending keys are in.
                pending = {p for p in PENDING if p == unknown or p.startswith(unknown + ".")}
                if not pending:
                    raise
                keys |= pending
            if keys & dropped:
                raise
            for key in keys:
                _without(service, config, env, key)
            dropped |= keys


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_env_load_with_the_service_loader(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    for service, dep, container in service_containers(docs):
        env = {k: v for k, v in env_of(container).items() if k.startswith("TALKMESH_")}
        config, dropped = load(service, config_of(docs, dep, container), env, tmp_path)
        if dropped:
            warnings.warn(f"{overlay}: {service} does not accept {sorted(dropped)} yet", stacklevel=1)
        assert config.server.host == "0.0.0.0"
        assert config.server.grace_seconds == 60
        ports = ports_of(container)
        assert {config.server.port, config.server.metrics_port} == set(ports.values())


def test_a_misspelt_override_is_caught(tmp_path: Path) -> None:
    """The check above can fail: an env override naming an unknown key is a config error, and only
    the pending keys are ever left out."""
    config = yaml.safe_load((K8S / "base" / "config" / "encoder.yaml").read_text())
    with pytest.raises(ConfigError):
        load("encoder", config, {"TALKMESH_ENCODER__VIDEO__ENCODERR": "nvenc"}, tmp_path)
    with pytest.raises(ConfigError):
        load("encoder", config, {"TALKMESH_ENCODER__RENDERER__TARGETT": "x"}, tmp_path)



#: What a deployment changes on purpose, by service ("*": every service). A ConfigMap value that
#: differs from the dataclass defaults and is not listed here fails the test below: defaults live in
#: the dataclasses, and a copy that drifts from them cannot hide in the deployment.
DEPLOYMENT_OVERRIDES: dict[str, set[str]] = {
    # listen on every interface in the pod; drain for the pod's grace period; logs for a collector
    "*": {"server.host", "server.grace_seconds", "server.log_json"},
    # headless Services and client-side round robin (docs/DEPLOY.md)
    "gateway": {"tts.target", "audio_features.target", "renderer.target", "encoder.target"},
    # CPU nodes encode with x264 (the gpu component switches to NVENC through the environment);
    # the encoder pulls frames from the renderer in its pod (Unix socket) or through its Service
    "encoder": {"video.encoder", "renderer.target"},
    # the renderer also listens on the pod's Unix socket for the co-located encoder, and takes
    # uploads only as large as the pod's memory and disk limits allow (docs/DEPLOY.md)
    # the web edge calls the gateway through its Service
    "web": {"gateway.target"},
    "renderer": {"server.unix_socket", "avatars.max_upload_bytes", "avatars.max_pixels", "avatars.max_frames"},
}


def _leaves(data: dict, prefix: str = "") -> dict[str, object]:  # type: ignore[type-arg]
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _value(config: object, key: str) -> object:
    for part in key.split("."):
        config = getattr(config, part)
    return config


def _configmaps() -> list[tuple[str, str, dict]]:  # type: ignore[type-arg]
    """(where, service, config) of the base files and of every overlay's rendered configs."""
    out = [
        (f"base/config/{s}.yaml", s, yaml.safe_load((K8S / "base" / "config" / f"{s}.yaml").read_text()))
        for s in NAMES
    ]
    for overlay in OVERLAYS:
        docs = render(overlay)
        for service, dep, container in service_containers(docs):
            out.append((f"overlay {overlay}", service, config_of(docs, dep, container)))
    return out


def _differing(service: str, data: dict, tmp_path: Path) -> tuple[Any, set[str]]:  # type: ignore[type-arg]
    config, dropped = load(service, data, {}, tmp_path)  # an unknown key is a ConfigError here
    defaults = _loader(service)(None, env={})
    return config, {k for k in _leaves(data) if k not in dropped and _value(config, k) != _value(defaults, k)}


@pytest.mark.parametrize(("where", "service", "data"), _configmaps(), ids=lambda v: v if isinstance(v, str) else "")
def test_configmaps_set_existing_keys_and_differ_from_the_defaults_only_by_deployment_overrides(
    where: str, service: str, data: dict, tmp_path: Path  # type: ignore[type-arg]
) -> None:
    config, differing = _differing(service, data, tmp_path)
    allowed = DEPLOYMENT_OVERRIDES["*"] | DEPLOYMENT_OVERRIDES.get(service, set())
    assert differing <= allowed, f"{where}: {sorted(differing - allowed)} differ from the defaults"
    assert (config.server.port, config.server.metrics_port) == spec(service).ports()
    set_keys = _leaves(data)
    for callee in spec(service).calls:
        target = set_keys.get(f"{callee}.target")
        if target is not None:  # a target the ConfigMap sets names the callee's Service, or a pod socket
            callee_spec = spec(callee)
            names = {callee_spec.k8s_name} | {twin for twin, s in HEADLESS_TWINS.items() if s == callee}
            assert str(target).startswith("unix:") or target in {f"dns:///{n}:{callee_spec.port}" for n in names}


def test_an_undeclared_difference_is_caught(tmp_path: Path) -> None:
    """The check above can fail: a ConfigMap that quietly changes a default is reported."""
    data = yaml.safe_load((K8S / "base" / "config" / "encoder.yaml").read_text())
    data["server"]["max_concurrent_streams"] = 64
    _, differing = _differing("encoder", data, tmp_path)
    assert "server.max_concurrent_streams" in differing - (DEPLOYMENT_OVERRIDES["*"] | DEPLOYMENT_OVERRIDES["encoder"])
