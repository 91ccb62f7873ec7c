"""``talkmesh bench musetalk``: its environment is the services' real config, and its figures are read right."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from services.renderer.backends.neural import PREPARED
from talkmesh.bench import MODES
from talkmesh.bench.neural import NeuralRun, add_arguments, mesh_env, precompute_seconds


def test_mesh_env_configures_the_three_services(tmp_path: Path):
    from services.audio_features.main import load_config as features_config
    from services.gateway.main import load_config as gateway_config
    from services.renderer.main import load_config as renderer_config

    env = mesh_env(tmp_path / "models", tmp_path / "enc.onnx", tmp_path / "avatars")
    r = renderer_config(None, env=env)
    assert r.musetalk.path == str(tmp_path / "models") and "musetalk" in r.backends
    assert r.batch.max_size == 1 and r.avatars.cache_dir == str(tmp_path / "avatars")
    assert gateway_config(None, env=env).default_renderer_backend == "musetalk"
    assert features_config(None, env=env).whisper_encoder.path == str(tmp_path / "enc.onnx")


@pytest.mark.parametrize("version", ["1.0", "1.5"])
def test_the_feature_stage_gets_the_release_the_models_were_exported_for(tmp_path: Path, version: str):
    """A MuseTalk 1.0 export (with its 1.0 Whisper encoder) could not be benched: the feature stage
    started at its default, 1.5, and refused the encoder; nothing in `bench musetalk --help` said
    how to change it. The release the export recorded in the UNet's metadata is the one used."""
    import onnx

    from services.audio_features.main import load_config as features_config
    from talkmesh.common.registry import spec
    from talkmesh.launcher import Mesh
    from tests.common.test_gpu import model_with_weights

    models = tmp_path / "models"
    models.mkdir()
    unet = model_with_weights(models / "unet.onnx", 1000, external=True)  # the real UNet's layout
    proto = onnx.load(str(unet), load_external_data=False)
    onnx.helper.set_model_props(proto, {"talkmesh.model": "musetalk", "talkmesh.musetalk_version": version})
    onnx.save(proto, str(unet))
    env = mesh_env(models, tmp_path / "enc.onnx", tmp_path / "avatars")
    derived = Mesh(env=env)._derived(spec("audio_features"))  # (what the bench's mesh starts it with)
    assert features_config(None, env={**env, **derived}).musetalk.version == version
    unet.unlink()  # not said: the feature stage's own default (and its check of the encoder)
    assert Mesh(env=env)._derived(spec("audio_features")) == {}


def test_precompute_is_read_from_the_renderers_log_line(caplog):
    log = logging.getLogger("t")
    with caplog.at_level(logging.INFO):
        log.info(PREPARED, "musetalk", "warmup", 1, 1.5)
        log.info(PREPARED, "musetalk", "a1b2", 3, 58.125)
        log.info(PREPARED, "wav2lip", "a1b2", 3, 9.0)
    assert precompute_seconds(caplog.text) == 58.125  # not the warm-up, not another backend


def test_frames_per_second_and_markdown():
    run = NeuralRun("musetalk", "talkmesh bench musetalk", "abc", "d", {"cpu": "x", "cores": 2}, "/m", 10**9, "Hi.", 4)
    run.fragment_times = [10.0, 20.0, 30.0, 40.0]
    run.total_seconds, run.frames = 40.0, 4
    assert run.frames_per_second == 0.1 and run.steady_frames_per_second == 0.1
    assert "4 in 40.0 s" in run.markdown()


def test_mode_is_registered_with_its_options():
    assert any(m.name == "musetalk" for m in MODES)
    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--model-dir", "m", "--whisper-encoder", "e", "--frames", "3"])
    assert args.frames == 3 and args.deadline > 600 and args.text
