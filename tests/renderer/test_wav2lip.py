"""Wav2Lip: the checkpoint importer against PyTorch, and the ONNX backend (crop, mask, batching, paste).

A randomly initialised generator saved in the official checkpoint layout stands in for the released
weights (same architecture, parameter names and shapes).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from services.renderer.backends.base import Avatar, FrameJob  # noqa: E402
from services.renderer.backends.neural import lower_face_mask, padded_boxes  # noqa: E402
from services.renderer.backends.onnx_models import CPU, ModelError  # noqa: E402
from services.renderer.backends.wav2lip import Wav2LipBackend  # noqa: E402
from services.renderer.batcher import DynamicBatcher  # noqa: E402
from services.renderer.config import BatchConfig, ModelConfig, RendererConfig  # noqa: E402
from talkmesh.common.telemetry import Telemetry  # noqa: E402
from tools.import_wav2lip import (  # noqa: E402
    CheckpointError,
    convert,
    example_inputs,
    load_generator,
    main,
    save_official_layout,
)
from tools.models.wav2lip import Wav2LipGenerator, randomize_batchnorm  # noqa: E402

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Wav2LipGenerator, Path, Path]:
    d = tmp_path_factory.mktemp("wav2lip")
    torch.manual_seed(1234)
    model = Wav2LipGenerator()
    randomize_batchnorm(model)
    model.eval()
    ckpt = save_official_layout(model, d / "wav2lip_gan.pth")
    assert main([str(ckpt), str(d / "wav2lip.onnx"), "--fp16"]) == 0
    return model, ckpt, d / "wav2lip.onnx"


def test_checkpoint_uses_the_official_layout(exported):
    _, ckpt, _ = exported
    raw = torch.load(str(ckpt), map_location="cpu", weights_only=True)
    keys = raw["state_dict"]
    assert all(k.startswith("module.") for k in keys)
    # A few names and shapes of the released generator.
    assert tuple(keys["module.face_encoder_blocks.0.0.conv_block.0.weight"].shape) == (16, 6, 7, 7)
    assert tuple(keys["module.audio_encoder.0.conv_block.0.weight"].shape) == (32, 1, 3, 3)
    assert tuple(keys["module.face_decoder_blocks.1.0.conv_block.0.weight"].shape) == (1024, 512, 3, 3)
    assert tuple(keys["module.output_block.0.conv_block.1.running_var"].shape) == (32,)
    assert tuple(keys["module.output_block.1.weight"].shape) == (3, 32, 1, 1)
    n = sum(v.numel() for k, v in keys.items() if "running" not in k and "num_batches" not in k)
    assert 36_000_000 < n < 36_600_000  # the released generator has ~36.3 M parameters


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_pytorch(exported, batch: int):
    import onnxruntime as ort

    model, _, onnx_path = exported
    mel, face = example_inputs(batch)
    with torch.no_grad():
        ref = model(mel, face).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=[CPU])
    out = sess.run(None, {"mel": mel.numpy(), "face": face.numpy()})[0]
    assert out.shape == (batch, 3, 96, 96) and out.dtype == np.float32
    assert np.abs(out - ref).max() < 1e-4
    assert ref.std() > 1e-3  # the comparison is not between two constants
    half = ort.InferenceSession(str(onnx_path.with_name("wav2lip.fp16.onnx")), providers=[CPU])
    out16 = half.run(None, {"mel": mel.numpy(), "face": face.numpy()})[0]
    assert out16.dtype == np.float32 and np.abs(out16 - ref).max() < 1e-2


def test_importer_accepts_a_bare_state_dict_and_rejects_other_checkpoints(exported, tmp_path: Path):
    model, _, _ = exported
    bare = tmp_path / "bare.pth"
    torch.save(model.state_dict(), str(bare))
    loaded = load_generator(bare)
    mel, face = example_inputs(1)
    with torch.no_grad():
        assert torch.equal(loaded(mel, face), model(mel, face))

    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.output_block.1.weight"] = torch.zeros(3, 16, 1, 1)
    del state["module.audio_encoder.0.conv_block.0.bias"]
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, str(bad))
    with pytest.raises(CheckpointError) as err:
        convert(bad, tmp_path / "bad.onnx")
    msg = str(err.value)
    assert "audio_encoder.0.conv_block.0.bias" in msg
    assert "output_block.1.weight: expected (3, 32, 1, 1), found (3, 16, 1, 1)" in msg


def test_the_importer_says_what_is_wrong_with_a_file_in_one_line(exported, tmp_path: Path, capsys):
    """A missing file, a truncated checkpoint or the .onnx given back: one line, no traceback, and
    never the advice to load with weights_only=False."""
    _, ckpt, onnx_path = exported
    cut = tmp_path / "cut.pth"
    cut.write_bytes(ckpt.read_bytes()[:5000])
    for given, says in (
        (tmp_path / "nope.pth", "no such file"),
        (cut, "not a PyTorch checkpoint (or cut short)"),
        (onnx_path, "an ONNX model: converted already"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([str(given), str(tmp_path / "out.onnx")])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"error: {given}: {says}") and "weights_only" not in err, err



def test_the_importer_names_the_other_files_a_wav2lip_download_holds(exported, tmp_path: Path, capsys):
    """The release's SyncNet (lipsync_expert.pth) and discriminator (visual_quality_disc.pth), a whole
    pickled model and a TorchScript file were all "not a PyTorch checkpoint (or cut short)" or a
    list of missing names: each is said for what it is, in one line."""
    model, _, _ = exported
    syncnet = tmp_path / "lipsync_expert.pth"
    torch.save({"state_dict": {"module.face_encoder.0.conv_block.0.weight": torch.zeros(32, 15, 7, 7),
                               "module.audio_encoder.0.conv_block.0.weight": torch.zeros(32, 1, 3, 3)}},
               str(syncnet))  # fmt: skip
    disc = tmp_path / "visual_quality_disc.pth"
    torch.save({"state_dict": {"module.face_encoder_blocks.0.0.conv_block.0.weight": torch.zeros(32, 3, 7, 7),
                               "module.binary_pred.0.weight": torch.zeros(1, 512, 1, 1)}},
               str(disc))  # fmt: skip
    whole = tmp_path / "whole.pth"
    torch.save(model, str(whole))
    scripted = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(model, example_inputs(1)), str(scripted))
    for given, says in (
        (syncnet, "SyncNet, the lip-sync expert (lipsync_expert.pth), not the generator: give wav2lip.pth"),
        (disc, "the visual quality discriminator (visual_quality_disc.pth), not the generator: give wav2lip.pth"),
        (whole, "a whole pickled model (torch.save(model)), not a state dict"),
        (scripted, "a TorchScript archive (torch.jit.save), not a checkpoint"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([str(given), str(tmp_path / "out.onnx")])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"error: {given}: {says}"), err

def make_avatar() -> Avatar:
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, (3, 180, 200, 3), dtype=np.uint8)
    boxes = np.array([[50, 30, 150, 140], [52, 31, 151, 141], [48, 29, 149, 139]], np.int32)
    return Avatar("av", "av", frames, boxes, np.array([[80, 100, 120, 125]] * 3, np.int32))


def config(path: Path, max_size: int = 4, skip: int = 1) -> RendererConfig:
    return RendererConfig(wav2lip=ModelConfig(path=str(path), frame_skip=skip), batch=BatchConfig(max_size=max_size))


@pytest.fixture(scope="module")
def backend(exported) -> Wav2LipBackend:
    _, _, onnx_path = exported
    b = Wav2LipBackend(config(onnx_path), Telemetry("renderer"))
    b.warmup()
    return b


def mel(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-4, 4, (80, 16)).astype(np.float32)


def test_backend_crop_mask_and_model_input_match_an_independent_reference(exported, backend):
    model, _, _ = exported
    avatar = make_avatar()
    jobs = [FrameJob("s", i, i % 3, True, -20.0, features=mel(i)) for i in range(4)]
    crops = backend.infer([(avatar, j) for j in jobs])
    assert backend.provider == CPU and backend.max_batch == 4
    # Reference: crop the padded box (10 px more chin), 96x96, mask the lower half, run torch.
    faces, mels = [], []
    for j in jobs:
        x1, y1, x2, y2 = avatar.face_boxes[j.avatar_frame]
        crop = cv2.resize(avatar.frames[j.avatar_frame][y1 : y2 + 10, x1:x2], (96, 96), interpolation=cv2.INTER_AREA)
        ref = crop.astype(np.float32) / 255.0
        masked = ref.copy()
        masked[48:] = 0
        faces.append(np.concatenate([masked, ref], axis=2).transpose(2, 0, 1))
        assert j.features is not None
        mels.append(j.features[None])
    with torch.no_grad():
        out = model(torch.from_numpy(np.stack(mels)), torch.from_numpy(np.stack(faces))).numpy()
    expected = np.clip(out.transpose(0, 2, 3, 1) * 255 + 0.5, 0, 255).astype(np.uint8)
    for got, want in zip(crops, expected, strict=True):
        assert got.shape == (96, 96, 3) and got.dtype == np.uint8
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_paste_back_is_feathered_and_stays_inside_the_padded_box(backend):
    avatar = make_avatar()
    job = FrameJob("s", 0, 1, True, -20.0, features=mel(3))
    [frame] = backend.render(avatar, [job])
    src = avatar.frames[1]
    assert frame.shape == src.shape and frame.dtype == np.uint8
    x1, y1, x2, y2 = padded_boxes(avatar.face_boxes[1:2], avatar.size, (0, 10, 0, 0))[0]
    assert (y2 - y1) == (141 - 31) + 10
    changed = np.any(frame != src, axis=2)
    ys, xs = np.nonzero(changed)
    assert ys.min() >= y1 + (y2 - y1) * 0.3 and ys.max() < y2 and xs.min() >= x1 and xs.max() < x2
    # No seam: the box border rows and columns are untouched, the lower face centre is the model's.
    assert not changed[y1:y2, x1].any() and not changed[y2 - 1, x1:x2].any()
    crop = backend.infer([(avatar, job)])[0]
    patch = cv2.resize(crop, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    cy, cx = y1 + int((y2 - y1) * 0.7), (x1 + x2) // 2
    assert np.abs(frame[cy, cx].astype(int) - patch[cy - y1, cx - x1].astype(int)).max() <= 1
    mask = lower_face_mask(96)
    assert mask[0].max() == 0 and mask[-1].max() == 0 and mask[:, 0].max() == 0 and mask.max() == 1.0


async def test_concurrent_sessions_through_the_batcher_match_unbatched_rendering(backend):
    avatar = make_avatar()
    tel = Telemetry("renderer")
    batcher = DynamicBatcher(backend, tel, max_size=4, max_delay_ms=20.0)

    def jobs_of(k: int) -> list[FrameJob]:
        return [FrameJob(f"s{k}", i, (i + k) % 3, True, -20.0, features=mel(100 * k + i)) for i in range(5)]

    async def session(k: int) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        jobs = jobs_of(k)
        for start in range(0, 5, 2):
            out += await batcher.render(avatar, jobs[start : start + 2])
        return out

    try:
        results = await asyncio.gather(*(session(k) for k in range(3)))
    finally:
        await batcher.close()
    assert any(n > 1 for n in batcher.batch_sizes)
    for k, frames in enumerate(results):
        alone = backend.render(avatar, jobs_of(k))
        assert len(frames) == 5
        for got, want in zip(frames, alone, strict=True):
            assert got.shape == (180, 200, 3) and got.dtype == np.uint8
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


def test_wrong_model_file_is_rejected_with_both_signatures(tmp_path: Path):
    from diffusers import AutoencoderKL

    from tools.models.musetalk import VaeDecode, small_vae_config
    from tools.onnx_export import export_onnx

    vae = AutoencoderKL.from_config({k: v for k, v in small_vae_config().items() if not k.startswith("_")})
    path = export_onnx(VaeDecode(vae), (torch.randn(1, 4, 32, 32),), tmp_path / "x.onnx", ["latents"], ["image"])
    with pytest.raises(ModelError) as err:
        Wav2LipBackend(config(path), Telemetry("renderer"))
    msg = str(err.value)
    assert "expected inputs (mel[B,1,80,16] float, face[B,6,96,96] float) -> outputs (frames[B,3,96,96] float)" in msg
    assert "found inputs (latents[B,4,32,32] float) -> outputs (image[B,3,256,256] float)" in msg


def test_unset_path_is_a_clear_error():
    with pytest.raises(ModelError, match=r"wav2lip.path: not set"):
        Wav2LipBackend(RendererConfig(), Telemetry("renderer"))


def test_a_file_the_backend_cannot_load_names_its_config_key(tmp_path: Path):
    """A models volume not mounted: the message named the file but not the key that set it."""
    missing = tmp_path / "models" / "wav2lip.onnx"
    with pytest.raises(ModelError) as err:
        Wav2LipBackend(config(missing), Telemetry("renderer"))
    assert str(err.value) == f"wav2lip.path: wav2lip ({missing}): model file does not exist"


def test_on_a_gpu_the_batch_bound_follows_free_memory(exported, monkeypatch: pytest.MonkeyPatch):
    """The CUDA path with a session that reports CUDA (only CPU exists here; see test_providers)."""
    import onnxruntime as ort

    from services.renderer.backends import neural
    from services.renderer.backends.onnx_models import CUDA
    from services.renderer.runner import make_runner
    from talkmesh.common.gpu import CUDA_CONTEXT_BYTES, GiB, GpuMemory

    _, _, onnx_path = exported
    # A 16 GiB card with 2 GiB free at start-up (neighbours on a time-sliced GPU use the rest).
    monkeypatch.setattr(neural, "gpu_memory", lambda device=0: GpuMemory(16 * GiB, 2 * GiB))

    class CudaLike:
        def __init__(self, file: str, options: object) -> None:
            self.real = ort.InferenceSession(file, sess_options=options, providers=[CPU])

        def get_providers(self) -> list[str]:
            return [CUDA, CPU]

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

    opened: list[str] = []
    limits: list[int] = []

    def factory(file: str, providers: list, options: object) -> CudaLike:
        opened.append(Path(file).name)
        limits.append(dict(providers)[CUDA]["gpu_mem_limit"])
        return CudaLike(file, options)

    tel = Telemetry("renderer")
    cfg = config(onnx_path, max_size=4)
    b = Wav2LipBackend(cfg, tel, available=[CUDA, CPU], session_factory=factory, provider_check=lambda p: None)
    assert b.provider == CUDA and b.model.use_io_binding
    assert opened == ["wav2lip.fp16.onnx"]  # the FP16 variant written by --fp16
    assert limits == [16 * GiB - CUDA_CONTEXT_BYTES]  # gpu.share 1.0 of the card, minus the CUDA context
    # 90 % of the 2 GiB free, minus the CUDA context and the FP16 weights, / 24 MiB per frame -> a multiple of 8
    weights = Path(onnx_path).stat().st_size // 2
    expected = (int(2 * GiB * 0.9) - CUDA_CONTEXT_BYTES - weights) // (24 * 1024**2)
    assert b.max_batch == expected - expected % 8 and 40 <= b.max_batch <= 56
    assert make_runner(b, cfg, tel).max_size == b.max_batch  # type: ignore[attr-defined]
    assert (
        tel.metrics.registry.get_sample_value(
            "talkmesh_backend_info", {"service": "renderer", "kind": "execution_provider", "name": "wav2lip/" + CUDA}
        )
        == 1
    )
    b.model.binding_device = "cpu"  # I/O binding path, on the only device there is
    avatar = make_avatar()
    [frame] = b.render(avatar, [FrameJob("s", 0, 0, True, -20.0, features=mel(1))])
    assert frame.shape == avatar.frames[0].shape


def test_bench_helpers_measure_raw_forward_and_sessions(exported):
    from talkmesh.bench.stages.models import measure_forward, measure_sessions

    _, _, onnx_path = exported
    raw = measure_forward(onnx_path, (1, 2), min_seconds=0.0, min_runs=1)
    assert set(raw) == {1, 2} and all(v > 0 for v in raw.values())
    r = measure_sessions(onnx_path, sessions=2, frames=6, chunk=3, max_size=4, avatar_size=128)
    assert r["in_order_and_complete"] is True
    hist = r["batch_histogram"]
    assert isinstance(hist, dict) and sum(k * v for k, v in hist.items()) == 12


def test_paste_cannot_ghost_a_moving_chin(tmp_path):
    """The generated lower half is pasted whole (weight 1 on every row the model changes, the chin rows
    78-90 of the 96 px crop included); feathering only above it. Before/after crops are written as an
    artefact: a chin that moved down 8 px is doubled with the old lower-face mask, single with the new."""
    import cv2

    from services.renderer.backends.neural import generated_region_mask, lower_face_mask, paste

    new = generated_region_mask(96)
    assert np.all(new[48:90, 6:90] == 1.0) and np.all(new[:28] == 0.0)  # chin rows 78-90 included
    assert np.all(np.diff(new[:48, 48]) >= 0)  # a monotone fade above the changed region
    assert new[-1].max() == 0 and new[:, 0].max() == 0 and new[:, -1].max() == 0  # no seam at the edge
    old = lower_face_mask(96)
    assert old[84, 48] < 0.9  # the former mask mixed the chin rows with the reference frame

    def face(chin: int) -> np.ndarray:
        img = np.full((96, 96, 3), 180, np.uint8)
        cv2.ellipse(img, (48, chin), (30, 6), 0, 0, 360, (40, 40, 40), -1)  # a dark chin edge
        return img

    reference, generated = face(78), face(86)
    box = np.array([0, 0, 96, 96])
    before = paste(reference, box, generated, old)
    after = paste(reference, box, generated, new)
    np.testing.assert_array_equal(after[48:90, 6:90], generated[48:90, 6:90])  # exactly the model's chin
    ghost = np.abs(before[80:90].astype(int) - generated[80:90].astype(int)).max()
    assert ghost > 40  # the old blend fades the moved chin out into the reference frame
    out = tmp_path / "wav2lip_paste_before_after.png"
    cv2.imwrite(str(out), np.concatenate([reference, generated, before, after], axis=1))
    assert out.stat().st_size > 0


def test_random_weights_for_a_first_try_make_a_model_that_follows_the_audio(tmp_path: Path):
    """`python -m tools.import_wav2lip --random out.onnx`: the real architecture, loadable by the
    renderer, whose output changes with the mel window (a naive random init saturates to grey)."""
    import onnxruntime as ort

    out = tmp_path / "random.onnx"
    assert main(["--random", str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    face = rng.random((1, 6, 96, 96), dtype=np.float32)
    frames = [
        session.run(None, {"mel": rng.standard_normal((1, 1, 80, 16)).astype(np.float32), "face": face})[0]
        for _ in range(2)
    ]
    assert float(np.abs(frames[0] - frames[1]).mean()) > 0.01, "the mouth moves with the audio"
    assert float(frames[0].std()) > 0.02, "not one flat grey"
    config = RendererConfig(wav2lip=ModelConfig(path=str(out)))
    Wav2LipBackend(config, Telemetry("renderer")).warmup()  # the renderer takes it
    with pytest.raises(SystemExit):
        main(["--random", str(tmp_path / "a.pth"), str(out)])  # --random takes OUTPUT alone


def test_the_usage_lines_show_the_two_ways_to_call_the_tools(capsys):
    """argparse wrote `CHECKPOINT OUTPUT [CHECKPOINT OUTPUT ...]`, as if pairs could be repeated,
    and no form with --random alone."""
    from tools.export_whisper_encoder import main as whisper_main

    for tool, first, second in (
        (main, "[--fp16] CHECKPOINT OUTPUT", "--random [--fp16] OUTPUT"),
        (whisper_main, "MODEL_DIR OUTPUT", "--random [--musetalk-version {1.0,1.5}] OUTPUT"),
    ):
        with pytest.raises(SystemExit):
            tool(["--help"])
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].endswith(first) and lines[1].endswith(second) and "..." not in lines[0], lines[:2]
