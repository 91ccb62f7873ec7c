"""MuseTalk's inference graph split into the three ONNX models the renderer runs.

MuseTalk (Zhang et al., 2024) inpaints the lower half of a 256x256 face crop in the latent space of
the ``sd-vae-ft-mse`` VAE with a single UNet step conditioned on Whisper-tiny encoder features:

* ``vae_encoder``: RGB crop in [0, 1] ``[B,3,256,256]`` -> latents ``[B,4,32,32]`` (posterior mean,
  times the VAE's scaling factor). MuseTalk itself takes ONE SAMPLE of the posterior
  (``latent_dist.sample()`` in ``musetalk/models/vae.py``) per reference crop; talkmesh takes the
  mean, so an avatar's cached latents are reproducible. The two differ by one draw of the posterior
  noise (``exp(logvar / 2)`` per latent); not measured with real weights (none here), so not a
  setting yet;
* ``unet``: latents of the masked crop ‖ the reference crop ``[B,8,32,32]`` and the frame's Whisper
  window ``[B,50,384]`` -> latents ``[B,4,32,32]``; timestep 0 and MuseTalk's sinusoidal positional
  encoding of the audio window are inside the graph;
* ``vae_decoder``: latents -> RGB crop in [0, 1].

Only the export tool and its tests use this module.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

CROP_SIZE = 256
LATENT_SIZE = 32
AUDIO_TOKENS = 50
AUDIO_WIDTH = 384
SD_VAE_SCALING = 0.18215


def positional_encoding(length: int, width: int) -> torch.Tensor:
    """[length, width] sinusoidal table: sin on even, cos on odd channels (Vaswani et al.)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(pos * rate)
    table[:, 1::2] = torch.cos(pos * rate)
    return table


class UNetStep(nn.Module):
    """One denoising step at timestep 0 with the audio window's positional encoding added."""

    def __init__(self, unet: nn.Module, tokens: int = AUDIO_TOKENS, width: int = AUDIO_WIDTH) -> None:
        super().__init__()
        self.unet = unet
        self.pe: torch.Tensor
        self.register_buffer("pe", positional_encoding(tokens, width)[None], persistent=False)

    def forward(self, latents: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        t = torch.zeros((), dtype=torch.long)
        out: torch.Tensor = self.unet(latents, t, encoder_hidden_states=audio + self.pe).sample
        return out


class VaeEncode(nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae
        self.scaling = float(getattr(vae.config, "scaling_factor", SD_VAE_SCALING))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The latent distribution, scaled: (mean, std); MuseTalk's latent is ``mean + std * noise``."""
        dist = self.vae.encode(image * 2.0 - 1.0).latent_dist
        return dist.mean * self.scaling, dist.std * self.scaling


class VaeDecode(nn.Module):
    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae
        self.scaling = float(getattr(vae.config, "scaling_factor", SD_VAE_SCALING))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        image: torch.Tensor = self.vae.decode(latents / self.scaling).sample
        return (image * 0.5 + 0.5).clamp(0.0, 1.0)


def small_unet_config() -> dict[str, Any]:
    """A scaled-down MuseTalk UNet config (same interface, far fewer channels and blocks)."""
    return {
        "_class_name": "UNet2DConditionModel",
        "in_channels": 8,
        "out_channels": 4,
        "sample_size": LATENT_SIZE,
        "cross_attention_dim": AUDIO_WIDTH,
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 1,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }


def small_vae_config() -> dict[str, Any]:
    """A scaled-down sd-vae-ft-mse config: 4 blocks (x8 down-sampling, 4 latent channels) kept."""
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "sample_size": CROP_SIZE,
        "block_out_channels": [8, 16, 16, 16],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "scaling_factor": SD_VAE_SCALING,
    }


def musetalk_unet_config() -> dict[str, Any]:
    """MuseTalk's released UNet config (``musetalk.json``, the same for 1.0 and 1.5): the Stable
    Diffusion 1.x UNet with 8 input channels and 384-wide cross-attention, ~850 M parameters."""
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": AUDIO_WIDTH,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 8,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }


def sd_vae_config() -> dict[str, Any]:
    """sd-vae-ft-mse's config (the Stable Diffusion KL autoencoder, 4 latent channels, x8)."""
    return {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 256,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "scaling_factor": SD_VAE_SCALING,
    }
