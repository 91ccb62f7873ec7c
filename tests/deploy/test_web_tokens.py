"""components/web-tokens: the web edge reads its access-token secrets (web.token_secret_file) from a
Secret you create, mounted read-only where the env var points; alone and with mtls (both patch the
web Deployment's env and volumes)."""

from __future__ import annotations

import posixpath

import pytest

from services.web.config import WebSettings
from tests.deploy.manifests import OVERLAYS, env_of, mounts_of, render, runs, volume

ENV = "TALKMESH_WEB__WEB__TOKEN_SECRET_FILE"


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("components", [("web-tokens",), ("mtls", "web-tokens")])
def test_the_secret_is_mounted_where_the_edge_reads_it(overlay: str, components: tuple[str, ...]) -> None:
    docs = render(overlay, *components)
    dep, web = runs(docs, "web")
    env = env_of(web)
    path = env[ENV]
    mount = mounts_of(web)[posixpath.dirname(path)]
    assert mount["readOnly"] is True
    assert volume(dep, mount["name"])["secret"]["secretName"] == "talkmesh-web-token-secrets"
    assert volume(dep, mount["name"])["secret"]["defaultMode"] == 0o440
    if "mtls" in components:  # the other patch's key file is still there
        assert env["TALKMESH_WEB__WEB__GATEWAY_API_KEY_FILE"].startswith("/etc/talkmesh/gateway-key/")
    # the env var names the setting it is meant to set
    assert "token_secret_file" in WebSettings.__dataclass_fields__


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_without_the_component_no_tokens_are_asked_for(overlay: str) -> None:
    _, web = runs(render(overlay), "web")
    assert ENV not in env_of(web)
