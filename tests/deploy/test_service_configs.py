"""The container configs (deploy/k8s/base/config, also baked into the images) load with each
service's own config loader, with the environment each overlay sets on its container.

Every key must load, the co-location contract's included (the renderer's `server.unix_socket`, the
encoder's `renderer.target`, set per layout in the manifests' environment).
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from talkmesh.common.config import ConfigError
from talkmesh.common.registry import GRPC_NAMES, NAMES, spec
from tests.deploy.manifests import (
    GPU_OVERLAYS,
    HEADLESS_TWINS,
    K8S,
    OVERLAYS,
    config_of,
    env_of,
    pod_spec,
    ports_of,
    render,
    service_containers,
)

# Keys of the co-location contract, set per layout in the manifests' environment: checked to load
# with the value the manifest gives.
LAYOUT_KEYS = ("server.unix_socket", "renderer.target")


def _loader(service: str):  # type: ignore[no-untyped-def]
    try:
        module = importlib.import_module(f"services.{service}.main")
    except ImportError as exc:
        pytest.skip(f"services.{service}.main is not importable yet: {exc}")
    return module.load_config


def _env_key(service: str, dotted: str) -> str:
    return f"TALKMESH_{service.upper()}__" + "__".join(p.upper() for p in dotted.split("."))


def load(service: str, config: dict[str, Any], env: dict[str, str], tmp_path: Path) -> Any:
    """Loads like the service does (an unknown key is a ConfigError)."""
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return _loader(service)(str(path), env=env)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_and_env_load_with_the_service_loader(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    layout_keys: set[tuple[str, str]] = set()
    for service, dep, container in service_containers(docs):
        env = {k: v for k, v in env_of(container).items() if k.startswith("TALKMESH_")}
        data = config_of(docs, dep, container)
        config = load(service, data, env, tmp_path)
        # what neither the file nor the environment sets keeps the service's own default (a
        # section's per-service defaults too: the gateway's stream limit is 16, not the class's)
        given = set(_leaves(data)) | {k for k in _leaves(dataclasses.asdict(config)) if _env_key(service, k) in env}
        defaults = _loader(service)(None, env={})
        for key, value in _leaves(dataclasses.asdict(defaults)).items():
            if key not in given:
                assert _value(config, key) == value, f"{overlay}: {service} {key} is not its default"
        assert config.server.max_concurrent_streams == spec(service).max_streams
        for key in LAYOUT_KEYS:
            if _env_key(service, key) in env:
                assert str(_value(config, key)) == env[_env_key(service, key)], f"{overlay}: {service} {key}"
                layout_keys.add((service, key))
        assert config.server.host == "0.0.0.0"
        assert config.server.grace_seconds == 60
        ports = ports_of(container)
        assert {config.server.port, config.server.metrics_port} == set(ports.values())
    # the co-located layout's socket, or the split layout's renderer Service
    expected = {("encoder", "renderer.target")}
    if overlay != "gpu-split":
        expected.add(("renderer", "server.unix_socket"))
    assert layout_keys == expected


def test_a_misspelt_override_is_caught(tmp_path: Path) -> None:
    """The check above can fail: an env override naming an unknown key is a config error."""
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
    "renderer": {"server.unix_socket", "avatars.max_upload_bytes", "avatars.max_pixels", "avatars.max_frames"},
    # the web edge calls the gateway through its Service, behind the ingress (whose pods say who
    # the client is: docs/WEB.md "Behind a proxy")
    "web": {"gateway.target", "web.trusted_proxies"},
}
# Every gRPC server ends its clients' connections now and then (GOAWAY), so that round-robin clients
# re-resolve DNS and reach the pods an autoscaler added (test_grpc_servers_age_their_connections).
for _service in GRPC_NAMES:
    DEPLOYMENT_OVERRIDES.setdefault(_service, set()).add("server.max_connection_age_seconds")
# Longest connection age the manifests may set: a new pod must get traffic within minutes.
MAX_CONNECTION_AGE_SECONDS = 600


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
    config = load(service, data, {}, tmp_path)  # an unknown key is a ConfigError here
    defaults = _loader(service)(None, env={})
    return config, {k for k in _leaves(data) if _value(config, k) != _value(defaults, k)}


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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grpc_servers_age_their_connections(overlay: str, tmp_path: Path) -> None:
    """Every gRPC stage (and the gateway, which the web edge balances over) closes its client
    connections after at most MAX_CONNECTION_AGE_SECONDS: a client's round-robin channel re-resolves
    DNS only on reconnection, so without it pods added by the HPA get no streams from existing
    clients (docs/DEPLOY.md, "gRPC load balancing")."""
    docs = render(overlay)
    seen = set()
    for service, dep, container in service_containers(docs):
        env = {k: v for k, v in env_of(container).items() if k.startswith("TALKMESH_")}
        config = load(service, config_of(docs, dep, container), env, tmp_path)
        if service in GRPC_NAMES:
            age = config.server.max_connection_age_seconds
            assert 0 < age <= MAX_CONNECTION_AGE_SECONDS, f"{overlay}: {service} max_connection_age_seconds={age}"
            seen.add(service)
    assert seen == set(GRPC_NAMES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_asks_for_the_backend_the_renderer_serves_by_default(overlay: str, tmp_path: Path) -> None:
    """The gateway names a renderer backend in every request (its default_renderer_backend, which
    also decides the features it asks for): the GPU overlays switched only the renderer's default
    to MuseTalk, so clients that named none still got the mesh-warp renderer."""
    docs = render(overlay)
    loaded = {}
    for service, dep, container in service_containers(docs):
        if service in ("gateway", "renderer"):
            env = {k: v for k, v in env_of(container).items() if k.startswith("TALKMESH_")}
            loaded[service] = load(service, config_of(docs, dep, container), env, tmp_path)
    renderer, gateway = loaded["renderer"], loaded["gateway"]
    assert gateway.default_renderer_backend == renderer.default_backend, overlay
    assert renderer.default_backend in renderer.backends or renderer.default_backend == "viseme"


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_the_wav2lip_component_switches_every_service_that_named_musetalk(overlay: str, tmp_path: Path) -> None:
    """docs/DEPLOY.md told a Wav2Lip user to patch four places by hand and left out one: the feature
    stage's check-models init container waited for a Whisper encoder Wav2Lip does not use, so its
    pod never started. components/wav2lip, after components/neural, is that patch."""
    docs = render(overlay, "wav2lip")
    loaded = {}
    for service, dep, container in service_containers(docs):
        env = {k: v for k, v in env_of(container).items() if k.startswith("TALKMESH_")}
        loaded[service] = load(service, config_of(docs, dep, container), env, tmp_path)
        checks = [c for c in pod_spec(dep).get("initContainers", []) if c["name"] == "check-models"]
        if service == "renderer":
            (check,) = checks
            assert check["command"][4:] == [loaded["renderer"].wav2lip.path] == ["/models/wav2lip/wav2lip.onnx"]
        elif service == "audio_features":
            assert checks == [], "Wav2Lip's mel windows need no Whisper encoder"
    renderer, gateway, features = loaded["renderer"], loaded["gateway"], loaded["audio_features"]
    assert renderer.backends == ["viseme", "wav2lip"] and renderer.default_backend == "wav2lip"
    assert renderer.musetalk.path == "" and features.whisper_encoder.path == ""
    assert gateway.default_renderer_backend == "wav2lip"
