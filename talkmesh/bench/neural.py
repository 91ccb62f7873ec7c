"""``talkmesh bench musetalk``: one Speak through the five-process mesh with the MuseTalk backend on
user-supplied model files (e.g. a real-size export with random weights), on any hardware.

A real-size MuseTalk frame takes tens of seconds on a CPU, so the run is one short request with an
optional frame cap (the call is cancelled after ``--frames`` video fragments, one per frame at the
default 40 ms fragments). It reports the time to the first fragment, the avatar's precompute (the
renderer logs it: VAE latents of the default avatar's crops, at start-up), frames per second, and the
renderer's peak resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from talkmesh.bench.report import git_revision, machine
from talkmesh.common.registry import spec

BACKEND = "musetalk"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-dir", required=True,
        help="directory with unet.onnx, vae_encoder.onnx, vae_decoder.onnx (python -m tools.export_musetalk; "
        "the feature stage takes the MuseTalk release they were exported for)",
    )  # fmt: skip
    p.add_argument(
        "--whisper-encoder", required=True, help="Whisper encoder ONNX (python -m tools.export_whisper_encoder)"
    )
    p.add_argument("--text", default="Hi.", help="what to say (keep it short on a CPU)")
    p.add_argument("--frames", type=int, default=0, help="stop after this many video frames (0: the whole request)")
    p.add_argument("--size", default="360p", help="output size preset")
    p.add_argument("--deadline", type=float, default=7200.0, help="the Speak call's deadline, seconds")
    p.add_argument("--start-timeout", type=float, default=1800.0, help="seconds each service may take to get ready")
    p.add_argument("--out-dir", default="docs/benchmarks", help="where the JSON goes ('' = none)")


@dataclass
class NeuralRun:
    """What one MuseTalk Speak through the mesh measured (seconds unless named otherwise)."""

    backend: str
    command: str
    git: str
    date: str
    machine: dict[str, object]
    model_dir: str
    model_bytes: int
    text: str
    frame_cap: int
    mesh_start_seconds: float = 0.0
    ttff_seconds: float = 0.0
    total_seconds: float = 0.0
    frames: int = 0
    completed: bool = False
    avatar_precompute_seconds: float = 0.0
    renderer_peak_rss_gib: float = 0.0
    fragment_times: list[float] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        """Frames over the whole call, first-fragment time included."""
        return self.frames / self.total_seconds if self.total_seconds > 0 else 0.0

    @property
    def steady_frames_per_second(self) -> float:
        """Frames after the first one, over the time after the first fragment."""
        t = self.fragment_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["frames_per_second"] = self.frames_per_second
        out["steady_frames_per_second"] = self.steady_frames_per_second
        return out

    def markdown(self) -> str:
        m = self.machine
        return "\n".join(
            [
                f"- Command: `{self.command}` (git {self.git}, {self.date})",
                f"- Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory')}, no GPU",
                f"- Models: `{self.model_dir}` ({self.model_bytes / 1e9:.2f} GB of ONNX files)",
                f"- Text: {self.text!r}; frame cap {self.frame_cap or 'none'}; "
                f"{'whole request' if self.completed else 'stopped at the cap'}",
                "- Mesh start (load and warm-up of every service, the default avatar's precompute): "
                f"{self.mesh_start_seconds:.1f} s",
                "- Avatar precompute (VAE latents of the default avatar, at start-up): "
                f"{self.avatar_precompute_seconds:.1f} s",
                f"- First fragment: {self.ttff_seconds:.1f} s",
                f"- Frames: {self.frames} in {self.total_seconds:.1f} s = {self.frames_per_second:.3f} frames/s "
                f"(after the first: {self.steady_frames_per_second:.3f} frames/s)",
                f"- Renderer peak RSS: {self.renderer_peak_rss_gib:.2f} GiB",
            ]
        )


def mesh_env(model_dir: Path, whisper_encoder: Path, avatar_cache: Path) -> dict[str, str]:
    """The services' environment for a MuseTalk mesh on these files (batch 1: a CPU gains nothing
    from batching a model this size, and warm-up runs each batch size once). A fresh avatar cache,
    so the avatar's precompute is measured (and not taken from a run with other model files). The
    feature stage's ``musetalk.version`` is the release the models were exported for (the launcher
    derives it from the renderer's config, as ``talkmesh up`` does)."""
    gateway, renderer, features = (spec(s).env_prefix for s in ("gateway", "renderer", "audio_features"))
    return {
        f"{gateway}__DEFAULT_RENDERER_BACKEND": BACKEND,
        f"{renderer}__BACKENDS": f"viseme,{BACKEND}",
        f"{renderer}__MUSETALK__PATH": str(model_dir),
        f"{renderer}__BATCH__MAX_SIZE": "1",
        f"{renderer}__AVATARS__CACHE_DIR": str(avatar_cache),
        f"{features}__WHISPER_ENCODER__PATH": str(whisper_encoder),
    }


def precompute_seconds(log_text: str, backend: str = BACKEND) -> float:
    """Seconds of the renderer's precompute of real avatars (not its warm-up one), from its log."""
    pattern = re.compile(rf"{backend} precompute of avatar (\S+): \d+ frame\(s\) in ([0-9.]+) s")
    return sum(float(m.group(2)) for m in pattern.finditer(log_text) if m.group(1) != "warmup")


def peak_rss_gib(pid: int) -> float:
    """The process's peak resident set (VmHWM), in GiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


async def bench(args: argparse.Namespace) -> NeuralRun:
    from talkmesh.bench.speakers import GrpcSpeaker
    from talkmesh.launcher import Mesh

    model_dir, encoder = Path(args.model_dir).expanduser(), Path(args.whisper_encoder).expanduser()
    if not model_dir.is_dir():
        raise SystemExit(f"--model-dir: {str(model_dir)!r} is not a directory")
    if not encoder.is_file():
        raise SystemExit(f"--whisper-encoder: {str(encoder)!r} is not a file")
    run = NeuralRun(
        backend=BACKEND,
        command="talkmesh bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]),
        git=git_revision(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=asdict(machine()),
        model_dir=str(model_dir),
        model_bytes=sum(f.stat().st_size for f in model_dir.iterdir() if f.is_file() and ".fp16." not in f.name),
        text=args.text,
        frame_cap=args.frames,
    )
    with tempfile.TemporaryDirectory() as logs:
        started = time.perf_counter()
        env = mesh_env(model_dir, encoder, Path(logs) / "avatars")
        async with Mesh(env=env, log_dir=Path(logs), start_timeout=args.start_timeout) as mesh:
            run.mesh_start_seconds = time.perf_counter() - started
            print(f"mesh ready in {run.mesh_start_seconds:.1f} s", file=sys.stderr, flush=True)
            speaker = GrpcSpeaker(mesh.gateway)
            try:
                await speak(speaker, args, run)
            finally:
                await speaker.close()
            renderer_log = (Path(logs) / "renderer.log").read_text(errors="replace")
            run.avatar_precompute_seconds = precompute_seconds(renderer_log)
            run.renderer_peak_rss_gib = peak_rss_gib(mesh.processes["renderer"].proc.pid)
    return run


async def speak(speaker: object, args: argparse.Namespace, run: NeuralRun) -> None:
    """One Speak, read until its summary or ``--frames`` fragments; fills the timings of ``run``."""
    from talkmesh.bench.speakers import GrpcSpeaker
    from talkmesh.client import TalkmeshClient

    assert isinstance(speaker, GrpcSpeaker)
    request = TalkmeshClient.request(args.text, size=args.size, backend=BACKEND, request_id="bench-musetalk")
    start = time.perf_counter()
    call = speaker.client.speak(request, timeout=args.deadline)  # the gateway's default (600 s) is too short
    async for chunk in call:
        kind = chunk.WhichOneof("kind")
        if kind == "media" and not chunk.media.init_segment and chunk.media.data:
            run.fragment_times.append(time.perf_counter() - start)
            print(f"fragment {len(run.fragment_times)} at {run.fragment_times[-1]:.1f} s", file=sys.stderr, flush=True)
            if args.frames and len(run.fragment_times) >= args.frames:
                break
        elif kind == "summary":
            run.completed = True
    run.total_seconds = time.perf_counter() - start
    cancel = getattr(call, "cancel", None)
    if cancel is not None:
        cancel()
    run.frames = len(run.fragment_times)
    run.ttff_seconds = run.fragment_times[0] if run.fragment_times else 0.0


def run(args: argparse.Namespace) -> int:
    result = asyncio.run(bench(args))
    print(result.markdown())
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"bench-{time.strftime('%Y%m%d-%H%M%S')}-{BACKEND}.json"
        path.write_text(json.dumps(result.to_dict(), indent=2))
        print(f"JSON: {path}")
    return 0
