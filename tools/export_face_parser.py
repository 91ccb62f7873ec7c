"""Exports the BiSeNet face parser MuseTalk blends with to the ONNX file the renderer loads.

MuseTalk's download script puts face-parsing.PyTorch's weights in ``models/face-parse-bisent/``:

    python -m tools.export_face_parser models/face-parse-bisent/79999_iter.pth ~/models/face_parser.onnx

then set the renderer's ``musetalk.face_parser`` to the ONNX file. The ``.pth`` is the state dict of
the 19-class BiSeNet with a ResNet-18 backbone (``tools.models.bisenet``; loaded strictly, so a
file of another layout is rejected naming the keys). The ONNX model takes ``image``
[B,3,512,512], RGB in [0,1] (the ImageNet normalisation is inside), and returns ``logits``
[B,19,512,512] of the main head. ``--random`` writes a random-weight model of the same architecture
instead (tests, benchmarks). Needs the ``tools`` extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tools.models.bisenet import INPUT_SIZE, N_CLASSES, BiSeNet, FaceParserExport
from tools.onnx_export import export_onnx


class ExportError(ValueError):
    pass


def load_bisenet(weights: Path | None, seed: int = 0) -> BiSeNet:
    """The network with ``weights`` (face-parsing.PyTorch's ``.pth``), or random ones when None."""
    torch.manual_seed(seed)
    net = BiSeNet(N_CLASSES)
    if weights is not None:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("module."): v for k, v in state.items()}
        missing, unexpected = net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ExportError(
                f"{weights}: not a face-parsing.PyTorch BiSeNet state dict: missing {len(missing)} "
                f"(e.g. {list(missing)[:3]}), unexpected {len(unexpected)} (e.g. {list(unexpected)[:3]})"
            )
    else:  # random BatchNorm statistics too, so that random weights give a varied parse
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def export_face_parser(net: BiSeNet, output: Path) -> Path:
    image = torch.rand(1, 3, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0))
    meta = {"talkmesh.model": "face_parser", "talkmesh.format": "1", "talkmesh.classes": str(N_CLASSES)}
    return export_onnx(FaceParserExport(net), (image,), output, ["image"], ["logits"], meta)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="?", type=Path, help="face-parsing.PyTorch .pth (79999_iter.pth)")
    parser.add_argument("output", type=Path, help="the ONNX file to write")
    parser.add_argument("--random", action="store_true", help="random weights instead of a .pth")
    parser.add_argument("--seed", type=int, default=0, help="seed of --random")
    args = parser.parse_args(argv)
    if (args.weights is None) == (not args.random):
        parser.error("give the .pth file, or --random")
    try:
        net = load_bisenet(None if args.random else args.weights.expanduser(), args.seed)
    except (ExportError, OSError) as exc:
        parser.exit(2, f"error: {exc}\n")
    path = export_face_parser(net, args.output.expanduser())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
