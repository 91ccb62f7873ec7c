"""What `talkmesh up` passes from one service's config to another's (no processes started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from talkmesh.common.registry import SERVICES, spec
from talkmesh.launcher import Mesh

KEY = "TALKMESH_GATEWAY__DEFAULT_RENDERER_BACKEND"
WAV2LIP = {"TALKMESH_RENDERER__BACKENDS": "viseme,wav2lip", "TALKMESH_RENDERER__DEFAULT_BACKEND": "wav2lip"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TALKMESH_RENDERER__DEFAULT_BACKEND", "TALKMESH_RENDERER__BACKENDS", KEY):
        monkeypatch.delenv(name, raising=False)


def test_the_gateway_asks_for_the_renderers_default_backend() -> None:
    """A researcher set the renderer's default to their model and still got the mesh-warp renderer:
    the gateway names a backend in every request, its own default (viseme)."""
    assert Mesh(env=WAV2LIP)._derived(spec("gateway")) == {KEY: "wav2lip"}
    assert Mesh()._derived(spec("gateway")) == {KEY: "viseme"}
    assert all(not Mesh(env=WAV2LIP)._derived(s) for s in SERVICES if s.name != "gateway")


def test_the_renderers_config_file_counts_too(tmp_path: Path) -> None:
    cfg = tmp_path / "renderer.yaml"
    cfg.write_text("backends: [viseme, musetalk]\ndefault_backend: musetalk\n")
    assert Mesh(configs={"renderer": str(cfg)})._derived(spec("gateway")) == {KEY: "musetalk"}


def test_the_gateways_own_choice_wins(tmp_path: Path) -> None:
    assert Mesh(env={**WAV2LIP, KEY: "viseme"})._derived(spec("gateway")) == {}
    gateway = tmp_path / "gateway.yaml"
    gateway.write_text("default_renderer_backend: viseme\n")
    assert Mesh(env=WAV2LIP, configs={"gateway": str(gateway)})._derived(spec("gateway")) == {}


def test_a_broken_renderer_config_is_left_for_the_renderer_to_report(tmp_path: Path) -> None:
    cfg = tmp_path / "renderer.yaml"
    cfg.write_text("default_backend: nope\n")
    assert Mesh(configs={"renderer": str(cfg)})._derived(spec("gateway")) == {}


async def test_a_restarted_gateway_keeps_the_renderers_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """restart() passed only the stages' addresses: the gateway came back asking for viseme."""
    import asyncio
    from unittest import mock

    mesh = Mesh(env=WAV2LIP)
    spawned: list[dict[str, str]] = []

    async def spawn(s, extra_env, ports=None):  # type: ignore[no-untyped-def]
        spawned.append(dict(extra_env))

    monkeypatch.setattr(mesh, "_spawn", spawn)
    proc = mock.Mock(returncode=0)
    proc.wait = mock.AsyncMock(return_value=0)
    mesh.processes = {
        name: mock.Mock(proc=proc, address=f"127.0.0.1:{4000 + i}", metrics_port=0, stdout_task=None, exit_task=None)
        for i, name in enumerate(s.name for s in SERVICES)
    }
    mesh._extra_env(spec("gateway"))  # (as start() asks)
    mesh.env = {}  # the renderer's config changed since: the running renderer did not
    await mesh.restart("gateway")
    await asyncio.sleep(0)
    assert spawned and spawned[0][KEY] == "wav2lip"


def test_a_gateway_config_that_cannot_be_read_is_left_to_the_gateway(tmp_path: Path) -> None:
    gateway = tmp_path / "gateway.yaml"
    gateway.write_text("default_renderer_backend: [unclosed\n")
    assert Mesh(env=WAV2LIP, configs={"gateway": str(gateway)})._derived(spec("gateway")) == {}


VERSION = "TALKMESH_AUDIO_FEATURES__MUSETALK__VERSION"


def _musetalk_export(directory: Path, version: str) -> Path:
    """A model directory whose unet.onnx records the release it was exported for, as
    tools/export_musetalk.py writes it (the weights beside it, as the real UNet's)."""
    import onnx

    from tests.common.test_gpu import model_with_weights

    directory.mkdir()
    unet = model_with_weights(directory / "unet.onnx", 100, external=True)
    proto = onnx.load(str(unet), load_external_data=False)
    onnx.helper.set_model_props(proto, {"talkmesh.musetalk_version": version})
    onnx.save(proto, str(unet))
    return directory


def test_the_feature_stage_gets_the_release_of_the_renderers_musetalk_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's `talkmesh up` for MuseTalk 1.0 needed `1.0` written in the feature stage's config too,
    and nothing checked it: with the default, 1.5, a 1.0 export ran with 1.5's audio windows."""
    for name in (VERSION, "TALKMESH_RENDERER__MUSETALK__PATH"):
        monkeypatch.delenv(name, raising=False)
    models = _musetalk_export(tmp_path / "musetalk", "1.0")
    env = {"TALKMESH_RENDERER__BACKENDS": "viseme,musetalk", "TALKMESH_RENDERER__MUSETALK__PATH": str(models)}
    assert Mesh(env=env)._derived(spec("audio_features")) == {VERSION: "1.0"}
    assert Mesh(env={**env, VERSION: "1.5"})._derived(spec("audio_features")) == {}  # its own choice wins
    features = tmp_path / "audio_features.yaml"
    features.write_text("musetalk:\n  version: '1.5'\n")
    assert Mesh(env=env, configs={"audio_features": str(features)})._derived(spec("audio_features")) == {}
    not_loaded = {**env, "TALKMESH_RENDERER__BACKENDS": "viseme"}
    assert Mesh(env=not_loaded)._derived(spec("audio_features")) == {}
