"""API keys: the keys file, its checks and reloads, token buckets, the CLI that makes keys."""

from __future__ import annotations

import contextvars
import dataclasses
import io
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from services.gateway.auth import AuthConfig, KeyLimits, KeyStore, TokenBucket, bearer, hash_key, parse_keys
from services.gateway.main import load_config
from talkmesh.cli import main as cli
from talkmesh.common.config import ConfigError

DIGEST = hash_key("tm_x")


def test_keys_file_entries_and_defaults():
    keys = parse_keys(
        {
            "defaults": {"requests_per_minute": 10},
            "keys": [
                {"name": "a", "sha256": DIGEST.upper(), "limits": {"concurrent_streams": 2}},
                {"name": "root", "role": "admin", "sha256": hash_key("tm_y")},
            ],
        }
    )
    a = keys[DIGEST]
    assert a.name == "a" and a.role == "user"
    assert a.limits == KeyLimits(concurrent_streams=2, requests_per_minute=10)
    assert keys[hash_key("tm_y")].role == "admin" and keys[hash_key("tm_y")].limits.requests_per_minute == 10


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"keys": [{"name": "a", "sha256": "abc"}]}, r"keys\[0\].sha256"),
        ({"keys": [{"name": "a", "sha256": DIGEST, "role": "root"}]}, r"keys\[0\].role"),
        ({"keys": [{"name": "a b", "sha256": DIGEST}]}, r"keys\[0\].name"),
        ({"keys": [{"name": "a", "sha256": DIGEST}, {"name": "a", "sha256": DIGEST}]}, "used twice"),
        ({"keys": [{"name": "a", "sha256": DIGEST, "key": "tm_x"}]}, "unknown key"),
        ({"keys": [{"name": "a", "sha256": DIGEST, "limits": {"uploads_per_hour": -1}}]}, "uploads_per_hour"),
        ({"defaults": {"streams": 1}}, "defaults.*streams"),
        ({"users": []}, "unknown key"),
    ],
)
def test_keys_file_errors_name_the_entry(data, error):
    with pytest.raises(ConfigError, match=error):
        parse_keys(data, "keys.yaml")


def test_store_reloads_on_change_and_keeps_keys_on_a_broken_file(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"name": "a", "sha256": DIGEST}]}))
    now = [0.0]
    store = KeyStore(AuthConfig(api_keys_file=str(path), reload_check_seconds=5), clock=lambda: now[0])
    assert store.lookup("tm_x").name == "a" and store.lookup("tm_y") is None
    path.write_text(yaml.safe_dump({"keys": [{"name": "b", "sha256": hash_key("tm_y")}]}))
    os.utime(path, ns=(1, 1))  # a different modification time whatever the clock's resolution
    now[0] = 1.0
    assert store.lookup("tm_x") is not None, "not checked again before reload_check_seconds"
    now[0] = 6.0
    assert store.lookup("tm_x") is None and store.lookup("tm_y").name == "b"
    path.write_text("keys: {")
    now[0] = 12.0
    assert store.lookup("tm_y").name == "b" and store.reloads == 2


def test_missing_keys_file_fails_at_start(tmp_path):
    with pytest.raises(ConfigError, match=r"auth\.api_keys_file"):
        KeyStore(AuthConfig(api_keys_file=str(tmp_path / "nope.yaml")))


def test_service_keys_file_adds_keys_and_leaves_the_users_file_alone(tmp_path):
    from talkmesh.devcerts import EDGE_KEY_NAME, edge_key_env

    users = tmp_path / "keys.yaml"
    users.write_text(yaml.safe_dump({"keys": [{"name": "a", "sha256": DIGEST}]}))
    before = users.read_text()
    env = edge_key_env(tmp_path / "edge")
    edge_key = (tmp_path / "edge" / "web-edge.key").read_text().strip()
    config = load_config(None, env={**env, "TALKMESH_GATEWAY__AUTH__API_KEYS_FILE": str(users)})
    store = KeyStore(config.auth)
    found = store.lookup(edge_key)
    assert found is not None and found.name == EDGE_KEY_NAME
    # finite limits: every call a default web edge makes, no more (an unlimited edge key let one
    # visitor's sessions through the edge fill the gateway for everyone)
    from talkmesh.common.registry import WEB_KEY_CONCURRENT_STREAMS, spec

    assert found.limits.concurrent_streams == WEB_KEY_CONCURRENT_STREAMS < spec("gateway").max_streams
    # and no rates (0: not the keys file's defaults): they would count the whole site's visitors together
    assert found.limits.requests_per_minute == 0 and found.limits.uploads_per_hour == 0
    assert store.lookup("tm_x").name == "a" and store.lookup("tm_nobody") is None
    assert users.read_text() == before
    with pytest.raises(ConfigError, match=r"auth\.service_keys_file"):
        KeyStore(AuthConfig(api_keys_file=str(users), service_keys_file=str(tmp_path / "nope.yaml")))
    # a user key may not take the edge's name (it would own what browsers upload)
    clash = tmp_path / "clash.yaml"
    clash.write_text(yaml.safe_dump({"keys": [{"name": EDGE_KEY_NAME, "sha256": DIGEST}]}))
    with pytest.raises(ConfigError, match=r"taken by auth\.service_keys_file"):
        KeyStore(dataclasses.replace(config.auth, api_keys_file=str(clash)))


def test_token_bucket():
    now = [0.0]
    bucket = TokenBucket(3, 60.0, lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take() == pytest.approx(20.0)
    now[0] = 15.0
    assert bucket.take() == pytest.approx(5.0)
    now[0] = 20.0
    assert bucket.take() == 0.0
    now[0] = 1000.0
    assert [bucket.take() for _ in range(4)][-1] > 0  # refills to capacity, no more


def test_bearer():
    assert bearer([("authorization", "Bearer tm_x")]) == "tm_x"
    assert bearer([("authorization", "bearer  tm_x ")]) == "tm_x"
    assert bearer([("authorization", "Basic dXNlcg==")]) == ""
    assert bearer([("x-api-key", "tm_x")]) == ""


def test_auth_config_from_env():
    cfg = load_config(env={"TALKMESH_GATEWAY__AUTH__API_KEYS_FILE": "/etc/talkmesh/keys/api-keys"})
    assert cfg.auth.enabled and cfg.auth.api_keys_file == "/etc/talkmesh/keys/api-keys"
    assert not load_config(env={}).auth.enabled


def test_cli_makes_a_key_and_stores_only_its_hash(tmp_path: Path):
    path = tmp_path / "api-keys.yaml"
    keys = []
    for name, role in (("alice", "user"), ("ops", "admin")):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            assert cli(["keys", "new", name, "--role", role, "--file", str(path)]) == 0
        keys.append(out.getvalue().strip())
    text = path.read_text()
    assert all(k.startswith("tm_") and len(k) > 40 and k not in text for k in keys)
    loaded = parse_keys(yaml.safe_load(text))
    assert loaded[hash_key(keys[0])].name == "alice" and loaded[hash_key(keys[1])].role == "admin"
    with redirect_stderr(io.StringIO()) as err:
        assert cli(["keys", "new", "x", "--role", "owner"]) == 1
    assert "--role" in err.getvalue()


def test_cli_makes_a_dev_pki(tmp_path: Path):
    with redirect_stdout(io.StringIO()):
        assert cli(["certs", str(tmp_path / "pki")]) == 0
    for name in ("gateway", "tts", "audio_features", "renderer", "encoder", "client"):
        d = tmp_path / "pki" / name
        assert {p.name for p in d.iterdir()} == {"tls.crt", "tls.key", "ca.crt"}
        assert (d / "tls.key").stat().st_mode & 0o077 == 0
    assert (tmp_path / "pki" / "ca.key").stat().st_mode & 0o077 == 0


def test_up_refuses_a_missing_pki_or_keys_file(tmp_path: Path):
    for argv, expected in (
        (["up", "--pki", str(tmp_path)], "talkmesh certs"),
        (["up", "--api-keys", str(tmp_path / "keys.yaml")], "talkmesh keys new"),
    ):
        with redirect_stderr(io.StringIO()) as err:
            assert cli([*argv, "--port-base", "40000"]) == 1
        assert expected in err.getvalue()


def test_a_key_without_its_scheme_is_told_what_is_expected(tmp_path):
    """`authorization: tm_...` (the key without `Bearer `) is not a missing key: the message says
    what the header should look like; no header at all is a missing key."""
    from services.gateway.auth import AuthInterceptor
    from talkmesh.common.errors import Unauthenticated

    users = tmp_path / "keys.yaml"
    users.write_text(yaml.safe_dump({"keys": [{"name": "a", "sha256": DIGEST}]}))
    auth = AuthInterceptor(KeyStore(AuthConfig(api_keys_file=str(users))))

    class Context:
        def __init__(self, md: tuple[tuple[str, str], ...]) -> None:
            self.md = md

        def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
            return self.md

    def admit(md: tuple[tuple[str, str], ...]) -> object:
        # in a context of its own, as a call's handler is: the principal it sets must not outlive
        # this test (a later test's tasks would start with it)
        return contextvars.copy_context().run(auth._admit, Context(md), upload=False)  # type: ignore[arg-type]

    with pytest.raises(Unauthenticated, match=r"^authorization: expected 'Bearer <key>'"):
        admit((("authorization", "tm_x"),))
    with pytest.raises(Unauthenticated, match=r"^authorization: missing API key"):
        admit(())
    assert admit((("authorization", "Bearer tm_x"),)) is not None


def test_service_keys_file_is_read_again_when_it_changes(tmp_path):
    users = tmp_path / "keys.yaml"
    users.write_text(yaml.safe_dump({"keys": [{"name": "a", "sha256": DIGEST}]}))
    service = tmp_path / "service.yaml"
    service.write_text(yaml.safe_dump({"keys": [{"name": "edge", "sha256": hash_key("tm_old")}]}))
    now = [0.0]
    config = AuthConfig(api_keys_file=str(users), service_keys_file=str(service), reload_check_seconds=2)
    store = KeyStore(config, clock=lambda: now[0])
    assert store.lookup("tm_old").name == "edge"
    service.write_text(yaml.safe_dump({"keys": [{"name": "edge", "sha256": hash_key("tm_new")}]}))
    os.utime(service, ns=(1, 1))
    now[0] = 3.0
    assert store.lookup("tm_new").name == "edge" and store.lookup("tm_old") is None
    service.write_text("keys: [")  # a bad edit keeps the loaded keys
    now[0] = 6.0
    assert store.lookup("tm_new").name == "edge" and store.lookup("tm_x").name == "a"
