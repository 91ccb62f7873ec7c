"""The default mode: Speak through the mesh (five processes, or ``--target``), the same stages
in one process as a yardstick, and each service's micro-benchmark; checked against the targets."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

from talkmesh.bench.components import run_components
from talkmesh.bench.metrics import process_cpu_clock_seconds, process_cpu_seconds, renderer_metrics, stream_bytes
from talkmesh.bench.report import git_revision, machine, write_report
from talkmesh.bench.results import BenchReport, FirstFragmentCpu, SpeakerRun
from talkmesh.bench.series import first_fragment_cpu, run_speaker
from talkmesh.bench.speakers import GrpcSpeaker, InProcessSpeaker
from talkmesh.bench.targets import check_targets
from talkmesh.bench.workload import Workload
from talkmesh.common.registry import DEFAULT_RENDERER_BACKEND, spec


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", help="bench an already running gateway instead of starting a mesh")
    p.add_argument("--requests", type=int, default=30, help="sequential requests for the latency figures")
    p.add_argument("--concurrency", default="1,2,4,8,12,16", help="concurrency levels of the sweep")
    p.add_argument("--backend", default=DEFAULT_RENDERER_BACKEND, choices=("viseme", "wav2lip"))
    p.add_argument("--size", default="512", help="output size preset: 360p, 512, 720p, ...")
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process yardstick")
    p.add_argument("--no-components", action="store_true", help="skip the per-service micro-benchmarks")
    p.add_argument("--quick", action="store_true", help="few requests, small sweep (smoke test)")
    add_output_arguments(p)
    p.add_argument("--model-dir", default="", help="where the random-weight Wav2Lip model is kept")


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out-dir", default="docs/benchmarks", help="where the JSON and the PNG plot go")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="file to append the results to ('' = none)")


#: requests of each side in the CPU-to-first-fragment series (``--quick``: 4)
FIRST_FRAGMENT_CPU_REQUESTS = 20


def workload(args: argparse.Namespace) -> Workload:
    levels = tuple(int(x) for x in args.concurrency.split(",") if x.strip())
    if args.quick:
        return Workload(args.backend, args.size, min(args.requests, 5), (1, 2))
    return Workload(args.backend, args.size, args.requests, levels)


def model_dir(args: argparse.Namespace) -> Path:
    return Path(args.model_dir or Path(tempfile.gettempdir()) / "talkmesh-bench-models")


def mesh_env(backend: str, models: Path) -> dict[str, str]:
    """Environment of the mesh's services for ``backend`` (a random-weight Wav2Lip if asked)."""
    gateway, renderer = spec("gateway").env_prefix, spec("renderer").env_prefix
    env = {f"{gateway}__DEFAULT_RENDERER_BACKEND": backend}
    if backend == "wav2lip":
        from talkmesh.bench.stages.models import write_random_wav2lip

        env[f"{renderer}__WAV2LIP__PATH"] = str(write_random_wav2lip(models))
        env[f"{renderer}__BACKENDS"] = "viseme,wav2lip"
    return env


async def bench(args: argparse.Namespace) -> BenchReport:
    from talkmesh.launcher import Mesh

    work = workload(args)
    models = model_dir(args)
    env = mesh_env(work.backend, models)
    command = "talkmesh bench " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    metrics = None
    mesh_run: SpeakerRun
    yardstick_cpu: FirstFragmentCpu | None = None
    # The in-process yardstick runs next to the mesh: its latency series is alternated with the
    # mesh's request by request (the ratio target compares them), the rest of its run follows.
    inprocess = None if args.no_inprocess else await InProcessSpeaker.start({**os.environ, **env})
    try:
        if args.target:
            speaker = GrpcSpeaker(args.target)
            try:
                mesh_run = await run_speaker(speaker, work, "mesh", sweep=True, yardstick=inprocess)
            finally:
                await speaker.close()
        else:
            with tempfile.TemporaryDirectory() as logs:
                async with Mesh(env=env, log_dir=Path(logs)) as mesh:
                    speaker = GrpcSpeaker(mesh.gateway)
                    pids = {name: sp.proc.pid for name, sp in mesh.processes.items()}

                    urls = {name: mesh.metrics_url(name) for name in pids}

                    def cpu() -> dict[str, float]:
                        return {name: process_cpu_seconds(pid) for name, pid in pids.items()}

                    def wire() -> dict[str, float]:
                        return stream_bytes(urls)

                    stages = {name: pid for name, pid in pids.items() if spec(name).protocol == "grpc"}

                    def stage_cpu() -> dict[str, float]:
                        return {name: process_cpu_clock_seconds(pid) for name, pid in stages.items()}

                    def own_cpu() -> dict[str, float]:
                        return {"in-process": process_cpu_clock_seconds(os.getpid())}

                    try:
                        mesh_run = await run_speaker(
                            speaker, work, "mesh", sweep=True, cpu=cpu, wire=wire, yardstick=inprocess
                        )
                        if inprocess is not None:
                            n = 4 if args.quick else FIRST_FRAGMENT_CPU_REQUESTS
                            print(f"[mesh] CPU to the first fragment: {n} requests ...", flush=True)
                            mesh_run.first_fragment_cpu, yardstick_cpu = await first_fragment_cpu(
                                speaker, stage_cpu, inprocess, own_cpu, work, n
                            )
                    finally:
                        await speaker.close()
                    metrics = await asyncio.to_thread(renderer_metrics, mesh.metrics_url("renderer"))
        report = BenchReport(
            machine=machine(),
            command=command,
            git=git_revision(),
            date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            backend=work.backend,
            size=work.size,
            mesh=mesh_run,
            renderer_metrics=metrics,
        )
        if inprocess is not None:
            report.inprocess = await run_speaker(
                inprocess, work, "in-process", sweep=False, latency=mesh_run.yardstick_latency
            )
            report.inprocess.first_fragment_cpu = yardstick_cpu
            compare_with_inprocess(report)
    finally:
        if inprocess is not None:
            await inprocess.close()
    if not args.no_components:
        wav2lip = None
        if work.backend == "wav2lip":
            from talkmesh.bench.stages.models import write_random_wav2lip

            wav2lip = write_random_wav2lip(models)
        report.components = await run_components(args.quick, models, wav2lip)
    report.targets = check_targets(report)
    return report


def compare_with_inprocess(report: BenchReport) -> None:
    """Fills the mesh's overhead against the in-process yardstick."""
    assert report.inprocess is not None
    mesh4 = report.mesh.row(4)
    in4 = report.inprocess.concurrency[0]
    if mesh4:
        m, i = mesh4.aggregate_audio_seconds_per_second, in4.aggregate_audio_seconds_per_second
        report.mesh_overhead_pct = 100.0 * (i - m) / i if i > 0 else float("nan")
    report.single_stream_overhead_pct = 100.0 * (
        1 - report.mesh.single_stream.rtf_median / report.inprocess.single_stream.rtf_median
    )


def run(args: argparse.Namespace) -> int:
    report = asyncio.run(bench(args))
    written = write_report(report, Path(args.out_dir), Path(args.markdown) if args.markdown else None)
    print(written.markdown)
    print(f"JSON: {written.json_path}" + (f"   plot: {written.plot_path}" if written.plot_path else ""))
    return 0
