"""TLS, mutual TLS and API keys through the five real services (in this process, port 0).

The mesh runs as the Kubernetes mtls component sets it up: every internal hop over mutual TLS
(each service presents its own certificate and accepts only the mesh CA's), TLS without client
certificates on the gateway's port, and API keys at the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import cv2
import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.gateway.auth import hash_key
from services.renderer.avatars import default_avatar_bytes
from talkmesh.client import TalkmeshClient
from talkmesh.common.channel import ClientTLS, create_channel
from talkmesh.common.errors import ErrorDetails
from talkmesh.common.principal import Principal
from talkmesh.devcerts import make_dev_pki, principal_required_env
from talkmesh.v1 import audio_features_pb2_grpc as fpb_grpc
from talkmesh.v1 import encoder_pb2_grpc as epb_grpc
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import renderer_pb2_grpc, tts_pb2_grpc
from talkmesh.v1 import tts_pb2 as tpb
from talkmesh.v1 import types_pb2 as api
from tests.live_helpers import Recorder
from tests.media import portrait
from tests.mesh import InProcessMesh, inprocess_mesh

PORTRAIT = default_avatar_bytes()
KEYS = {
    "alice": ("user", {}),
    "bob": ("user", {}),
    "root": ("admin", {}),
    "tight": ("user", {"requests_per_minute": 3, "concurrent_streams": 1}),
    "uploader": ("user", {"uploads_per_hour": 1, "avatar_disk_bytes": 1000}),
}


def key_of(name: str) -> str:
    return f"tm_test-key-of-{name}"


def write_keys(path: Path, keys: dict[str, tuple[str, dict[str, int]]]) -> None:
    entries = [
        {"name": name, "role": role, "sha256": hash_key(key_of(name)), "limits": limits}
        for name, (role, limits) in keys.items()
    ]
    path.write_text(yaml.safe_dump({"defaults": {"requests_per_minute": 1000}, "keys": entries}))


@contextlib.asynccontextmanager
async def secure_mesh(tmp_path: Path) -> AsyncIterator[tuple[InProcessMesh, Path]]:
    pki = tmp_path / "pki"
    make_dev_pki(pki, ["gateway", "tts", "audio_features", "renderer", "encoder"])
    keys = tmp_path / "api-keys.yaml"
    write_keys(keys, KEYS)
    env = {"TALKMESH_GATEWAY__AUTH__API_KEYS_FILE": str(keys), "TALKMESH_GATEWAY__AUTH__RELOAD_CHECK_SECONDS": "0"}
    env.update(principal_required_env())  # as `talkmesh up --api-keys` and the mtls component run the stages
    async with inprocess_mesh(tmp_path, env=env, pki=pki) as mesh:
        yield mesh, pki


def client(mesh: InProcessMesh, pki: Path, name: str | None) -> TalkmeshClient:
    return TalkmeshClient(
        mesh.gateway, tls=ClientTLS(ca_file=str(pki / "ca.crt")), api_key=key_of(name) if name else ""
    )


async def status_of(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value


def face(path: Path, variant: int = 0) -> Path:
    """Another picture of the default face (a new avatar each ``variant``)."""
    img = portrait()
    img = cv2.flip(img, 1) if variant % 2 == 0 else img
    if variant >= 1:
        img = cv2.resize(img, (img.shape[1] - 8 * variant, img.shape[0] - 8 * variant))
    cv2.imwrite(str(path), img)
    return path


async def test_speak_over_tls_and_mutual_tls_with_an_api_key(tmp_path):
    async with secure_mesh(tmp_path) as (mesh, pki):
        for name in ("tts", "audio_features", "renderer", "encoder"):
            assert mesh.hosts[name].certificates is not None and mesh.hosts[name].config.tls.client_ca_file
        async with client(mesh, pki, "alice") as c:
            result = await c.speak_to_file("Hello over TLS. Keys checked.", tmp_path / "out.mp4")
        assert result.summary.frames > 25 and result.bytes_written > 10_000
        assert (tmp_path / "out.mp4").stat().st_size == result.bytes_written

        # Plaintext to the TLS port: the handshake fails, nothing is served.
        async with TalkmeshClient(mesh.gateway, api_key=key_of("alice")) as plain:
            err = await status_of(plain.list_voices())
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        # An internal stage without a client certificate (TLS, right CA): refused.
        tts = mesh.hosts["tts"].address
        no_cert = ClientTLS(ca_file=str(pki / "ca.crt"), server_name="tts")
        async with create_channel(tts, tls=no_cert) as ch:
            err = await status_of(tts_pb2_grpc.TTSStub(ch).ListVoices(tpb.ListVoicesRequest(), timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        # A certificate of another CA: refused too; the mesh's own client certificate: served.
        other = tmp_path / "other-pki"
        make_dev_pki(other, ["tts"])
        foreign = ClientTLS(ca_file=str(pki / "ca.crt"), cert_file=str(other / "client" / "tls.crt"),
                            key_file=str(other / "client" / "tls.key"), server_name="tts")  # fmt: skip
        async with create_channel(tts, tls=foreign) as ch:
            err = await status_of(tts_pb2_grpc.TTSStub(ch).ListVoices(tpb.ListVoicesRequest(), timeout=5))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        own = ClientTLS(ca_file=str(pki / "ca.crt"), cert_file=str(pki / "client" / "tls.crt"),
                        key_file=str(pki / "client" / "tls.key"), server_name="tts")  # fmt: skip
        async with create_channel(tts, tls=own) as ch:
            voices = await tts_pb2_grpc.TTSStub(ch).ListVoices(
                tpb.ListVoicesRequest(), timeout=5, metadata=Principal("alice").metadata()
            )
        assert voices.voices

        # Without a key, or with a wrong one: UNAUTHENTICATED. Health needs no key (probes).
        for name, key in ((None, ""), ("mallory", "tm_not-a-key")):
            async with TalkmeshClient(mesh.gateway, tls=ClientTLS(ca_file=str(pki / "ca.crt")), api_key=key) as c:
                err = await status_of(c.list_voices())
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED, name
                assert "authorization" in (err.details() or "")
                with pytest.raises(grpc.aio.AioRpcError) as speak:
                    async for _ in c.speak("Hello."):
                        pass
                assert speak.value.code() == grpc.StatusCode.UNAUTHENTICATED
                health = await health_pb2_grpc.HealthStub(c.channel).Check(health_pb2.HealthCheckRequest())
                assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_with_api_keys_the_stages_refuse_calls_without_a_principal(tmp_path):
    """The review's case: alice's avatar deleted by a DeleteAvatar straight to the renderer's port
    without metadata (read as "keys are off": unrestricted). With API keys every stage refuses a
    call that names no key (UNAUTHENTICATED naming the metadata), health aside; the mesh's own calls
    (Speak, live sessions: gateway -> tts, audio_features, encoder -> renderer) carry one."""
    async with secure_mesh(tmp_path) as (mesh, pki):
        async with client(mesh, pki, "alice") as alice:
            mine = await alice.register_avatar(face(tmp_path / "alice.png"), name="alice-face")
            result = await alice.speak_to_file("Still served.", tmp_path / "ok.mp4", avatar=mine.id)
            assert result.summary.frames > 0
            async with alice.live(avatar=mine.id) as live:
                rec = Recorder(live).start()
                tid = await live.say("A turn through every stage.")
                stopped = await rec.wait_event("speaking_stopped", tid, timeout=40)
                assert stopped.msg.event.speaking_stopped.reason == lpb.STOP_REASON_COMPLETED
                await live.close()
                await rec.finish()
        stubs = {
            "renderer": lambda ch: renderer_pb2_grpc.RendererStub(ch).DeleteAvatar(
                api.DeleteAvatarRequest(avatar_id=mine.id), timeout=5
            ),
            "tts": lambda ch: tts_pb2_grpc.TTSStub(ch).ListVoices(tpb.ListVoicesRequest(), timeout=5),
            "audio_features": lambda ch: _read_all(fpb_grpc.AudioFeaturesStub(ch).Extract(iter(()), timeout=5)),
            "encoder": lambda ch: _read_all(epb_grpc.EncoderStub(ch).Encode(iter(()), timeout=5)),
        }
        for name, call in stubs.items():
            mesh_cert = ClientTLS(
                ca_file=str(pki / "ca.crt"),
                cert_file=str(pki / "client" / "tls.crt"),
                key_file=str(pki / "client" / "tls.key"),
                server_name=name.replace("_", "-"),
            )
            async with create_channel(mesh.hosts[name].address, tls=mesh_cert) as ch:
                err = await status_of(call(ch))
                assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (name, err)
                assert "x-talkmesh-principal" in (err.details() or ""), name
                health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert health.status == health_pb2.HealthCheckResponse.SERVING, name
        async with client(mesh, pki, "alice") as alice:
            assert mine.id in {a.id for a in await alice.list_avatars()}, "alice's avatar is still there"


async def _read_all(call) -> list:
    return [m async for m in call]


async def test_avatars_belong_to_the_key_that_registered_them(tmp_path):
    async with secure_mesh(tmp_path) as (mesh, pki):
        async with client(mesh, pki, "alice") as alice, client(mesh, pki, "bob") as bob:
            async with client(mesh, pki, "root") as root:
                mine = await alice.register_avatar(face(tmp_path / "alice.png"), name="alice-face")
                theirs = await bob.register_avatar(face(tmp_path / "bob.png", 1), name="bob-face")
                ids = {a.id for a in await alice.list_avatars()}
                default = {a.id for a in await bob.list_avatars()} - {theirs.id}
                assert mine.id in ids and theirs.id not in ids and len(default) == 1  # own + the default
                assert {mine.id, theirs.id} | default <= {a.id for a in await root.list_avatars()}

                # Speaking with an avatar: the key's own (or the default), by id or by its name in
                # any case; another key's avatar, by id or by that key's name, is answered as an
                # unknown one (NOT_FOUND: nothing tells bob it exists), on Speak, Live, Get, Delete.
                result = await alice.speak_to_file("Mine.", tmp_path / "mine.mp4", avatar=mine.id)
                assert result.summary.frames > 0
                # (alice's live session leaves her avatar's idle loop in the encoder's cache: bob's
                # session must not start on it, which the renderer alone would only refuse at a turn)
                async with alice.live(avatar=mine.id) as live:
                    assert live.started is not None and live.started.avatar_id == mine.id
                for value in (mine.id, "alice-face", "nobody"):
                    with pytest.raises(grpc.aio.AioRpcError) as speak:
                        async for _ in bob.speak("Not mine.", avatar=value):
                            pass
                    assert speak.value.code() == grpc.StatusCode.NOT_FOUND, value
                    assert speak.value.details() == f"avatar_id: avatar {value!r} not found"
                    with pytest.raises(grpc.aio.AioRpcError) as live:
                        async with bob.live(avatar=value):
                            pass
                    assert live.value.code() == grpc.StatusCode.NOT_FOUND, value
                    assert live.value.details() == f"config.avatar_id: avatar {value!r} not found"
                    err = await status_of(bob.get_avatar(value))
                    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, speak.value.details())
                    assert await bob.delete_avatar(value) is False
                result = await alice.speak_to_file("Mine.", tmp_path / "named.mp4", avatar="ALICE-face")
                assert result.summary.frames > 0
                assert (await bob.get_avatar("bob-face")).id == theirs.id
                # A client cannot claim another name or a role in metadata: the gateway never forwards it.
                forged = [("authorization", f"Bearer {key_of('bob')}"), *Principal("alice", role="admin").metadata()]
                gone = await bob.stub.DeleteAvatar(api.DeleteAvatarRequest(avatar_id=mine.id), metadata=forged)
                assert not gone.deleted
                assert mine.id in {a.id for a in await alice.list_avatars()}
                # The default avatar is read-only for everyone, admins included.
                for c in (alice, root):
                    err = await status_of(c.delete_avatar(next(iter(default))))
                    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
                # The same file registered by a second key: shared (but not `cached` for bob: that
                # would tell him another key holds it); one owner deleting keeps it for the other.
                again = await bob.register_avatar(tmp_path / "alice.png", name="alice-face")
                assert again.id == mine.id and not again.cached
                assert await bob.delete_avatar(mine.id)
                assert mine.id in {a.id for a in await alice.list_avatars()}
                assert mine.id not in {a.id for a in await bob.list_avatars()}
                assert await alice.delete_avatar(mine.id)
                assert mine.id not in {a.id for a in await root.list_avatars()}
                # An admin deletes anyone's.
                assert await root.delete_avatar(theirs.id)
                assert theirs.id not in {a.id for a in await bob.list_avatars()}

        # Quotas: 1000 bytes of avatars on disk (less than any avatar), 1 upload per hour.
        async with client(mesh, pki, "uploader") as up:
            err = await status_of(up.register_avatar(face(tmp_path / "u.png", 2), name="u"))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = ErrorDetails.of(err)
            assert info.quota_violations and info.quota_violations[0].description == "avatar_disk_bytes"
            assert "u" not in {a.name for a in await up.list_avatars()}
            err = await status_of(up.register_avatar(tmp_path / "u.png", name="u"))
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = ErrorDetails.of(err)
            assert info.quota_violations[0].description == "uploads_per_hour"
            assert info.retry_delay is not None and 60 < info.retry_delay <= 3600


async def test_limits_answer_resource_exhausted_with_retry_info(tmp_path):
    async with secure_mesh(tmp_path) as (mesh, pki):
        # concurrent_streams 1: a second call while a Speak is streaming is refused at once.
        async with client(mesh, pki, "tight") as tight:
            stream = tight.speak("This sentence keeps the stream open for a little while. " * 4)
            first = await anext(aiter(stream))
            assert first.WhichOneof("kind")
            loop = asyncio.get_running_loop()
            start = loop.time()
            err = await status_of(tight.list_voices())
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert loop.time() - start < 2.0
            info = ErrorDetails.of(err)
            assert info.retry_delay and info.retry_delay > 0
            assert info.quota_violations[0].field == "api_key:tight"
            assert info.quota_violations[0].description == "concurrent_streams"
            stream.cancel()  # type: ignore[attr-defined]
            # Another key is not affected.
            async with client(mesh, pki, "alice") as alice:
                assert await alice.list_voices()
            # requests_per_minute 3: the Speak took one (a call refused for concurrency takes none),
            # two more, then RESOURCE_EXHAUSTED until the bucket refills (one call per 20 s).
            await asyncio.sleep(0.2)  # the cancelled stream's slot is given back
            await tight.list_voices()
            await tight.list_voices()
            err = await status_of(tight.list_voices())
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            info = ErrorDetails.of(err)
            assert info.quota_violations[0].description == "requests_per_minute"
            assert info.retry_delay is not None and 5 < info.retry_delay <= 20.5


async def test_keys_file_is_reloaded_without_restart(tmp_path):
    async with secure_mesh(tmp_path) as (mesh, pki):
        async with client(mesh, pki, "carol") as carol:
            err = await status_of(carol.list_voices())
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED
            write_keys(tmp_path / "api-keys.yaml", {**KEYS, "carol": ("user", {})})
            assert await carol.list_voices()
            # A broken file keeps the keys loaded before.
            (tmp_path / "api-keys.yaml").write_text("keys: [{name: x, sha256: nope}]")
            assert await carol.list_voices()

        # The CLI: --tls-ca and --api-key (or their environment variables).
        gw = ["--target", mesh.gateway, "--tls-ca", str(pki / "ca.crt")]
        code, out, err = await cli("voices", *gw, "--api-key", key_of("carol"))
        assert code == 0 and "espeak" in out, err
        code, out, err = await cli("voices", *gw, env={"TALKMESH_API_KEY": key_of("carol")})
        assert code == 0, err
        code, out, err = await cli("voices", *gw, env={"TALKMESH_API_KEY": "tm_wrong"})
        assert code == 1 and err.startswith("error: UNAUTHENTICATED: authorization"), err
        # TLS against the wrong CA (the system's), and plaintext to a TLS port: one line that says so.
        code, out, err = await cli("voices", "--target", mesh.gateway, "--tls", "--api-key", key_of("carol"))
        assert code == 1 and "error: TLS handshake with the gateway" in err and "--tls-ca" in err, err
        code, out, err = await cli("voices", "--target", mesh.gateway, "--api-key", key_of("carol"))
        assert code == 1 and "add --tls or --tls-ca" in err, err


async def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "talkmesh.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, **(env or {})},
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_live_sessions_need_a_key_and_only_their_key_watches(tmp_path):
    async with secure_mesh(tmp_path) as (mesh, pki):
        async with client(mesh, pki, None) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async with anonymous.live():
                    pass
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with client(mesh, pki, "alice") as alice, client(mesh, pki, "bob") as bob:
            async with client(mesh, pki, "root") as root, alice.live() as live:
                rec = Recorder(live).start()
                assert live.started is not None
                session_id = live.started.session_id
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    async for _ in bob.watch(session_id):
                        pass
                assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
                for viewer in (alice, root):
                    async for msg in viewer.watch(session_id):
                        assert msg.WhichOneof("kind") == "started"
                        break
                await live.close()
                await rec.finish()


async def test_the_web_edge_behind_up_pki_and_api_keys(tmp_path, caplog, monkeypatch):
    """`talkmesh up --pki DIR --api-keys FILE`: the web edge reaches the TLS gateway with a key of its
    own (ready, lists voices, runs a live session); an edge that talks plaintext to that gateway
    answers 503 without the gateway's address; an edge whose key the gateway refuses is not ready
    (health checks need no key, every browser action would fail with 401) and says why in its log."""
    import json

    import aiohttp

    from services.web import server as web_server
    from services.web.main import create_service as create_web
    from services.web.main import load_config as load_web_config
    from talkmesh.common.config import ServerConfig
    from talkmesh.common.registry import NAMES
    from talkmesh.common.telemetry import Telemetry
    from talkmesh.devcerts import edge_key_env, mesh_tls_env

    pki = tmp_path / "pki"
    make_dev_pki(pki, NAMES)
    tls_env = mesh_tls_env(pki)
    assert tls_env["TALKMESH_WEB__GATEWAY__TLS__CA_FILE"] == str(pki / "web" / "ca.crt")
    keys = tmp_path / "api-keys.yaml"
    write_keys(keys, KEYS)
    edge = edge_key_env(tmp_path / "edge")
    assert oct((tmp_path / "edge" / "web-edge.key").stat().st_mode & 0o777) == "0o600"
    env = {"TALKMESH_GATEWAY__AUTH__API_KEYS_FILE": str(keys), **edge, **principal_required_env()}
    async with inprocess_mesh(tmp_path, env=env, pki=pki, web=True) as mesh:
        async with aiohttp.ClientSession(mesh.web_url) as http:
            async with http.get("/readyz") as r:
                assert r.status == 200, await r.text()
            async with http.get("/v1/voices") as r:
                body = await r.json()
                assert r.status == 200 and any(v["id"].startswith("espeak:") for v in body["voices"]), body
            async with http.ws_connect("/v1/live") as ws:
                await ws.send_str(json.dumps({"config": {"request_id": "edge-key"}}))
                first = json.loads((await ws.receive()).data)
                assert "started" in first, first

            # the edge's key revoked from the gateway's (reloaded) file: unready at a later probe
            # (web.server asks again when its last answer is older than KEY_RECHECK_SECONDS)
            monkeypatch.setattr(web_server, "KEY_RECHECK_SECONDS", 0.0)
            service_keys = tmp_path / "edge" / "service-keys.yaml"
            granted = service_keys.read_text()
            service_keys.write_text("keys: []\n")

            async def readyz_until(status: int) -> dict:
                for _ in range(100):  # the gateway reads its keys file again within 2 s
                    async with http.get("/readyz") as r:
                        body = await r.json()
                        if r.status == status:
                            return body
                    await asyncio.sleep(0.1)
                raise AssertionError(f"/readyz never answered {status}: {body}")

            assert "API key" in (await readyz_until(503))["status"]
            service_keys.write_text(granted)  # put back: ready again, no restart
            await readyz_until(200)

        # the same edge without its TLS settings: the TLS gateway closes its plaintext connection
        plain = load_web_config(None, env={"TALKMESH_WEB__GATEWAY__TARGET": mesh.gateway})
        plain = dataclasses.replace(plain, server=ServerConfig(port=0, metrics_port=-1, dependency_check_seconds=0))
        host = create_web(plain, Telemetry("web"))
        await host.start()
        try:
            async with aiohttp.ClientSession(host.url) as http:
                async with http.get("/readyz") as r:
                    assert r.status == 503
                async with http.get("/v1/voices") as r:
                    text = await r.text()
                    assert r.status == 503 and "UNAVAILABLE" in text, text
                    assert "127.0.0.1" not in text and mesh.gateway not in text and "ipv4" not in text, text
        finally:
            await host.stop(0.5)

        # the edge's TLS settings, a key the gateway does not know
        wrong_key = tmp_path / "wrong.key"
        wrong_key.write_text("tm_not-a-key-the-gateway-knows\n")
        edge_tls = {k: v for k, v in tls_env.items() if k.startswith("TALKMESH_WEB__GATEWAY__TLS__")}
        wrong_env = {**edge_tls, "TALKMESH_WEB__WEB__GATEWAY_API_KEY_FILE": str(wrong_key)}
        wrong = load_web_config(None, env={"TALKMESH_WEB__GATEWAY__TARGET": mesh.gateway, **wrong_env})
        wrong = dataclasses.replace(wrong, server=ServerConfig(port=0, metrics_port=-1, dependency_check_seconds=0))
        host = create_web(wrong, Telemetry("web"))
        caplog.clear()  # (the revoked key above was logged too)
        with caplog.at_level(logging.ERROR, logger="talkmesh"):
            await host.start()
        try:
            async with aiohttp.ClientSession(host.url) as http:
                async with http.get("/readyz") as r:
                    body = await r.json()
                    assert r.status == 503 and "API key" in body["status"], body
                async with http.get("/v1/voices") as r:
                    assert r.status == 401, await r.text()
        finally:
            await host.stop(0.5)
        (line,) = [r.getMessage() for r in caplog.records if "refuses the web edge's API key" in r.getMessage()]
        assert "web.gateway_api_key_file" in line and "UNAUTHENTICATED" in line, line
