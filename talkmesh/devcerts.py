"""A development PKI for talkmesh: a CA and one certificate per service (``talkmesh certs``).

Same layout as the Kubernetes Secrets cert-manager makes (deploy/k8s/components/mtls): for each
service ``<dir>/<service>/tls.crt``, ``tls.key`` and ``ca.crt``, plus ``<dir>/ca.crt`` and
``<dir>/ca.key`` (keep the CA key private) and a ``client`` certificate for talkmesh's own client.
Certificates carry the service's name, ``localhost`` and 127.0.0.1, and both usages (server and
client authentication), ECDSA P-256. For tests and laptops; production certificates come from
your issuer.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from talkmesh.common.registry import WEB_KEY_CONCURRENT_STREAMS

CLIENT = "client"


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common_name: str = "talkmesh dev CA", days: int = 3650) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(ca: Issued, common_name: str, dns_names: Iterable[str] = (), days: int = 90) -> Issued:
    """A leaf certificate signed by ``ca`` for server and client authentication."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys([common_name, *dns_names, "localhost"])]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def write_bundle(directory: Path, ca: Issued, leaf: Issued) -> None:
    """``tls.crt``, ``tls.key`` (mode 0600) and ``ca.crt`` in ``directory``, as a Secret mounts them."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    (directory / "tls.crt").write_bytes(leaf.cert_pem)
    key = directory / "tls.key"
    key.touch(mode=0o600)
    key.write_bytes(leaf.key_pem)


def make_dev_pki(directory: Path, services: Iterable[str], *, days: int = 90) -> Issued:
    """A CA and a bundle per service (and ``client``) under ``directory``; returns the CA."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    ca_key = directory / "ca.key"
    ca_key.touch(mode=0o600)
    ca_key.write_bytes(ca.key_pem)
    for name in [*services, CLIENT]:
        dns = [name, name.replace("_", "-")]
        write_bundle(directory / name, ca, issue(ca, name.replace("_", "-"), dns, days=days))
    return ca


def mesh_tls_env(pki: Path) -> dict[str, str]:
    """Environment that runs a mesh (``talkmesh up``, the launcher) as the Kubernetes mtls component
    does, with the certificates of ``make_dev_pki(pki, ...)``: mutual TLS on every internal server
    and hop, TLS without client certificates on the gateway's port."""
    from talkmesh.common.registry import SERVICES

    env: dict[str, str] = {}
    for s in SERVICES:
        own = pki / s.name
        env[s.env_name("server.tls.cert_file")] = str(own / "tls.crt")
        env[s.env_name("server.tls.key_file")] = str(own / "tls.key")
        if s.name != "gateway":
            env[s.env_name("server.tls.client_ca_file")] = str(own / "ca.crt")
        for callee in s.calls:
            env[s.env_name(f"{callee}.tls.ca_file")] = str(own / "ca.crt")
            env[s.env_name(f"{callee}.tls.cert_file")] = str(own / "tls.crt")
            env[s.env_name(f"{callee}.tls.key_file")] = str(own / "tls.key")
            env[s.env_name(f"{callee}.tls.server_name")] = callee.replace("_", "-")
    return env


def principal_required_env() -> dict[str, str]:
    """Environment that makes every gRPC stage behind the gateway refuse calls that carry no API
    key's principal (``server.require_principal``): what a mesh whose gateway has API keys runs
    with (``talkmesh up --api-keys``, as the Kubernetes mtls component sets it)."""
    from talkmesh.common.registry import SERVICES

    return {
        s.env_name("server.require_principal"): "true"
        for s in SERVICES
        if s.protocol == "grpc" and s.name != "gateway"
    }


#: The name of the web edge's API key (``edge_key_env``).
EDGE_KEY_NAME = "web-edge"


#: The web edge's key's limits at the gateway: every call a default edge makes at once (its live
#: sessions, speaks, lists and uploads: ``registry.WEB_KEY_CONCURRENT_STREAMS``, which leaves a
#: default gateway ``WEB_GATEWAY_SPARE`` calls for its other clients), and no rates: the key's
#: counters are all the site's visitors together (600 calls a minute was ~200 page loads, 60
#: uploads an hour the whole site's, and then every visitor got 429 naming the edge's key). Each
#: visitor's share is the edge's (web.max_speaks_per_client, max_uploads_per_client,
#: max_sessions_per_ip...; docs/WEB.md "Sizing"). 0 is "unlimited": a limit left out of an entry
#: would get the keys file's defaults (120 a minute, 20 an hour).
EDGE_KEY_LIMITS = {
    "concurrent_streams": WEB_KEY_CONCURRENT_STREAMS,
    "requests_per_minute": 0,
    "uploads_per_hour": 0,
}


def edge_key_env(directory: Path | None = None) -> dict[str, str]:
    """Environment that gives a mesh's web edge an API key of its own (``talkmesh up --api-keys``):
    a fresh key in ``<directory>/web-edge.key`` (mode 0600) for the edge
    (``web.gateway_api_key_file``) and its hashed entry in ``<directory>/service-keys.yaml`` for the
    gateway (``auth.service_keys_file``; the users' keys file is left as it is). The key's limits
    (``EDGE_KEY_LIMITS``) are what a default edge asks of the gateway at most, so that the edge
    cannot take all of a gateway. Without
    ``directory``, a private temporary one, removed when the process exits."""
    import atexit
    import os
    import shutil
    import tempfile

    import yaml

    from services.gateway.auth import hash_key, new_key
    from talkmesh.common.registry import spec

    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="talkmesh-edge-key-"))
        atexit.register(shutil.rmtree, directory, True)
    directory.mkdir(parents=True, exist_ok=True)
    key = new_key()
    key_file = directory / f"{EDGE_KEY_NAME}.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    entry = {"name": EDGE_KEY_NAME, "role": "user", "sha256": hash_key(key), "limits": dict(EDGE_KEY_LIMITS)}
    keys_file = directory / "service-keys.yaml"
    keys_file.write_text(yaml.safe_dump({"keys": [entry]}, sort_keys=False))
    return {
        spec("gateway").env_name("auth.service_keys_file"): str(keys_file),
        spec("web").env_name("web.gateway_api_key_file"): str(key_file),
    }
