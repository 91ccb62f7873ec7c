"""Writes MuseTalk's ``models/`` layout with RANDOM weights in the real architectures (no real
weights are downloadable here): for tests, benchmarks and the real-size export check.

    python -m tools.random_musetalk models --version 1.5 [--small]
    python -m tools.export_musetalk --models models --version 1.5 out/musetalk

``--small`` uses a scaled-down config (seconds); without it the UNet is the released config
(``musetalk.json``, ~850 M parameters, 3.4 GB of fp32 weights) and the VAE is sd-vae-ft-mse's
(~84 M). Needs the ``tools`` extra.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tools.export_musetalk import RELEASES, VAE_DIR, unet_from_config
from tools.models.musetalk import musetalk_unet_config, sd_vae_config, small_unet_config, small_vae_config


def write_random_release(models: Path, version: str = "1.5", small: bool = False, seed: int = 0) -> Path:
    """Writes ``models/<release dir>/{musetalk.json, weights}`` and ``models/sd-vae``; returns ``models``."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    directory, config_file, weights_file = RELEASES[version]
    unet_config = small_unet_config() if small else musetalk_unet_config()
    (models / directory).mkdir(parents=True, exist_ok=True)
    (models / directory / config_file).write_text(json.dumps(unet_config, indent=2))
    unet = unet_from_config(unet_config)
    torch.save(unet.state_dict(), str(models / directory / weights_file))
    del unet
    vae_config = small_vae_config() if small else sd_vae_config()
    vae = AutoencoderKL.from_config({k: v for k, v in vae_config.items() if not k.startswith("_")})
    vae.save_pretrained(str(models / VAE_DIR))
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, help="directory to write MuseTalk's models/ layout into")
    parser.add_argument("--version", choices=sorted(RELEASES), default="1.5")
    parser.add_argument("--small", action="store_true", help="scaled-down configs (fast)")
    args = parser.parse_args(argv)
    out = write_random_release(args.models.expanduser(), args.version, args.small)
    print(f"wrote random MuseTalk {args.version} weights under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
