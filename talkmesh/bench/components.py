"""Each service's own micro-benchmark, run in this process (no mesh)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


async def run_components(
    quick: bool,
    model_dir: Path,
    wav2lip_model: Path | None = None,
    *,
    echo: Callable[[str], None] = lambda line: print(line, flush=True),
) -> dict[str, Any]:
    """Service name -> what that service's benchmark returned, or ``{"error": ...}``."""
    out: dict[str, Any] = {}

    async def attempt(name: str, fn: Callable[[], Awaitable[Any]]) -> None:
        echo(f"[components] {name} ...")
        try:
            out[name] = await fn()
        except Exception as exc:  # a missing optional piece must not lose the whole run
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}

    from talkmesh.bench.stages.tts import run_benchmark as tts_bench

    await attempt("tts", lambda: tts_bench(runs=10 if quick else 50, paragraph_runs=2 if quick else 5))

    from talkmesh.bench.stages.audio_features import run_bench as features_bench

    encoder_path = ""
    try:  # a random-weight Whisper-tiny encoder, when the model tools (PyTorch) are installed
        from tools.export_whisper_encoder import write_random_tiny

        encoder_path = str(await asyncio.to_thread(write_random_tiny, model_dir))
    except ImportError:
        pass
    await attempt(
        "audio_features",
        lambda: asyncio.to_thread(features_bench, seconds=3 if quick else 10, encoder_path=encoder_path or None),
    )
    from talkmesh.bench.stages.renderer import run_bench as renderer_bench

    await attempt("renderer", lambda: asyncio.to_thread(renderer_bench, quick=quick))
    from talkmesh.bench.stages.encoder import measure as encoder_bench

    await attempt("encoder", lambda: encoder_bench(("512",) if quick else ("360p", "512", "720p")))
    if wav2lip_model is not None:
        from talkmesh.bench.stages.models import measure_forward

        model = wav2lip_model
        await attempt(
            "wav2lip_forward_fps",
            lambda: asyncio.to_thread(measure_forward, model, (1, 8, 32), min_seconds=1 if quick else 3),
        )
    return out
