"""MuseTalk 1.0 and 1.5 take Whisper-tiny features of the same shape but another meaning: a renderer
of one release fed the other's features must refuse the stream, not render wrong lips.

Through the five real services in this process (port 0): a scaled-down MuseTalk with random weights
(tools.export_musetalk, as tests/renderer/test_musetalk.py) and a Whisper-shaped encoder, each
stage with its own settings as in Kubernetes (nothing carries the renderer's release to the
feature stage here, unlike ``talkmesh up``).
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from talkmesh.client import TalkmeshClient  # noqa: E402
from talkmesh.v1.encoder_pb2 import CONTAINER_FMP4  # noqa: E402
from tests.media import probe  # noqa: E402
from tests.mesh import inprocess_mesh  # noqa: E402

pytestmark = pytest.mark.tools

LAYERS, WIDTH, FRAMES = 5, 384, 3000  # Whisper-tiny's hidden states over its 30 s window


def whisper_shaped_encoder(path: Path, version: str) -> Path:
    """An ONNX model with the Whisper-tiny encoder's contract ([B, 80, 3000] -> [B, 5, 1500, 384],
    random projection of every other mel column), recording the release it is for as
    tools/export_whisper_encoder.py does."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("input_features", TensorProto.FLOAT, ["batch", 80, FRAMES])
    y = helper.make_tensor_value_info("hidden_states", TensorProto.FLOAT, ["batch", LAYERS, FRAMES // 2, WIDTH])
    weights = np.random.default_rng(0).standard_normal((80, LAYERS * WIDTH)).astype(np.float32) / 9.0
    ints = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [len(v)], v)  # noqa: E731
    nodes = [
        helper.make_node("Slice", ["input_features", "f0", "f1", "f_ax", "f_step"], ["half"]),  # [B, 80, T/2]
        helper.make_node("Transpose", ["half"], ["t"], perm=[0, 2, 1]),  # [B, T/2, 80]
        helper.make_node("MatMul", ["t", "w"], ["m"]),  # [B, T/2, L*W]
        helper.make_node("Reshape", ["m", "shape"], ["r"]),  # [B, T/2, L, W]
        helper.make_node("Transpose", ["r"], ["hidden_states"], perm=[0, 2, 1, 3]),  # [B, L, T/2, W]
    ]
    inits = [
        ints("f0", [0]), ints("f1", [FRAMES]), ints("f_ax", [2]), ints("f_step", [2]),
        ints("shape", [0, FRAMES // 2, LAYERS, WIDTH]), numpy_helper.from_array(weights, "w"),
    ]  # fmt: skip
    model = helper.make_model(helper.make_graph(nodes, "enc", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])  # fmt: skip
    model.ir_version = 8
    onnx.helper.set_model_props(
        model,
        {"talkmesh.musetalk_version": version, "talkmesh.final_layer_norm": "true" if version == "1.5" else "false"},
    )
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Per release: (the MuseTalk models' directory, a Whisper encoder for it). The same weights:
    only the release each file says it is for differs."""
    from tools.export_musetalk import main, unet_from_config
    from tools.models.musetalk import small_unet_config, small_vae_config

    d = tmp_path_factory.mktemp("musetalk-release")
    torch.manual_seed(5)
    (d / "musetalk.json").write_text(json.dumps(small_unet_config()))
    torch.save(unet_from_config(small_unet_config()).eval().state_dict(), str(d / "unet.bin"))
    vae = diffusers.AutoencoderKL.from_config({k: v for k, v in small_vae_config().items() if not k.startswith("_")})
    vae.eval().save_pretrained(str(d / "sd-vae"))
    out = {}
    for version in ("1.5", "1.0"):
        args = ["--unet-config", str(d / "musetalk.json"), "--unet-weights", str(d / "unet.bin"),
                "--vae", str(d / "sd-vae"), "--version", version, str(d / f"onnx-{version}")]  # fmt: skip
        assert main(args) == 0
        out[version] = (d / f"onnx-{version}", whisper_shaped_encoder(d / f"whisper-{version}.onnx", version))
    return out


def mesh_env(models: dict[str, tuple[Path, Path]], renderer: str, features: str) -> dict[str, str]:
    """Each stage's own environment, as each Kubernetes Deployment sets it."""
    return {
        "TALKMESH_RENDERER__BACKENDS": "viseme,musetalk",
        "TALKMESH_RENDERER__MUSETALK__PATH": str(models[renderer][0]),
        "TALKMESH_RENDERER__BATCH__MAX_SIZE": "4",
        "TALKMESH_AUDIO_FEATURES__WHISPER_ENCODER__PATH": str(models[features][1]),
        "TALKMESH_AUDIO_FEATURES__MUSETALK__VERSION": features,
        "TALKMESH_GATEWAY__DEFAULT_RENDERER_BACKEND": "musetalk",
    }


@pytest.mark.parametrize(("renderer", "features"), [("1.5", "1.0"), ("1.0", "1.5")])
async def test_a_renderer_of_one_release_refuses_features_of_the_other(
    tmp_path: Path, models: dict[str, tuple[Path, Path]], renderer: str, features: str
) -> None:
    """FAILED_PRECONDITION from the renderer, passed on by the gateway naming the stage: both releases
    and the setting on each side that decides it (the feature stage's musetalk.version and its env
    variable, the renderer's unet.onnx)."""
    async with inprocess_mesh(tmp_path, env=mesh_env(models, renderer, features)) as mesh:
        async with TalkmeshClient(mesh.gateway) as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                # fragments: the encoder sends the renderer the first fragment's frames on their own
                await client.speak_to_file("Hello there.", tmp_path / "out.mp4", timeout=300, container=CONTAINER_FMP4)
        inferred = mesh.telemetry["renderer"].metrics.registry.get_sample_value(
            "talkmesh_frames_total", {"service": "renderer"}
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    details = err.value.details() or ""
    assert details.startswith("renderer: "), details
    assert f"features are for MuseTalk {features}" in details, details
    assert f"MuseTalk {renderer} models" in details, details
    assert "musetalk.version" in details and "TALKMESH_AUDIO_FEATURES__MUSETALK__VERSION" in details, details
    assert "the talkmesh.musetalk_version of its musetalk.path's unet.onnx" in details, details
    assert not inferred  # refused before its first frame: no wrong lips reached the encoder
    assert not (tmp_path / "out.mp4").exists() or (tmp_path / "out.mp4").stat().st_size == 0


async def test_a_matched_pair_still_renders(tmp_path: Path, models: dict[str, tuple[Path, Path]]) -> None:
    async with inprocess_mesh(tmp_path, env=mesh_env(models, "1.0", "1.0")) as mesh:
        async with TalkmeshClient(mesh.gateway) as client:
            result = await client.speak_to_file("Hello there.", tmp_path / "out.mp4", timeout=300)
        registry = mesh.telemetry["renderer"].metrics.registry
        frames = registry.get_sample_value("talkmesh_frames_total", {"service": "renderer"}) or 0
        silent = registry.get_sample_value(
            "talkmesh_skipped_frames_total", {"service": "renderer", "reason": "silence"}
        ) or 0
    assert frames - silent > 5  # MuseTalk drew the speech
    info = probe(tmp_path / "out.mp4")
    assert info.video_codec == "h264" and info.frames == result.summary.frames > 10
    assert abs(info.audio_seconds - info.video_seconds) <= 0.040


async def test_a_live_turn_of_the_other_release_fails_naming_the_renderer(
    tmp_path: Path, models: dict[str, tuple[Path, Path]]
) -> None:
    """A live session: the turn fails with one LiveError (FAILED_PRECONDITION, "renderer: musetalk:
    ...") and a FAILED speaking_stopped, instead of playing wrong lips (its idle frames say no
    release: the session's idle loop renders as before)."""
    from talkmesh.v1 import live_pb2 as lpb
    from tests.live_helpers import Recorder

    async with inprocess_mesh(tmp_path, env=mesh_env(models, "1.5", "1.0")) as mesh:
        async with TalkmeshClient(mesh.gateway) as client, client.live() as live:
            rec = Recorder(live).start()
            tid = await live.say("Hello there.")
            stopped = await rec.wait_event("speaking_stopped", tid, timeout=120)
            errors = [r.msg.error for r in rec.messages if r.kind == "error"]
    assert stopped.msg.event.speaking_stopped.reason == lpb.STOP_REASON_FAILED
    assert [(e.code, e.turn_id) for e in errors] == [(grpc.StatusCode.FAILED_PRECONDITION.value[0], tid)]
    assert errors[0].message.startswith("renderer: musetalk: the stream's features are for MuseTalk 1.0 ")
    assert "this renderer's MuseTalk 1.5 models" in errors[0].message
