"""The Wav2Lip generator as a torch module whose state_dict matches the official checkpoints.

Written from the published architecture (Prajwal et al., "A Lip Sync Expert Is All You Need",
2020): a face encoder over the 6-channel input (masked lower half ‖ reference, 96x96), an audio
encoder over an 80x16 mel window, and a U-Net style decoder that concatenates the face encoder's
skip features. The parameter names follow the released checkpoints (``wav2lip.pth`` and
``wav2lip_gan.pth`` share this generator):

    face_encoder_blocks.<i>.<j>.conv_block.{0,1}.*   Conv2d + BatchNorm2d
    audio_encoder.<j>.conv_block.{0,1}.*
    face_decoder_blocks.<i>.<j>.conv_block.{0,1}.*   ConvTranspose2d/Conv2d + BatchNorm2d
    output_block.0.conv_block.{0,1}.*, output_block.1.*

Only the model import tool and its tests use this module (torch is never imported by a service).
"""

from __future__ import annotations

import torch
from torch import nn

FACE_SIZE = 96
MEL_BINS = 80
MEL_STEPS = 16


class ConvBN(nn.Module):
    """Conv2d -> BatchNorm2d (-> + input when residual) -> ReLU. Child names: ``conv_block.0/1``."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_block(x)
        if self.residual:
            y = y + x
        return self.act(y)


class ConvTransposeBN(nn.Module):
    """ConvTranspose2d -> BatchNorm2d -> ReLU. Child names: ``conv_block.0/1``."""

    def __init__(
        self, cin: int, cout: int, kernel_size: int, stride: int, padding: int, output_padding: int = 0
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _res(c: int, n: int) -> list[nn.Module]:
    """``n`` residual 3x3 blocks of width ``c``."""
    return [ConvBN(c, c, 3, 1, 1, residual=True) for _ in range(n)]


def _down(cin: int, cout: int, n_res: int) -> nn.Sequential:
    return nn.Sequential(ConvBN(cin, cout, 3, 2, 1), *_res(cout, n_res))


def _up(cin: int, cout: int, n_res: int) -> nn.Sequential:
    return nn.Sequential(ConvTransposeBN(cin, cout, 3, 2, 1, output_padding=1), *_res(cout, n_res))


class Wav2LipGenerator(nn.Module):
    """``forward(mel [B,1,80,16], face [B,6,96,96]) -> [B,3,96,96]`` in [0, 1] (BGR as trained)."""

    def __init__(self) -> None:
        super().__init__()
        # Spatial size after each block: 96, 48, 24, 12, 6, 3, 1.
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBN(6, 16, 7, 1, 3)),
                _down(16, 32, 2),
                _down(32, 64, 3),
                _down(64, 128, 2),
                _down(128, 256, 2),
                _down(256, 512, 1),
                nn.Sequential(ConvBN(512, 512, 3, 1, 0), ConvBN(512, 512, 1, 1, 0)),
            ]
        )
        # 80x16 -> 80x16 -> 27x16 -> 9x6 -> 3x3 -> 1x1, 512 channels.
        self.audio_encoder = nn.Sequential(
            ConvBN(1, 32, 3, 1, 1), *_res(32, 2),
            ConvBN(32, 64, 3, (3, 1), 1), *_res(64, 2),
            ConvBN(64, 128, 3, 3, 1), *_res(128, 2),
            ConvBN(128, 256, 3, (3, 2), 1), *_res(256, 1),
            ConvBN(256, 512, 3, 1, 0),
            ConvBN(512, 512, 1, 1, 0),
        )  # fmt: skip
        # Each block's output is concatenated with the matching face-encoder feature map.
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBN(512, 512, 1, 1, 0)),  # 1x1
                nn.Sequential(ConvTransposeBN(1024, 512, 3, 1, 0), *_res(512, 1)),  # 3x3
                _up(1024, 512, 2),  # 6x6
                _up(768, 384, 2),  # 12x12
                _up(512, 256, 2),  # 24x24
                _up(320, 128, 2),  # 48x48
                _up(160, 64, 2),  # 96x96
            ]
        )
        self.output_block = nn.Sequential(
            ConvBN(80, 32, 3, 1, 1), nn.Conv2d(32, 3, kernel_size=1, stride=1, padding=0), nn.Sigmoid()
        )

    def forward(self, mel: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        skips = []
        x = face
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(mel)
        for block in self.face_decoder_blocks:
            x = block(x)
            x = torch.cat((x, skips.pop()), dim=1)
        out: torch.Tensor = self.output_block(x)
        return out


def randomize_batchnorm(model: nn.Module, generator: torch.Generator | None = None) -> None:
    """Gives every BatchNorm non-trivial running statistics (so an export test exercises them)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.1, 0.1, generator=generator)
                m.running_var.uniform_(0.5, 1.5, generator=generator)
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.1, 0.1, generator=generator)
