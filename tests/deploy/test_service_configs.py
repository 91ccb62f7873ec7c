"""The container configs (deploy/k8s/base/config, also baked into the images) load with each
service's own config loader, with the environment each overlay sets on its container."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

from talkmesh.common.config import ConfigError
from tests.deploy.manifests import K8S, OVERLAYS, SERVICES, config_of, env_of, k8s_name, named, pod_spec, render


def _loader(service: str):  # type: ignore[no-untyped-def]
    try:
        module = importlib.import_module(f"services.{service}.main")
    except ImportError as exc:
        pytest.skip(f"services.{service}.main is not importable yet: {exc}")
    return module.load_config


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("service", SERVICES)
def test_config_and_env_load_with_the_service_loader(overlay: str, service: str, tmp_path: Path) -> None:
    load_config = _loader(service)
    docs = render(overlay)
    dep = named(docs, "Deployment", k8s_name(service))
    (container,) = pod_spec(dep)["containers"]
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_of(docs, dep)))
    env = {k: v for k, v in env_of(container).items() if k.startswith("TALKMESH_")}
    config = load_config(str(path), env=env)
    assert config.server.host == "0.0.0.0"
    assert config.server.grace_seconds == 60
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (config.server.port, config.server.metrics_port) == (ports["grpc"], ports["metrics"])


def test_a_misspelt_override_is_caught(tmp_path: Path) -> None:
    """The check above can fail: an env override naming an unknown key is a config error."""
    load_config = _loader("encoder")
    path = tmp_path / "config.yaml"
    path.write_text((K8S / "base" / "config" / "encoder.yaml").read_text())
    with pytest.raises(ConfigError):
        load_config(str(path), env={"TALKMESH_ENCODER__VIDEO__ENCODERR": "nvenc"})
