"""Benchmark of the feature stage: throughput (x real time) and added look-ahead latency per type.

    python -m talkmesh.bench.stages.audio_features --seconds 10 --encoder whisper-tiny-encoder.onnx

``run_bench`` is what ``talkmesh bench`` calls. It drives ``FeatureStream`` directly (no gRPC), so
the figures are the stage's own cost:

* ``realtime_factor``: audio seconds processed per wall-clock second, audio pushed in ``chunk_ms``
  chunks (a TTS engine's typical chunk) and flushed at the end;
* ``lookahead_ms_max`` / ``lookahead_ms_mean``: how much audio past the end of a video frame had to
  arrive before that frame left (source clock; 1 ms chunks, also cut at every frame end, on the first
  seconds; frames flushed at end of stream excluded). It includes the resampler's delay when the input
  is not 16 kHz.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.audio_features.backends.base import WhisperEncoder
from services.audio_features.config import WhisperEncoderConfig
from services.audio_features.streaming import (
    EmbeddingGeometry,
    FeatureKind,
    FeatureStream,
    StreamOptions,
)
from talkmesh.common.clock import fps_fraction, frame_start_sample

ALL_KINDS = (
    FeatureKind.ACTIVITY,
    FeatureKind.WHISPER_LOG_MEL,
    FeatureKind.WAV2LIP_MEL,
    FeatureKind.WHISPER_EMBEDDING,
)


def speech_signal(sample_rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Deterministic speech-like audio: a harmonic voice at syllable rate with noise and pauses."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    f0 = 120.0 + 25.0 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0.0, None)
    x = 0.2 * voice * envelope + 0.01 * rng.standard_normal(len(t))
    x[(t % 2.0) > 1.7] = 0.0
    return (np.round(np.clip(x, -1, 1) * 32767) / 32768).astype(np.float32)


def _stream(
    kind: str, sample_rate: int, fps: float, encoder: WhisperEncoder | None, geometry: EmbeddingGeometry | None
) -> FeatureStream:
    return FeatureStream(StreamOptions(kind, fps_fraction(fps), sample_rate), encoder, geometry)


def _throughput(stream: FeatureStream, x: np.ndarray, chunk: int) -> dict[str, float]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    frames = 0
    for start in range(0, len(x), chunk):
        frames += len(stream.push(x[start : start + chunk]))
    frames += len(stream.finish())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    audio = len(x) / stream.options.sample_rate
    return {
        "realtime_factor": round(audio / wall, 1) if wall > 0 else float("inf"),
        "wall_seconds": round(wall, 4),
        "cpu_seconds": round(cpu, 4),
        "frames": frames,
    }


def _lookahead(stream: FeatureStream, x: np.ndarray) -> dict[str, float]:
    sr = stream.options.sample_rate
    fps = stream.options.fps
    # 1 ms steps, plus a cut at every frame end so zero look-ahead measures as zero
    cuts = set(range(0, len(x), max(1, sr // 1000)))
    i = 1
    while (end := frame_start_sample(i, sr, fps)) < len(x):
        cuts.add(end)
        i += 1
    bounds = [*sorted(cuts), len(x)]
    waits = []
    for start, received in itertools.pairwise(bounds):
        for frame in stream.push(x[start:received]):
            waits.append(received - frame_start_sample(frame.index + 1, sr, fps))
    ms = np.asarray(waits, dtype=np.float64) * 1000.0 / sr
    return {
        "lookahead_ms_max": round(float(ms.max()), 2) if len(ms) else float("nan"),
        "lookahead_ms_mean": round(float(ms.mean()), 2) if len(ms) else float("nan"),
    }


def run_bench(
    seconds: float = 10.0,
    sample_rate: int = 24000,
    fps: float = 25.0,
    chunk_ms: float = 20.0,
    kinds: Sequence[str] = ALL_KINDS,
    encoder: WhisperEncoder | None = None,
    encoder_path: str | None = None,
    encoder_config: WhisperEncoderConfig | None = None,
    lookahead_seconds: float = 3.0,
) -> dict[str, Any]:
    """Measures every feature type on ``seconds`` of synthetic speech; returns a JSON-able dict.

    The Whisper embedding needs an encoder (``encoder`` or an ONNX ``encoder_path``); without one
    its entry says why it was skipped.
    """
    cfg = encoder_config or WhisperEncoderConfig(path=encoder_path or "")
    if encoder is None and cfg.path and FeatureKind.WHISPER_EMBEDDING in kinds:
        from services.audio_features.backends import create_encoder

        encoder = create_encoder(cfg)
    geometry = None
    if encoder is not None:
        geometry = EmbeddingGeometry(
            cfg.block_frames, cfg.left_frames, cfg.right_frames, encoder.output_frames, fill=cfg.future_fill
        )
        geometry.validate()
        encoder.encode(np.full((1, 80, encoder.input_frames), -1.5, dtype=np.float32))  # warm-up
    x = speech_signal(sample_rate, seconds)
    chunk = max(1, round(sample_rate * chunk_ms / 1000.0))
    results: dict[str, Any] = {}
    for kind in kinds:
        if kind == FeatureKind.WHISPER_EMBEDDING and encoder is None:
            results[kind] = {"skipped": "no Whisper encoder (pass encoder_path=<exported .onnx>)"}
            continue
        entry: dict[str, Any] = _throughput(_stream(kind, sample_rate, fps, encoder, geometry), x, chunk)
        head = x[: int(sample_rate * min(seconds, lookahead_seconds))]
        entry.update(_lookahead(_stream(kind, sample_rate, fps, encoder, geometry), head))
        if kind == FeatureKind.WHISPER_EMBEDDING and encoder is not None:
            entry.update(
                encoder=encoder.name,
                provider=encoder.provider,
                block_seconds=cfg.block_seconds,
                left_context_seconds=cfg.left_context_seconds,
                right_context_seconds=cfg.right_context_seconds,
                future_fill=cfg.future_fill,
                encoder_runs_per_audio_second=round(50 / cfg.block_frames, 2),
            )
        results[kind] = entry
    return {
        "service": "audio_features",
        "audio_seconds": round(len(x) / sample_rate, 3),
        "sample_rate": sample_rate,
        "fps": fps,
        "chunk_ms": chunk_ms,
        "features": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="audio features benchmark")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sample-rate", type=int, default=24000)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--chunk-ms", type=float, default=20.0)
    parser.add_argument("--encoder", default="", help="exported Whisper encoder .onnx")
    parser.add_argument("--block-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    cfg = WhisperEncoderConfig(path=args.encoder, block_seconds=args.block_seconds)
    print(json.dumps(run_bench(args.seconds, args.sample_rate, args.fps, args.chunk_ms, encoder_config=cfg), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
