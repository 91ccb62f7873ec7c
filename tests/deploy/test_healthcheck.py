"""`python -m talkmesh.healthcheck --service NAME --config FILE` (the images' HEALTHCHECK, and the
exec probe of the mtls component): the port and TLS settings come from the service's own config and
environment, and a server that requires client certificates is checked over mutual TLS."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from talkmesh import healthcheck


class Server:
    def __init__(self, credentials: grpc.ServerCredentials | None = None) -> None:
        self.health = health.HealthServicer()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = "127.0.0.1:0" if credentials is None else "localhost:0"
        self.port = (
            self.server.add_insecure_port(address)
            if credentials is None
            else self.server.add_secure_port(address, credentials)
        )
        self.server.start()

    def set(self, status: int) -> None:
        self.health.set("", status)


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.server.stop(None)


def _config(tmp_path: Path, port: int) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(f"server:\n  host: 0.0.0.0\n  port: {port}\n")
    return str(path)


def test_port_from_the_service_config(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TALKMESH_TTS__SERVER__PORT", raising=False)
    config = _config(tmp_path, server.port)
    server.set(health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main(["--service", "tts", "--config", config]) == 0
    server.set(health_pb2.HealthCheckResponse.NOT_SERVING)
    assert healthcheck.main(["--service", "tts", "--config", config]) == 1


def test_env_override_wins_like_in_the_service(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server.set(health_pb2.HealthCheckResponse.SERVING)
    config = _config(tmp_path, 1)  # nothing listens there
    assert healthcheck.main(["--service", "tts", "--config", config]) == 1
    monkeypatch.setenv("TALKMESH_TTS__SERVER__PORT", str(server.port))
    assert healthcheck.main(["--service", "tts", "--config", config]) == 0


def test_packaged_default_port_without_a_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TALKMESH_RENDERER__SERVER__PORT", raising=False)
    assert healthcheck.target_for(healthcheck.server_settings("renderer", None, {})) == ("127.0.0.1:50054", None)


def test_the_port_block_of_talkmesh_port_base_as_serve_uses_it() -> None:
    """`TALKMESH_PORT_BASE=43200 python -m talkmesh.healthcheck --service gateway` probed 50051
    while `talkmesh serve` listened on 43200 (an SRE's trial)."""
    env = {"TALKMESH_PORT_BASE": "43200"}
    assert healthcheck.target_for(healthcheck.server_settings("gateway", None, env)) == ("127.0.0.1:43200", None)
    assert healthcheck.server_settings("web", None, env)["port"] == 43205
    env["TALKMESH_RENDERER__SERVER__PORT"] = "6000"  # a service's own port still wins, as in `serve`
    assert healthcheck.server_settings("renderer", None, env)["port"] == "6000"


def test_positional_form_still_works(server: Server) -> None:
    server.set(health_pb2.HealthCheckResponse.SERVING)
    assert healthcheck.main([f"127.0.0.1:{server.port}"]) == 0
    assert healthcheck.main([f"127.0.0.1:{server.port}", "liveness"]) == 1  # unknown health service


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def mesh_certs(tmp_path: Path) -> Path:
    """A CA and one leaf certificate for server and client use, as cert-manager would issue them."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not found")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=ca", cwd=tmp_path)
    _openssl("req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=tts", cwd=tmp_path)
    (tmp_path / "ext.cnf").write_text(
        "subjectAltName=DNS:tts,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n"
    )
    _openssl(
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "tls.crt", "-days", "1", "-extfile", "ext.cnf", cwd=tmp_path,
    )  # fmt: skip
    return tmp_path


def test_mutual_tls_with_the_services_own_certificate(
    mesh_certs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = grpc.ssl_server_credentials(
        [((mesh_certs / "tls.key").read_bytes(), (mesh_certs / "tls.crt").read_bytes())],
        root_certificates=(mesh_certs / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    s = Server(creds)
    try:
        s.set(health_pb2.HealthCheckResponse.SERVING)
        config = _config(tmp_path, s.port)
        # Plaintext cannot pass a port that requires mutual TLS.
        assert healthcheck.main(["--service", "tts", "--config", config]) == 1
        for key, name in (("CERT_FILE", "tls.crt"), ("KEY_FILE", "tls.key"), ("CLIENT_CA_FILE", "ca.crt")):
            monkeypatch.setenv(f"TALKMESH_TTS__SERVER__TLS__{key}", str(mesh_certs / name))
        assert healthcheck.main(["--service", "tts", "--config", config]) == 0
        assert healthcheck.main(["--service", "tts", "--config", config, "--check", "liveness"]) == 1
    finally:
        s.server.stop(None)


def test_unreadable_config_is_unhealthy_with_a_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(["--service", "tts", "--config", str(tmp_path / "missing.yaml")]) == 1
    assert "cannot read the tts config" in capsys.readouterr().err


def test_unknown_service_is_unhealthy_with_a_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert healthcheck.main(["--service", "nope"]) == 1
    assert "unknown service 'nope'" in capsys.readouterr().err


def test_the_http_edge_is_checked_over_http(tmp_path: Path) -> None:
    """web has no gRPC port: readiness is GET /readyz, liveness GET /healthz (200 = healthy)."""
    import http.server
    import threading

    ready = {"/healthz": 200, "/readyz": 503}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(ready.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        config = tmp_path / "web.yaml"
        config.write_text(f"server:\n  port: {httpd.server_port}\n")
        args = ["--service", "web", "--config", str(config)]
        assert healthcheck.main([*args, "--check", "liveness"]) == 0
        assert healthcheck.main(args) == 1, "not ready while /readyz is 503"
        ready["/readyz"] = 200
        assert healthcheck.main(args) == 0
    finally:
        httpd.shutdown()
        httpd.server_close()
