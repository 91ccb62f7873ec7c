"""Exports MuseTalk (UNet + sd-vae-ft-mse) to the three ONNX files the renderer loads.

MuseTalk's own ``models/`` directory (as its download script lays it out) holds both releases:

    MuseTalk 1.5 (default):  models/musetalkV15/musetalk.json + models/musetalkV15/unet.pth
    MuseTalk 1.0:            models/musetalk/musetalk.json   + models/musetalk/pytorch_model.bin
    both:                    models/sd-vae/ (sd-vae-ft-mse, diffusers format), models/whisper/ (Whisper-tiny)

    python -m tools.export_musetalk --models models --version 1.5 ~/models/musetalk  [--fp16]
    python -m tools.export_musetalk --models models --version 1.0 ~/models/musetalk-v1  [--fp16]
    python -m tools.export_whisper_encoder models/whisper encoder.onnx --musetalk-version 1.5   # or 1.0

or name the files one by one:

    python -m tools.export_musetalk --version 1.5 \
        --unet-config models/musetalkV15/musetalk.json --unet-weights models/musetalkV15/unet.pth \
        --vae models/sd-vae  ~/models/musetalk

``--unet-config`` is MuseTalk's UNet2DConditionModel JSON config (in_channels 8, out_channels 4,
cross_attention_dim 384; the same architecture, ~850 M parameters, for both releases);
``--unet-weights`` its state dict (``.bin``/``.pth`` torch file or ``.safetensors``). ``--unet`` may
instead name a diffusers-format directory. ``--vae`` is the diffusers-format ``sd-vae-ft-mse``
directory (config.json + weights). The output directory gets ``unet.onnx``, ``vae_encoder.onnx``
and ``vae_decoder.onnx`` (dynamic batch; ``--fp16`` adds ``*.fp16.onnx``; a model over 2 GB, like
the real UNet, keeps its weights in one ``<name>.onnx.data`` file beside it); set
``musetalk.path`` of the renderer to it. The release is recorded in the models' metadata
(``talkmesh.musetalk_version``): set the audio features' ``musetalk.version`` to the same and export
the Whisper encoder with the same ``--musetalk-version`` (1.0 and 1.5 differ in the encoder's last
state and in the padding of the audio windows). ``vae_encoder.onnx`` outputs the scaled mean
(``latents``) and standard deviation (``latents_std``) of the VAE's latent distribution, so the
renderer can take the latent as MuseTalk does (a sample, ``musetalk.vae_latent: sample``) or its mean.
For MuseTalk's face-parsing blend, also export ``models/face-parse-bisent/79999_iter.pth`` with
``python -m tools.export_face_parser`` (renderer ``musetalk.face_parser``). Needs the ``tools`` extra.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from services.renderer.backends.musetalk import FILES
from talkmesh.common.onnx_files import MUSETALK_VERSION_KEY
from tools.models.musetalk import (
    AUDIO_TOKENS,
    AUDIO_WIDTH,
    CROP_SIZE,
    LATENT_SIZE,
    UNetStep,
    VaeDecode,
    VaeEncode,
)
from tools.onnx_export import PROTOBUF_LIMIT, export_onnx, write_fp16_variant

# MuseTalk release -> (its directory under MuseTalk's models/, config file, UNet weights file)
RELEASES = {
    "1.5": ("musetalkV15", "musetalk.json", "unet.pth"),
    "1.0": ("musetalk", "musetalk.json", "pytorch_model.bin"),
}
VAE_DIR = "sd-vae"  # sd-vae-ft-mse under MuseTalk's models/



def _contract(role: str) -> tuple[str, list[str], list[str]]:
    """The file, input and output names the renderer's MuseTalk backend opens ``role`` with."""
    file, signature = FILES[role]
    return file, [t.name for t in signature.inputs], [t.name for t in signature.outputs]



class ExportError(ValueError):
    pass


def load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return {k.removeprefix("module."): v for k, v in state.items()}


def unet_from_config(config: dict[str, Any]) -> Any:
    from diffusers import UNet2DConditionModel

    cfg = {k: v for k, v in config.items() if not k.startswith("_")}
    for key, want in (("in_channels", 8), ("out_channels", 4), ("cross_attention_dim", AUDIO_WIDTH)):
        if cfg.get(key) != want:
            raise ExportError(f"unet config: {key} must be {want} for MuseTalk, found {cfg.get(key)!r}")
    return UNet2DConditionModel.from_config(cfg)


def load_unet(config_path: Path | None, weights: Path | None, directory: Path | None) -> Any:
    if directory is not None:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(str(directory)).eval()
    if config_path is None or weights is None:
        raise ExportError("give --unet DIR, or --unet-config and --unet-weights")
    unet = unet_from_config(json.loads(config_path.read_text()))
    state = load_state(weights)
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(
            f"{weights}: does not match {config_path}: missing {len(missing)} (e.g. {list(missing)[:3]}), "
            f"unexpected {len(unexpected)} (e.g. {list(unexpected)[:3]})"
        )
    return unet.eval()


def load_vae(directory: Path) -> Any:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(directory)).eval()
    if vae.config.latent_channels != 4:
        raise ExportError(f"{directory}: latent_channels must be 4, found {vae.config.latent_channels}")
    return vae


def release_files(models: Path, version: str) -> tuple[Path, Path, Path]:
    """``(unet config, unet weights, vae directory)`` of ``version`` in MuseTalk's ``models/`` layout."""
    directory, config, weights = RELEASES[version]
    files = (models / directory / config, models / directory / weights, models / VAE_DIR)
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        raise ExportError(f"MuseTalk {version} layout under {models}: missing {', '.join(missing)}")
    return files


def export_all(
    unet: Any,
    vae: Any,
    out_dir: Path,
    fp16: bool = False,
    version: str = "1.5",
    external_data_threshold: int = PROTOBUF_LIMIT,
) -> dict[str, Path]:
    """Writes the three models into ``out_dir``; returns their paths by role."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, CROP_SIZE, CROP_SIZE, generator=gen)
    latents = torch.randn(2, 4, LATENT_SIZE, LATENT_SIZE, generator=gen)
    pair = torch.randn(2, 8, LATENT_SIZE, LATENT_SIZE, generator=gen)
    audio = torch.randn(2, AUDIO_TOKENS, AUDIO_WIDTH, generator=gen)
    meta = {"talkmesh.model": "musetalk", "talkmesh.format": "1", MUSETALK_VERSION_KEY: version}
    big = external_data_threshold
    modules = {"vae_encoder": (VaeEncode(vae), (image,)), "vae_decoder": (VaeDecode(vae), (latents,)),
               "unet": (UNetStep(unet), (pair, audio))}  # fmt: skip
    paths = {}
    for role, (module, example) in modules.items():
        file, inputs, outputs = _contract(role)
        paths[role] = export_onnx(module, example, out_dir / file, inputs, outputs, meta, external_data_threshold=big)
    if fp16:
        for p in paths.values():
            write_fp16_variant(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", choices=sorted(RELEASES), default="1.5", help="MuseTalk release (default 1.5)")
    parser.add_argument("--models", type=Path, help="MuseTalk's models/ directory: picks the release's files")
    parser.add_argument("--unet-config", type=Path, help="MuseTalk UNet JSON config (musetalk.json)")
    parser.add_argument("--unet-weights", type=Path, help="MuseTalk UNet weights (.bin/.pth/.safetensors)")
    parser.add_argument("--unet", type=Path, help="or: a diffusers-format UNet directory")
    parser.add_argument("--vae", type=Path, help="diffusers-format sd-vae-ft-mse directory")
    parser.add_argument("output", type=Path, help="output directory")
    parser.add_argument("--fp16", action="store_true", help="also write *.fp16.onnx variants")
    args = parser.parse_args(argv)
    try:
        unet_config, unet_weights, vae_dir = args.unet_config, args.unet_weights, args.vae
        if args.models is not None:
            unet_config, unet_weights, vae_dir = release_files(args.models.expanduser(), args.version)
        if vae_dir is None:
            raise ExportError("give --models DIR, or --vae DIR")
        unet = load_unet(unet_config, unet_weights, args.unet)
        vae = load_vae(vae_dir)
        paths = export_all(unet, vae, args.output.expanduser(), fp16=args.fp16, version=args.version)
    except ExportError as exc:
        parser.exit(2, f"error: {exc}\n")
    for role, path in paths.items():
        print(f"{role}: {path}")
    print(f"renderer musetalk.path={args.output}; audio features musetalk.version={args.version}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
