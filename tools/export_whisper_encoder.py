"""Export the encoder of a local Hugging Face Whisper checkpoint to ONNX for the audio features service.

    python -m tools.export_whisper_encoder /path/to/whisper-tiny encoder.onnx
    python -m tools.export_whisper_encoder --random encoder.onnx     # no checkpoint at hand

The checkpoint directory is what ``transformers`` saves (``config.json`` + ``model.safetensors``
or ``pytorch_model.bin``), for example a local copy of ``openai/whisper-tiny`` (what MuseTalk
uses). The ONNX model has

* input ``input_features``: ``[batch, 80, 3000]`` float32 log-mel (the 30 s window),
* output ``hidden_states``: ``[batch, layers + 1, 1500, width]`` float32, the embedding output
  followed by every encoder layer's hidden state (MuseTalk stacks exactly these), ``[*, 5, 1500, 384]``
  for Whisper-tiny. ``--musetalk-version 1.5`` (default): the last state has the encoder's final
  LayerNorm (transformers' ``hidden_states``, MuseTalk 1.5); ``--musetalk-version 1.0``: it does not
  (MuseTalk 1.0 collected openai-whisper's block outputs before ``ln_post``). Both releases use
  Whisper-tiny (MuseTalk's ``models/whisper``).

``--random`` writes Whisper-tiny's architecture with random weights (features that carry no
speech, to try the MuseTalk path end to end before the real checkpoint is at hand).

Point ``whisper_encoder.path`` of the audio features config at the file. Needs the ``tools`` extra
(torch, transformers, onnx); the service itself only needs onnxruntime.
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from services.audio_features.backends.onnx import INPUT_NAME, OUTPUT_NAME  # the service's contract
from talkmesh.common.onnx_files import MUSETALK_VERSION_KEY

OPSET = 17


# MuseTalk release -> whether the last hidden state carries the encoder's final LayerNorm: 1.5 uses
# transformers' hidden_states (it does), 1.0 openai-whisper's per-block outputs collected before
# ln_post (it does not). services/audio_features/streaming.py MUSETALK_VERSIONS says the same.
FINAL_LAYER_NORM = {"1.5": True, "1.0": False}


class EncoderHiddenStates(torch.nn.Module):
    """Wraps a ``transformers`` Whisper encoder: log-mel in, all hidden states stacked out.

    ``final_layer_norm=False`` replaces the last state (``layer_norm(last block output)`` in
    transformers) by the last block's own output, as MuseTalk 1.0 collected it."""

    def __init__(self, encoder: torch.nn.Module, final_layer_norm: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.final_layer_norm = final_layer_norm

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        layers: Any = self.encoder.layers
        hook = None
        if not self.final_layer_norm:
            hook = layers[-1].register_forward_hook(
                lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
            )
        try:
            out = self.encoder(input_features, output_hidden_states=True, return_dict=True)
        finally:
            if hook is not None:
                hook.remove()
        states = list(out.hidden_states)
        if not self.final_layer_norm:
            states[-1] = captured[-1]
        return torch.stack(tuple(states), dim=1)


def load_encoder(model_dir: Path) -> torch.nn.Module:
    """The encoder of the Whisper checkpoint in ``model_dir`` (eager attention: exports cleanly)."""
    from transformers import WhisperModel

    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json: not a Hugging Face Whisper checkpoint")
    model = WhisperModel.from_pretrained(str(model_dir), attn_implementation="eager")
    return model.get_encoder().eval()


def export_encoder(encoder: torch.nn.Module, output: Path, opset: int = OPSET, musetalk_version: str = "1.5") -> Path:
    """Writes ``encoder`` (a ``transformers`` WhisperEncoder) to ``output`` as ONNX; returns the path.
    ``musetalk_version`` decides the last state (see ``FINAL_LAYER_NORM``)."""
    import onnx

    config: Any = encoder.config
    frames = int(config.max_source_positions) * 2  # two stride-1/stride-2 convolutions: 3000 -> 1500
    mels = int(config.num_mel_bins)
    final_layer_norm = FINAL_LAYER_NORM[musetalk_version]
    wrapper = EncoderHiddenStates(encoder, final_layer_norm).eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, mels, frames)
    # The TorchScript exporter: the torch.export-based one needs onnxscript, not part of the tools extra.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            wrapper,
            (example,),
            str(output),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load(str(output))
    for key, value in {
        "talkmesh.model": "whisper_encoder",
        "talkmesh.layers": str(int(config.encoder_layers) + 1),
        "talkmesh.width": str(int(config.d_model)),
        "talkmesh.final_layer_norm": "true" if final_layer_norm else "false",
        MUSETALK_VERSION_KEY: musetalk_version,
    }.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(output))
    onnx.checker.check_model(str(output))
    return output


def random_tiny_checkpoint(directory: Path, seed: int = 0, encoder_layers: int = 4) -> Path:
    """A randomly initialised Whisper-tiny-sized checkpoint (384 wide, 4 encoder layers, 30 s window)
    saved in Hugging Face format: what tests and benchmarks export when no real weights exist."""
    import transformers

    config = transformers.WhisperConfig(
        d_model=384, encoder_layers=encoder_layers, encoder_attention_heads=6, encoder_ffn_dim=1536,
        num_mel_bins=80, max_source_positions=1500,
        # a minimal decoder: only the encoder is exported
        decoder_layers=1, decoder_attention_heads=6, decoder_ffn_dim=64, vocab_size=64, max_target_positions=8,
        pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        suppress_tokens=[], begin_suppress_tokens=[],
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.WhisperModel(config).eval()
    out = Path(directory) / "checkpoint"
    model.save_pretrained(out)
    return out


def write_random_tiny(directory: Path) -> Path:
    """The ONNX encoder of ``random_tiny_checkpoint`` in ``directory`` (reused when present)."""
    directory = Path(directory).expanduser()
    onnx_path = directory / "whisper-tiny-random-encoder.onnx"
    if not onnx_path.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "whisper-tiny-random-encoder.partial.onnx"
        export_encoder(load_encoder(random_tiny_checkpoint(directory)), tmp)
        tmp.replace(onnx_path)
    return onnx_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.export_whisper_encoder",
        usage="%(prog)s [--musetalk-version {1.0,1.5}] [--opset N] MODEL_DIR OUTPUT\n"
        "       %(prog)s --random [--musetalk-version {1.0,1.5}] OUTPUT",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "paths", type=Path, nargs="+", metavar="MODEL_DIR OUTPUT",
        help="local Hugging Face Whisper checkpoint directory, then the ONNX file to write",
    )  # fmt: skip
    parser.add_argument("--opset", type=int, default=OPSET)
    parser.add_argument(
        "--musetalk-version",
        choices=sorted(FINAL_LAYER_NORM),
        default="1.5",
        help="MuseTalk release the states are for: 1.5 keeps the final LayerNorm on the last state, "
        "1.0 leaves it off (set the audio features' musetalk.version to the same)",
    )
    parser.add_argument(
        "--random", action="store_true",
        help="no checkpoint: Whisper-tiny's architecture with random weights (OUTPUT only), to try the path",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if len(args.paths) != (1 if args.random else 2):
        parser.error("give OUTPUT alone with --random" if args.random else "give MODEL_DIR and OUTPUT")
    out = args.paths[-1].expanduser()
    with tempfile.TemporaryDirectory(prefix="whisper-random-") as tmp:
        try:
            if args.random:
                encoder = load_encoder(random_tiny_checkpoint(Path(tmp)))
            else:
                encoder = load_encoder(args.paths[0].expanduser())
        except (OSError, ValueError) as exc:  # no such directory, not a checkpoint, missing weights
            parser.exit(2, f"error: {exc}\n")
        path = export_encoder(encoder, out, args.opset, args.musetalk_version)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
