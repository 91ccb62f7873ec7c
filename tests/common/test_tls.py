"""TLS on a service's port: mutual TLS, certificates reloaded when their files change, config checks."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import ssl
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from talkmesh.common.channel import ClientTLS, create_channel
from talkmesh.common.config import ConfigError, ServerConfig, ServerTLS, load_config
from talkmesh.common.server import Service, ServiceHost
from talkmesh.common.telemetry import Telemetry
from talkmesh.devcerts import Issued, issue, make_ca, make_dev_pki, write_bundle


class Empty(Service):
    name = "tts"

    def register(self, server: grpc.aio.Server) -> list[str]:
        return []


def served_certificate(port: int, pki: Path) -> bytes:
    """The DER certificate a new TLS connection to 127.0.0.1:``port`` is served (mutual TLS)."""
    ctx = ssl.create_default_context(cafile=None)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(pki / "client" / "tls.crt", pki / "client" / "tls.key")
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        cert = tls.getpeercert(binary_form=True)
    assert cert
    return cert


def der(pem: bytes) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.decode())


async def check(address: str, tls: ClientTLS) -> grpc.StatusCode:
    async with create_channel(address, tls=tls) as ch:
        try:
            await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def replace_atomically(directory: Path, leaf: Issued) -> None:
    """As Kubernetes updates a mounted Secret: the new files appear at once."""
    tmp = directory.with_name(directory.name + ".new")
    shutil.copytree(directory, tmp)
    (tmp / "tls.crt").write_bytes(leaf.cert_pem)
    (tmp / "tls.key").write_bytes(leaf.key_pem)
    for name in ("tls.crt", "tls.key"):
        (tmp / name).replace(directory / name)
    shutil.rmtree(tmp)


async def test_rotated_certificate_is_served_to_new_connections_without_restart(tmp_path):
    pki = tmp_path / "pki"
    ca = make_dev_pki(pki, ["tts"])
    d = pki / "tts"
    tls = ServerTLS(str(d / "tls.crt"), str(d / "tls.key"), client_ca_file=str(d / "ca.crt"))
    host = ServiceHost(Empty(Telemetry("tts")), ServerConfig(port=0, grace_seconds=0.5, tls=tls))
    await host.start()
    try:
        client = ClientTLS(
            ca_file=str(pki / "ca.crt"),
            cert_file=str(pki / "client" / "tls.crt"),
            key_file=str(pki / "client" / "tls.key"),
            server_name="tts",
        )
        assert await check(host.address, client) == grpc.StatusCode.OK
        first = served_certificate(host.port, pki)
        assert first == der((d / "tls.crt").read_bytes())

        # Renewal by the same CA (cert-manager's renewal; the key is rotated too).
        renewed = issue(ca, "tts", ["tts"])
        replace_atomically(d, renewed)
        second = served_certificate(host.port, pki)
        assert second == der(renewed.cert_pem) != first
        assert await check(host.address, client) == grpc.StatusCode.OK
        assert host.certificates is not None and host.certificates.loads == 2

        # Half a rotation (a new key, the old certificate): the loaded pair stays in service.
        (d / "tls.key").write_bytes(issue(ca, "tts").key_pem)
        assert served_certificate(host.port, pki) == second
        assert await check(host.address, client) == grpc.StatusCode.OK

        # A new CA: clients that trust only the new CA get in only after the server's files change.
        new_ca = make_ca("talkmesh dev CA 2")
        new_pki = tmp_path / "new"
        write_bundle(new_pki / "client", new_ca, issue(new_ca, "client"))
        new_client = ClientTLS(
            ca_file=str(new_pki / "client" / "ca.crt"),
            cert_file=str(new_pki / "client" / "tls.crt"),
            key_file=str(new_pki / "client" / "tls.key"),
            server_name="tts",
        )
        assert await check(host.address, new_client) == grpc.StatusCode.UNAVAILABLE
        (d / "ca.crt").write_bytes(new_ca.cert_pem)  # the client CA first (a Secret carries all three)
        replace_atomically(d, issue(new_ca, "tts", ["tts"]))
        assert await check(host.address, new_client) == grpc.StatusCode.OK
        assert await check(host.address, client) == grpc.StatusCode.UNAVAILABLE  # the old CA is out
    finally:
        await host.stop(grace=0.5)


async def test_tls_without_client_certificates_and_plaintext_refused(tmp_path):
    pki = tmp_path / "pki"
    make_dev_pki(pki, ["tts"])
    d = pki / "tts"
    cfg = ServerConfig(port=0, grace_seconds=0.5, tls=ServerTLS(str(d / "tls.crt"), str(d / "tls.key")))
    host = ServiceHost(Empty(Telemetry("tts")), cfg)
    await host.start()
    try:
        assert await check(host.address, ClientTLS(ca_file=str(pki / "ca.crt"))) == grpc.StatusCode.OK
        assert await check(host.address, ClientTLS()) == grpc.StatusCode.UNAVAILABLE  # plaintext
        assert await check(host.address, ClientTLS(enabled=True)) == grpc.StatusCode.UNAVAILABLE  # system roots
    finally:
        await host.stop(grace=0.5)


async def test_health_and_reflection_can_be_turned_off():
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    cfg = ServerConfig(port=0, grace_seconds=0.5, health=False, reflection=False)
    host = ServiceHost(Empty(Telemetry("tts")), cfg)
    await host.start()
    try:
        assert await check(host.address, ClientTLS()) == grpc.StatusCode.UNIMPLEMENTED
        async with create_channel(host.address) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            # no request written: writing races the server's immediate answer (INTERNAL on the send)
            call = stub.ServerReflectionInfo(iter([]))
            assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await host.stop(grace=0.5)
    host = ServiceHost(Empty(Telemetry("tts")), ServerConfig(port=0, grace_seconds=0.5))
    await host.start()
    try:
        assert await check(host.address, ClientTLS()) == grpc.StatusCode.OK
    finally:
        await host.stop(grace=0.5)


@dataclasses.dataclass(frozen=True)
class Holder:
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)


async def test_tls_config_is_checked(tmp_path):
    env = {"T__SERVER__TLS__CERT_FILE": "/x/tls.crt"}
    with pytest.raises(ConfigError, match=r"server\.tls\.key_file: cert_file and key_file go together"):
        load_config(Holder, env_prefix="T", env=env)
    env = {"T__SERVER__TLS__CLIENT_CA_FILE": "/x/ca.crt"}
    with pytest.raises(ConfigError, match=r"server\.tls\.client_ca_file"):
        load_config(Holder, env_prefix="T", env=env)
    env = {
        "T__SERVER__TLS__CERT_FILE": str(tmp_path / "missing.crt"),
        "T__SERVER__TLS__KEY_FILE": str(tmp_path / "missing.key"),
    }
    cfg = load_config(Holder, env_prefix="T", env=env)
    host = ServiceHost(Empty(Telemetry("tts")), cfg.server)
    with pytest.raises(ConfigError, match=r"server\.tls"):
        await host.start()
    assert host.server is None


async def test_healthcheck_probe_connects_over_mutual_tls(tmp_path):
    """The Kubernetes probes of the mtls component: the service's own certificate, ``localhost``."""
    from talkmesh import healthcheck

    pki = tmp_path / "pki"
    make_dev_pki(pki, ["tts"])
    d = pki / "tts"
    tls = ServerTLS(str(d / "tls.crt"), str(d / "tls.key"), client_ca_file=str(d / "ca.crt"))
    host = ServiceHost(Empty(Telemetry("tts")), ServerConfig(port=0, grace_seconds=0.5, tls=tls))
    await host.start()
    try:
        env = {
            "TALKMESH_TTS__SERVER__PORT": str(host.port),
            "TALKMESH_TTS__SERVER__TLS__CERT_FILE": tls.cert_file,
            "TALKMESH_TTS__SERVER__TLS__KEY_FILE": tls.key_file,
            "TALKMESH_TTS__SERVER__TLS__CLIENT_CA_FILE": tls.client_ca_file,
        }
        target, creds = healthcheck.target_for(healthcheck.server_settings("tts", None, env))
        assert creds is not None
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, healthcheck.check, target, "liveness", 5.0, creds)
        plain, none = healthcheck.target_for(
            healthcheck.server_settings("tts", None, {"TALKMESH_TTS__SERVER__PORT": str(host.port)})
        )
        assert none is None
        assert not await loop.run_in_executor(None, healthcheck.check, plain, "liveness", 2.0, None)
    finally:
        await host.stop(grace=0.5)


async def _liveness(stub: health_pb2_grpc.HealthStub) -> grpc.StatusCode:
    try:
        await stub.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_a_rotated_client_certificate_is_used_without_restart(tmp_path):
    """A client channel (and a stub made on it before) presents a renewed client certificate once
    its files change: a server that trusts only the new CA lets it in without a new channel; half a
    rotation (the new key first) keeps the old pair; calls in flight on the old channel go on."""
    pki = tmp_path / "pki"
    make_dev_pki(pki, ["tts"])
    new_ca = make_ca("talkmesh dev CA 2")
    (tmp_path / "new-ca.crt").write_bytes(new_ca.cert_pem)
    d = pki / "tts"
    both = tmp_path / "both.crt"
    both.write_bytes((pki / "ca.crt").read_bytes() + new_ca.cert_pem)
    strict = ServiceHost(
        Empty(Telemetry("tts")),
        ServerConfig(
            port=0,
            grace_seconds=0.5,
            tls=ServerTLS(str(d / "tls.crt"), str(d / "tls.key"), str(tmp_path / "new-ca.crt")),
        ),
    )
    lenient = ServiceHost(
        Empty(Telemetry("tts")),
        ServerConfig(port=0, grace_seconds=0.5, tls=ServerTLS(str(d / "tls.crt"), str(d / "tls.key"), str(both))),
    )
    await strict.start()
    await lenient.start()
    client_dir = pki / "client"
    tls = ClientTLS(
        ca_file=str(pki / "ca.crt"),
        cert_file=str(client_dir / "tls.crt"),
        key_file=str(client_dir / "tls.key"),
        server_name="tts",
    )
    to_strict = create_channel(strict.address, tls=tls)
    to_lenient = create_channel(lenient.address, tls=tls)
    try:
        stub = health_pb2_grpc.HealthStub(to_strict)
        assert await _liveness(stub) == grpc.StatusCode.UNAVAILABLE  # the old CA is not trusted
        watch = health_pb2_grpc.HealthStub(to_lenient).Watch(health_pb2.HealthCheckRequest(service="liveness"))
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING

        renewed = issue(new_ca, "client")
        (client_dir / "tls.key").write_bytes(renewed.key_pem)  # half a rotation: the new key only
        await asyncio.sleep(1.2)
        assert await _liveness(stub) == grpc.StatusCode.UNAVAILABLE
        assert await _liveness(health_pb2_grpc.HealthStub(to_lenient)) == grpc.StatusCode.OK  # old pair kept

        (client_dir / "tls.crt").write_bytes(renewed.cert_pem)
        loop = asyncio.get_running_loop()
        rotated = loop.time()
        seen = grpc.StatusCode.UNAVAILABLE
        while seen != grpc.StatusCode.OK and loop.time() - rotated < 10:
            await asyncio.sleep(0.2)
            seen = await _liveness(stub)
        assert seen == grpc.StatusCode.OK, "the renewed client certificate was not picked up"
        assert loop.time() - rotated < 3
        assert await _liveness(health_pb2_grpc.HealthStub(to_lenient)) == grpc.StatusCode.OK
        assert not watch.done()  # the stream opened on the replaced channel goes on
        watch.cancel()
    finally:
        await to_strict.close()
        await to_lenient.close()
        await strict.stop(grace=0.5)
        await lenient.stop(grace=0.5)


def test_server_certificates_reload_once_per_change_keep_a_half_rotation_and_name_the_key_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The fetcher gRPC calls from its handshake threads: None while the files are unchanged or half
    rotated, one new configuration per change however many handshakes ask at once."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from talkmesh.common.tls import ReloadingServerCertificates

    pki = tmp_path / "pki"
    ca = make_dev_pki(pki, ["tts"])
    d = pki / "tts"
    tls = ServerTLS(str(d / "tls.crt"), str(d / "tls.key"), client_ca_file=str(d / "ca.crt"))
    certs = ReloadingServerCertificates(tls)
    assert certs.loads == 1 and certs.initial is not None
    assert certs.fetch() is None and certs.fetch() is None, "unchanged: the current configuration stays"

    renewed = issue(ca, "tts", ["tts"])
    (d / "tls.key").write_bytes(renewed.key_pem)  # half a rotation: the new key only
    assert certs.fetch() is None and certs.loads == 1
    assert "not reloaded, keeping what was loaded" in caplog.text and "rotation in progress" in caplog.text
    (d / "tls.crt").write_bytes(renewed.cert_pem)
    started = threading.Barrier(8)

    def handshake(_: int) -> object:
        started.wait()
        return certs.fetch()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(handshake, range(8)))
    assert len([r for r in results if r is not None]) == 1 and certs.loads == 2
    assert certs.fetch() is None

    # at start: a key that is not the certificate's, a file that cannot be read
    with pytest.raises(ConfigError, match=r"^tls\.key_file: .* is not the key of the certificate"):
        ReloadingServerCertificates(dataclasses.replace(tls, key_file=str(pki / "client" / "tls.key")))
    with pytest.raises(ConfigError, match=r"^tls\.cert_file: cannot read"):
        ReloadingServerCertificates(dataclasses.replace(tls, cert_file=str(tmp_path / "missing.crt")))
    with pytest.raises(ConfigError, match=r"^tls\.client_ca_file: cannot read"):
        ReloadingServerCertificates(dataclasses.replace(tls, client_ca_file=str(tmp_path / "missing.crt")))


class _FakeChannel:
    def __init__(self, credentials: grpc.ChannelCredentials) -> None:
        self.credentials = credentials
        self.closed = False

    async def close(self, grace: float | None = None) -> None:
        self.closed = True


async def test_a_client_channel_is_made_again_once_per_change_and_the_old_one_closed(tmp_path: Path) -> None:
    """The pair is not checked at start (a mismatch fails at the handshake, as before); a reload
    takes it only once the key matches the certificate; the replaced channel is closed."""
    from talkmesh.common.client_tls import ReloadingChannel

    pki = tmp_path / "pki"
    ca = make_dev_pki(pki, ["tts"])
    c = pki / "client"
    (c / "tls.key").write_bytes(issue(ca, "client").key_pem)  # a mismatched pair at start: taken
    made: list[_FakeChannel] = []

    def make(credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
        made.append(_FakeChannel(credentials))
        return made[-1]  # type: ignore[return-value]

    tls = ClientTLS(ca_file=str(pki / "ca.crt"), cert_file=str(c / "tls.crt"), key_file=str(c / "tls.key"))
    channel = ReloadingChannel(tls, make, check_seconds=0)
    assert channel.generation == 0 and channel.current() is made[0] and len(made) == 1
    renewed = issue(ca, "client")
    (c / "tls.crt").write_bytes(renewed.cert_pem)  # half a rotation: the old pair stays
    assert channel.current() is made[0] and channel.generation == 0 and len(made) == 1
    (c / "tls.key").write_bytes(renewed.key_pem)
    assert channel.current() is made[1] and channel.generation == 1
    assert channel.current() is made[1] and len(made) == 2, "unchanged: not made again"
    await asyncio.sleep(0)  # the retired channel is closed once its calls are done (none here)
    assert made[0].closed and not made[1].closed
    await channel.close()
    assert made[1].closed
