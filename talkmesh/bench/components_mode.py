"""`talkmesh bench components`: only the per-service micro-benchmarks, printed as JSON."""

from __future__ import annotations

import argparse
import asyncio
import json

from talkmesh.bench.components import run_components
from talkmesh.bench.speak import model_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fewer runs (smoke test)")
    p.add_argument("--model-dir", default="", help="where random-weight models are kept")
    p.add_argument("--wav2lip", action="store_true", help="also time the Wav2Lip-architecture forward pass")


def run(args: argparse.Namespace) -> int:
    models = model_dir(args)
    wav2lip = None
    if args.wav2lip:
        from talkmesh.bench.stages.models import write_random_wav2lip

        wav2lip = write_random_wav2lip(models)
    out = asyncio.run(run_components(args.quick, models, wav2lip))
    print(json.dumps(out, indent=1, default=str))
    return 0
