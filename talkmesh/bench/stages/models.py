"""Raw model speed for the benchmark: ONNX Runtime forward passes of the Wav2Lip architecture.

``write_random_wav2lip(directory)`` produces a Wav2Lip-architecture ONNX file with random weights
through the same path as real weights (official checkpoint layout -> ``tools.import_wav2lip``); it
needs the ``tools`` extra (torch) and is cached in ``directory``. ``measure_forward(path)`` times
the bare ``InferenceSession.run`` at batch 1/8/32 and returns frames per second per batch size:
the ceiling the whole mesh is compared against (``talkmesh bench``).

    python -m talkmesh.bench.stages.models [directory]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from talkmesh.common.paths import cache_dir

WAV2LIP_FILE = "wav2lip-random.onnx"


def write_random_wav2lip(directory: Path, seed: int = 0, fp16: bool = False) -> Path:
    """A random-weight Wav2Lip generator exported like a real checkpoint; reused if present."""
    out = Path(directory).expanduser() / WAV2LIP_FILE
    if out.is_file():
        return out
    import torch

    from tools.import_wav2lip import convert, save_official_layout
    from tools.models.wav2lip import Wav2LipGenerator, randomize_batchnorm

    out.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = Wav2LipGenerator()
    randomize_batchnorm(model)
    ckpt = save_official_layout(model.eval(), out.with_suffix(".pth"))
    tmp = out.with_name(out.stem + ".partial.onnx")
    convert(ckpt, tmp, fp16=fp16)
    ckpt.unlink()
    tmp.replace(out)
    return out


def measure_forward(
    path: Path,
    batch_sizes: Sequence[int] = (1, 8, 32),
    *,
    min_seconds: float = 3.0,
    min_runs: int = 3,
    intra_op_threads: int = 0,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> dict[int, float]:
    """Frames per second of bare ``session.run`` per batch size (after one warm-up run each), on a
    session of the shared factory with ``providers`` pinned (no FP16 variant: the file as given)."""
    from talkmesh.common.onnx import ExecutionConfig, open_session

    cfg = ExecutionConfig(providers=list(providers), fp16=False, intra_op_threads=intra_op_threads)
    sess = open_session(path, cfg, name="bench", max_batch=max(batch_sizes)).session
    rng = np.random.default_rng(0)
    result: dict[int, float] = {}
    for b in batch_sizes:
        feeds = {
            "mel": rng.uniform(-4, 4, (b, 1, 80, 16)).astype(np.float32),
            "face": rng.uniform(0, 1, (b, 6, 96, 96)).astype(np.float32),
        }
        sess.run(None, feeds)
        runs, start = 0, time.perf_counter()
        while runs < min_runs or time.perf_counter() - start < min_seconds:
            sess.run(None, feeds)
            runs += 1
        result[b] = runs * b / (time.perf_counter() - start)
    return result


def measure_sessions(
    path: Path,
    sessions: int = 4,
    frames: int = 100,
    *,
    chunk: int = 5,
    max_size: int = 8,
    max_delay_ms: float = 15.0,
    avatar_size: int = 512,
) -> dict[str, object]:
    """Renderer-level throughput: ``sessions`` concurrent streams through the dynamic batcher.

    Each session hands over ``chunk`` frames at a time (as feature chunks arrive) and waits for
    them, composing full ``avatar_size`` frames. Returns frames/s, the batch sizes formed and
    whether every session got all its frames in order.
    """
    import asyncio

    import cv2

    from services.renderer.backends.base import Avatar, FrameJob
    from services.renderer.backends.wav2lip import Wav2LipBackend
    from services.renderer.batcher import DynamicBatcher
    from services.renderer.config import BatchConfig, ModelConfig, RendererConfig
    from talkmesh.common.telemetry import Telemetry

    cfg = RendererConfig(wav2lip=ModelConfig(path=str(path)), batch=BatchConfig(max_size=max_size))
    tel = Telemetry("renderer")
    backend = Wav2LipBackend(cfg, tel)
    backend.warmup()
    frame = np.full((avatar_size, avatar_size, 3), 150, np.uint8)
    cv2.circle(frame, (avatar_size // 2, avatar_size // 2), avatar_size // 4, (80, 120, 180), -1)
    q = avatar_size // 4
    avatar = Avatar("bench", "bench", frame[None], np.array([[q, q, 3 * q, 3 * q]], np.int32),
                    np.array([[q + q // 2, 2 * q, 3 * q - q // 2, 2 * q + q // 2]], np.int32))  # fmt: skip
    backend.prepare(avatar)
    rng = np.random.default_rng(0)
    mels = rng.uniform(-4, 4, (frames, 80, 16)).astype(np.float32)

    async def run() -> tuple[float, list[int], bool]:
        batcher = DynamicBatcher(backend, tel, max_size=max_size, max_delay_ms=max_delay_ms)

        async def session(k: int) -> bool:
            got: list[int] = []
            for start in range(0, frames, chunk):
                jobs = [FrameJob(f"s{k}", i, 0, True, -20.0, features=mels[i])
                        for i in range(start, min(frames, start + chunk))]  # fmt: skip
                out = await batcher.render(avatar, jobs)
                got += [j.frame_index for j, f in zip(jobs, out, strict=True) if f.shape == frame.shape]
            return got == list(range(frames))

        try:
            start = time.perf_counter()
            ok = await asyncio.gather(*(session(k) for k in range(sessions)))
            elapsed = time.perf_counter() - start
        finally:
            await batcher.close()
        return sessions * frames / elapsed, list(batcher.batch_sizes), all(ok)

    fps, sizes, in_order = asyncio.run(run())
    histogram = {n: sizes.count(n) for n in sorted(set(sizes))}
    return {"frames_per_second": fps, "batch_histogram": histogram, "in_order_and_complete": in_order}


def main(argv: list[str] | None = None) -> int:
    """Alternates raw-forward and batcher measurements (the machine may be shared) and prints medians."""
    import statistics

    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else cache_dir("bench")
    rounds = int(args[1]) if len(args) > 1 else 3
    path = write_random_wav2lip(directory)
    raw: dict[int, list[float]] = {}
    piped: dict[int, list[float]] = {1: [], 4: []}
    hist: dict[int, dict[int, int]] = {}
    ordered = True
    for _ in range(rounds):
        for batch, fps in measure_forward(path).items():
            raw.setdefault(batch, []).append(fps)
        for n in (1, 4):
            r = measure_sessions(path, sessions=n)
            piped[n].append(float(r["frames_per_second"]))  # type: ignore[arg-type]
            hist[n] = r["batch_histogram"]  # type: ignore[assignment]
            ordered = ordered and bool(r["in_order_and_complete"])
    best = max(statistics.median(v) for v in raw.values())
    for batch, values in raw.items():
        print(f"wav2lip forward, batch {batch:2d}: {statistics.median(values):6.1f} frames/s (median of {rounds})")
    for n, values in piped.items():
        fps = statistics.median(values)
        print(
            f"renderer batcher, {n} session(s): {fps:6.1f} frames/s = {100 * fps / best:.0f}% of best raw; "
            f"last batch sizes {hist[n]}"
        )
    print(f"every session's frames complete and in order: {ordered}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
