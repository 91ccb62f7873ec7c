"""Exports MuseTalk (UNet + sd-vae-ft-mse) to the three ONNX files the renderer loads.

    python -m tools.export_musetalk \\
        --unet-config models/musetalk/musetalk.json --unet-weights models/musetalk/pytorch_model.bin \\
        --vae models/sd-vae-ft-mse  ~/models/musetalk  [--fp16]

``--unet-config`` is MuseTalk's UNet2DConditionModel JSON config (in_channels 8, out_channels 4,
cross_attention_dim 384); ``--unet-weights`` its state dict (``.bin``/``.pth`` torch file or
``.safetensors``). ``--unet`` may instead name a diffusers-format directory. ``--vae`` is the
diffusers-format ``sd-vae-ft-mse`` directory (config.json + weights). The output directory gets
``unet.onnx``, ``vae_encoder.onnx`` and ``vae_decoder.onnx`` (dynamic batch; ``--fp16`` adds
``*.fp16.onnx``); set ``musetalk.path`` to it. Needs the ``tools`` extra.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from tools.models.musetalk import (
    AUDIO_TOKENS,
    AUDIO_WIDTH,
    CROP_SIZE,
    LATENT_SIZE,
    UNetStep,
    VaeDecode,
    VaeEncode,
)
from tools.onnx_export import export_onnx, write_fp16_variant

UNET_FILE = "unet.onnx"
VAE_ENCODER_FILE = "vae_encoder.onnx"
VAE_DECODER_FILE = "vae_decoder.onnx"


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


def export_all(unet: Any, vae: Any, out_dir: Path, fp16: bool = False) -> dict[str, Path]:
    """Writes the three models into ``out_dir``; returns their paths by role."""
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, CROP_SIZE, CROP_SIZE, generator=gen)
    latents = torch.randn(2, 4, LATENT_SIZE, LATENT_SIZE, generator=gen)
    pair = torch.randn(2, 8, LATENT_SIZE, LATENT_SIZE, generator=gen)
    audio = torch.randn(2, AUDIO_TOKENS, AUDIO_WIDTH, generator=gen)
    meta = {"talkmesh.model": "musetalk", "talkmesh.format": "1"}
    paths = {
        "vae_encoder": export_onnx(VaeEncode(vae), (image,), out_dir / VAE_ENCODER_FILE, ["image"], ["latents"], meta),
        "vae_decoder": export_onnx(
            VaeDecode(vae), (latents,), out_dir / VAE_DECODER_FILE, ["latents"], ["image"], meta
        ),
        "unet": export_onnx(UNetStep(unet), (pair, audio), out_dir / UNET_FILE, ["latents", "audio"], ["pred"], meta),
    }
    if fp16:
        for p in paths.values():
            write_fp16_variant(p)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unet-config", type=Path, help="MuseTalk UNet JSON config (musetalk.json)")
    parser.add_argument("--unet-weights", type=Path, help="MuseTalk UNet weights (.bin/.pth/.safetensors)")
    parser.add_argument("--unet", type=Path, help="or: a diffusers-format UNet directory")
    parser.add_argument("--vae", type=Path, required=True, help="diffusers-format sd-vae-ft-mse directory")
    parser.add_argument("output", type=Path, help="output directory")
    parser.add_argument("--fp16", action="store_true", help="also write *.fp16.onnx variants")
    args = parser.parse_args(argv)
    try:
        unet = load_unet(args.unet_config, args.unet_weights, args.unet)
        vae = load_vae(args.vae)
        paths = export_all(unet, vae, args.output.expanduser(), fp16=args.fp16)
    except ExportError as exc:
        parser.exit(2, f"error: {exc}\n")
    for role, path in paths.items():
        print(f"{role}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
