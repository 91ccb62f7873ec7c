"""Converts an official Wav2Lip checkpoint (``wav2lip.pth`` or ``wav2lip_gan.pth``) to ONNX.

    python -m tools.import_wav2lip wav2lip_gan.pth ~/models/wav2lip.onnx [--fp16]
    python -m tools.import_wav2lip --random ~/models/wav2lip-random.onnx     # no checkpoint at hand

``--random`` writes the real architecture with random weights (to try the path end to end before
you have a checkpoint: the mouth is noise, but it moves with the audio): its BatchNorm statistics
are taken from a pass over random inputs, as a trained model's are from its data, so the output
follows the inputs instead of saturating to one grey.

The checkpoint layout is ``{"state_dict": {"module.<name>": tensor, ...}, ...}`` (a bare state dict
and names without the ``module.`` prefix are accepted too). The ONNX model has the renderer's
Wav2Lip signature, batch axis dynamic:

    inputs   mel   [B, 1, 80, 16] float32    face [B, 6, 96, 96] float32 (masked ‖ reference, BGR/255)
    output   frames [B, 3, 96, 96] float32 in [0, 1]

``--fp16`` also writes ``<name>.fp16.onnx`` (float16 weights, float32 I/O) for CUDA / TensorRT.
Needs the ``tools`` extra (torch, onnx).
"""

from __future__ import annotations

import argparse
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from services.renderer.backends.wav2lip import SIGNATURE
from talkmesh.common.onnx_files import is_torch_file
from tools.models.wav2lip import FACE_SIZE, MEL_BINS, MEL_STEPS, Wav2LipGenerator
from tools.onnx_export import export_onnx, write_fp16_variant

# the names the renderer's Wav2Lip backend checks the model for (its signature)
INPUT_NAMES = tuple(t.name for t in SIGNATURE.inputs)
OUTPUT_NAMES = tuple(t.name for t in SIGNATURE.outputs)


USAGE = "%(prog)s [--fp16] CHECKPOINT OUTPUT\n       %(prog)s --random [--fp16] OUTPUT"


class CheckpointError(ValueError):
    pass


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The generator's state dict from an official checkpoint, ``module.`` prefixes removed."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if _is_torchscript(path):
        raise CheckpointError(
            f"{path}: a TorchScript archive (torch.jit.save), not a checkpoint: give the training checkpoint "
            "(wav2lip.pth or wav2lip_gan.pth), whose state_dict holds the weights"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file, an .onnx, a whole pickled model
        if isinstance(exc, pickle.UnpicklingError) and is_torch_file(path):  # objects in it: never unpickled
            raise CheckpointError(
                f"{path}: a whole pickled model (torch.save(model)), not a state dict: loading it would run its "
                "code; in code you trust, load it and save model.state_dict() to give here"
            ) from None
        onnx_file = path.suffix == ".onnx"
        kind = "an ONNX model: converted already" if onnx_file else "not a PyTorch checkpoint (or cut short)"
        # (torch's own message advises weights_only=False: unsafe for a file of unknown origin)
        raise CheckpointError(f"{path}: {kind} (torch.load: {type(exc).__name__})") from None
    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(raw).__name__}")
    state = raw.get("state_dict", raw)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        if isinstance(value, torch.Tensor):
            out[name] = value
    return out


def _is_torchscript(path: Path) -> bool:
    """A torch.jit.save archive: a zip whose entries include the module's ``code/``."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/")[1:2] == ["code"] for n in z.namelist())


#: the other networks of a Wav2Lip release, by a parameter name only they have
OTHER_NETWORKS = (
    ("face_encoder.", "SyncNet, the lip-sync expert (lipsync_expert.pth)"),
    ("binary_pred.", "the visual quality discriminator (visual_quality_disc.pth)"),
)


def load_generator(path: Path) -> Wav2LipGenerator:
    """Builds the generator and loads the checkpoint strictly (names and shapes must all match)."""
    state = read_state_dict(path)
    for prefix, network in OTHER_NETWORKS:
        if any(k.startswith(prefix) for k in state):
            raise CheckpointError(
                f"{path}: {network}, not the generator: give wav2lip.pth or wav2lip_gan.pth (the same download)"
            )
    model = Wav2LipGenerator()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} with other shapes (e.g. {k}: expected {tuple(expected[k].shape)}, "
                f"found {tuple(state[k].shape)})"
            )
        raise CheckpointError(f"{path}: not a Wav2Lip generator checkpoint: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_official_layout(model: Wav2LipGenerator, path: Path) -> Path:
    """Saves ``model`` the way the official training script does (tests and benchmarks use this)."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 0, "global_epoch": 0}, str(path))
    return path


def example_inputs(batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    mel = torch.randn(batch, 1, MEL_BINS, MEL_STEPS, generator=gen)
    face = torch.rand(batch, 6, FACE_SIZE, FACE_SIZE, generator=gen)
    return mel, face


def random_generator(seed: int = 0) -> Wav2LipGenerator:
    """The generator with random weights whose BatchNorm statistics come from random inputs."""
    torch.manual_seed(seed)
    model = Wav2LipGenerator()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # the cumulative average of the passes below
    model.train()
    with torch.no_grad():
        for i in range(4):
            gen = torch.Generator().manual_seed(seed + 1 + i)
            mel = torch.randn(8, 1, MEL_BINS, MEL_STEPS, generator=gen)
            model(mel, torch.rand(8, 6, FACE_SIZE, FACE_SIZE, generator=gen))
    return model.eval()


def export_generator(model: Wav2LipGenerator, out: Path, fp16: bool = False) -> Path:
    export_onnx(
        model, example_inputs(2), out, INPUT_NAMES, OUTPUT_NAMES,
        metadata={"talkmesh.model": "wav2lip", "talkmesh.format": "1"},
    )  # fmt: skip
    if fp16:
        write_fp16_variant(out)
    return out


def convert(checkpoint: Path, out: Path, fp16: bool = False) -> Path:
    return export_generator(load_generator(checkpoint), out, fp16=fp16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.import_wav2lip", usage=USAGE, description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("paths", type=Path, nargs="+", metavar="CHECKPOINT OUTPUT",
                        help="wav2lip.pth or wav2lip_gan.pth, then where to write the .onnx file")  # fmt: skip
    parser.add_argument("--fp16", action="store_true", help="also write <output>.fp16.onnx")
    parser.add_argument("--random", action="store_true", help="no checkpoint: random weights (OUTPUT only)")
    args = parser.parse_args(argv)
    if len(args.paths) != (1 if args.random else 2):
        parser.error("give OUTPUT alone with --random" if args.random else "give CHECKPOINT and OUTPUT")
    out = args.paths[-1].expanduser()
    try:
        if args.random:
            path = export_generator(random_generator(), out, fp16=args.fp16)
        else:
            path = convert(args.paths[0].expanduser(), out, fp16=args.fp16)
    except CheckpointError as exc:
        parser.exit(2, f"error: {exc}\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
