"""components/mtls: cert-manager certificates for every service, mounted where the TLS config keys
point, mutual TLS on every internal hop (both directions of every hop configured, server names the
certificates cover), probes that can pass a TLS-only port, and the gateway's API keys from a Secret.

The component's environment is fed to the services' own config loaders (TLS really on, every file
where the Secret is mounted, the API keys file), and the example Secret of API keys parses as the
gateway parses it. tests/test_security.py runs the five services with the same settings (certificates
from ``talkmesh certs``); no overlay sets them by default.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from talkmesh.common.registry import GRPC_NAMES
from tests.deploy.manifests import (
    K8S,
    OVERLAYS,
    REPO,
    SERVICES,
    env_of,
    k8s_name,
    mounts_of,
    named,
    of_kind,
    render,
    runs,
    service_containers,
    volume,
)

TLS_DIR = "/etc/talkmesh/tls"
KEYS_DIR = "/etc/talkmesh/keys"
# The web edge's own key for the gateway (plain, as the edge sends it), created by the operator.
WEB_KEY_SECRET = "talkmesh-web-api-key"
# Who calls whom: (client service, its endpoint's env prefix, the server service).
HOPS = [
    ("gateway", "TALKMESH_GATEWAY__TTS", "tts"),
    ("gateway", "TALKMESH_GATEWAY__AUDIO_FEATURES", "audio_features"),
    ("gateway", "TALKMESH_GATEWAY__RENDERER", "renderer"),
    ("gateway", "TALKMESH_GATEWAY__ENCODER", "encoder"),
    ("encoder", "TALKMESH_ENCODER__RENDERER", "renderer"),
]
# The gRPC services: the HTTP edge (web) is a client of the gateway's public port, which stays
# plaintext here like every client's (public TLS ends at the ingress), so it needs no certificate.
GRPC_SERVICES = [s for s in SERVICES if s in GRPC_NAMES]
INTERNAL = [s for s in GRPC_SERVICES if s != "gateway"]


def prefix(service: str) -> str:
    return f"TALKMESH_{service.upper()}"


def certificate_for_secret(docs: list[dict[str, Any]], secret: str) -> dict[str, Any]:
    (cert,) = [c for c in of_kind(docs, "Certificate") if c["spec"]["secretName"] == secret]
    return cert


def tls_certificate(docs: list[dict[str, Any]], service: str) -> dict[str, Any]:
    """The Certificate behind the Secret mounted at /etc/talkmesh/tls in the service's container."""
    dep, c = runs(docs, service)
    mount = mounts_of(c)[TLS_DIR]
    assert mount["readOnly"] is True
    return certificate_for_secret(docs, volume(dep, mount["name"])["secret"]["secretName"])


def in_tls_dir(path: str, name: str) -> bool:
    return path == f"{TLS_DIR}/{name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_issuer_chain(overlay: str) -> None:
    docs = render(overlay, "mtls")
    issuers = {i["metadata"]["name"]: i for i in of_kind(docs, "Issuer")}
    for cert in of_kind(docs, "Certificate"):
        ref = cert["spec"]["issuerRef"]
        assert ref.get("kind", "Issuer") == "Issuer" and ref["name"] in issuers
    ca_issuer = issuers["talkmesh-ca"]["spec"]["ca"]
    ca_cert = certificate_for_secret(docs, ca_issuer["secretName"])
    assert ca_cert["spec"]["isCA"] is True
    assert "selfSigned" in issuers[ca_cert["spec"]["issuerRef"]["name"]]["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_its_certificate_for_both_directions(overlay: str) -> None:
    docs = render(overlay, "mtls")
    for service in GRPC_SERVICES:
        cert = tls_certificate(docs, service)["spec"]
        assert {"server auth", "client auth"} <= set(cert["usages"]), service
        assert cert["privateKey"]["rotationPolicy"] == "Always"
        names = set(cert["dnsNames"])
        assert {k8s_name(service), "localhost"} <= names, "the Service name clients dial; localhost for probes"
        assert not cert.get("isCA")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_internal_servers_require_client_certificates(overlay: str) -> None:
    docs = render(overlay, "mtls")
    for service in INTERNAL:
        _, c = runs(docs, service)
        env = env_of(c)
        head = f"{prefix(service)}__SERVER__TLS__"
        assert in_tls_dir(env[head + "CERT_FILE"], "tls.crt")
        assert in_tls_dir(env[head + "KEY_FILE"], "tls.key")
        assert in_tls_dir(env[head + "CLIENT_CA_FILE"], "ca.crt"), "mutual TLS"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert "grpc" not in c[probe], f"{service}: kubelet's gRPC probe cannot speak TLS"
            assert c[probe]["exec"]["command"][:3] == ["python", "-m", "talkmesh.healthcheck"]
    # The public port: no client certificates demanded from the world (TLS there is optional).
    _, gateway = runs(docs, "gateway")
    assert not any(k.startswith("TALKMESH_GATEWAY__SERVER__TLS__") for k in env_of(gateway))
    assert "grpc" in gateway["readinessProbe"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_hop_is_configured_on_the_client_side(overlay: str) -> None:
    docs = render(overlay, "mtls")
    for client, head, server in HOPS:
        _, c = runs(docs, client)
        env = env_of(c)
        assert in_tls_dir(env[f"{head}__TLS__CA_FILE"], "ca.crt"), (client, server)
        assert in_tls_dir(env[f"{head}__TLS__CERT_FILE"], "tls.crt")
        assert in_tls_dir(env[f"{head}__TLS__KEY_FILE"], "tls.key")
        server_name = env[f"{head}__TLS__SERVER_NAME"]
        assert server_name in tls_certificate(docs, server)["spec"]["dnsNames"], (client, server)
    # Every TLS key set anywhere belongs to a known hop or server.
    known = {f"{h}__TLS__{k}" for _, h, _ in HOPS for k in ("CA_FILE", "CERT_FILE", "KEY_FILE", "SERVER_NAME")}
    known |= {f"{prefix(s)}__SERVER__TLS__{k}" for s in INTERNAL for k in ("CERT_FILE", "KEY_FILE", "CLIENT_CA_FILE")}
    for _, _, c in service_containers(docs):
        assert {k for k in env_of(c) if "__TLS__" in k} <= known


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_api_keys_from_a_secret(overlay: str) -> None:
    docs = render(overlay, "mtls")
    dep, gateway = runs(docs, "gateway")
    mount = mounts_of(gateway)[KEYS_DIR]
    assert mount["readOnly"] is True
    assert volume(dep, mount["name"])["secret"]["secretName"] == "talkmesh-api-keys"
    assert env_of(gateway)["TALKMESH_GATEWAY__AUTH__API_KEYS_FILE"].startswith(KEYS_DIR + "/")
    for service, d, c in service_containers(docs):
        if service != "gateway":
            assert KEYS_DIR not in mounts_of(c), f"{service} must not see the API keys"
        if service != "web":
            secrets = {volume(d, m["name"]).get("secret", {}).get("secretName") for m in c.get("volumeMounts", [])}
            assert WEB_KEY_SECRET not in secrets, f"{service} must not see the web edge's key"
    assert not [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == "talkmesh-api-keys"], (
        "created by the operator, so that `kubectl apply` never overwrites the keys"
    )
    assert "create secret generic talkmesh-api-keys" in (REPO / "docs" / "DEPLOY.md").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_web_edge_gets_its_own_gateway_key(overlay: str, tmp_path: Any) -> None:
    """With API keys on at the gateway, the web edge (a client of the gateway) sends a key of its own,
    read from a Secret the component mounts: without it every browser action is refused (401) while
    /readyz is 200. The file the config reads is the file the Secret puts there."""
    docs = render(overlay, "mtls")
    dep, web = runs(docs, "web")
    key_file = env_of(web)["TALKMESH_WEB__WEB__GATEWAY_API_KEY_FILE"]
    directory, _, key = key_file.rpartition("/")
    mount = mounts_of(web)[directory]
    assert mount["readOnly"] is True and "subPath" not in mount, "a Secret mounted whole follows its updates"
    secret = volume(dep, mount["name"])["secret"]
    assert secret["secretName"] == WEB_KEY_SECRET
    assert "items" not in secret, f"the Secret's key {key!r} is a file of that name"
    assert directory != KEYS_DIR, "not next to the gateway's hashed keys"
    assert not [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == WEB_KEY_SECRET]
    # The web config loader reads that file for the key it sends (as the mounted Secret would hold it).
    config = _loaded("web", env_of(web))
    assert config.web.gateway_api_key_file == key_file
    from dataclasses import replace

    (tmp_path / key).write_text("tm_example\n")
    assert replace(config.web, gateway_api_key_file=str(tmp_path / key)).gateway_api_key() == "tm_example"
    deploy_md = (REPO / "docs" / "DEPLOY.md").read_text()
    assert f"create secret generic {WEB_KEY_SECRET}" in deploy_md and key_file in deploy_md
    # No key for the web edge without the component (the gateway then has no keys either).
    _, plain_web = runs(render(overlay), "web")
    assert "TALKMESH_WEB__WEB__GATEWAY_API_KEY_FILE" not in env_of(plain_web)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_not_in_the_base_overlays(overlay: str) -> None:
    """TLS and API keys are opt-in (cert-manager needed): no overlay sets them by default."""
    docs = render(overlay)
    assert not of_kind(docs, "Certificate") and not of_kind(docs, "Issuer")
    for _, _, c in service_containers(docs):
        assert not [k for k in env_of(c) if "__TLS__" in k or "__AUTH__" in k]
        assert TLS_DIR not in mounts_of(c) and KEYS_DIR not in mounts_of(c)


def test_config_files_leave_tls_and_keys_to_the_component() -> None:
    """The packaged and container configs stay plaintext without keys: the component's env turns them on."""
    files = [*(REPO / "services").glob("*/config.yaml"), *(K8S / "base" / "config").glob("*.yaml")]
    assert files
    for path in files:
        config = yaml.safe_load(path.read_text()) or {}
        server = config.get("server", {})
        assert "tls" not in server and "unix_socket" not in server and "auth" not in config, path
        for value in config.values():
            assert not (isinstance(value, dict) and "tls" in value), path


def test_the_component_is_a_kustomize_component() -> None:
    doc = yaml.safe_load((K8S / "components" / "mtls" / "kustomization.yaml").read_text())
    assert doc["kind"] == "Component"
    cert = named(render("gpu-split", "mtls"), "Certificate", "encoder-tls")
    assert cert["metadata"]["namespace"] == "talkmesh"


def _loaded(service: str, env: dict[str, str]) -> Any:
    """The service's config as its own loader builds it from the container's environment."""
    import importlib

    from talkmesh.common import registry

    return importlib.import_module(registry.spec(service).main_module).load_config(None, env=env)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_component_turns_tls_and_keys_on_in_the_services_configs(overlay: str) -> None:
    docs = render(overlay, "mtls")
    for service in SERVICES:
        _, c = runs(docs, service)
        config = _loaded(service, env_of(c))  # unknown keys or bad values would raise ConfigError
        tls = config.server.tls
        if service == "web":
            assert not tls.enabled, "the browser edge is public: TLS ends at the Ingress"
        elif service == "gateway":
            assert not tls.enabled, "the public port stays as the base sets it"
            assert not config.server.require_principal, "the edge authenticates keys itself"
            assert config.auth.enabled and config.auth.api_keys_file.startswith(KEYS_DIR + "/")
        else:
            assert tls.enabled and tls.client_ca_file and tls.require_client_cert, service
            assert config.server.require_principal, f"{service}: the gateway has API keys"
            assert (tls.cert_file, tls.key_file, tls.client_ca_file) == tuple(
                f"{TLS_DIR}/{n}" for n in ("tls.crt", "tls.key", "ca.crt")
            )
    for client, head, server in HOPS:
        _, c = runs(docs, client)
        endpoint = getattr(_loaded(client, env_of(c)), head.rsplit("__", 1)[1].lower())
        assert endpoint.tls.active and endpoint.tls.cert_file == f"{TLS_DIR}/tls.crt", (client, server)


def test_example_api_keys_secret() -> None:
    """An example only: a Secret of the name and key the gateway mounts, not part of the component."""
    from services.gateway.auth import hash_key, parse_keys

    path = K8S / "components" / "mtls" / "api-keys.example.yaml"
    secret = yaml.safe_load(path.read_text())
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == "talkmesh-api-keys"
    keys = parse_keys(yaml.safe_load(secret["stringData"]["api-keys"]), str(path))
    assert {k.role for k in keys.values()} == {"user", "admin"}
    assert hash_key("tm_EXAMPLE-ONLY-replace-me-user") in keys, "the comment names the example keys"
    component = yaml.safe_load((K8S / "components" / "mtls" / "kustomization.yaml").read_text())
    assert path.name not in component["resources"]
    import kubernetes_validate

    from tests.deploy.test_manifests import K8S_VERSIONS

    for version in K8S_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
