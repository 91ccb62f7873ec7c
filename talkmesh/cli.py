"""The `talkmesh` command: serve one service, run the whole mesh, speak, manage avatars, bench."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from talkmesh.launcher import SERVICES, Mesh

DEMO_TEXT = (
    "Hello, and welcome to talkmesh. I am a talking head, rendered on your own machine, while my voice "
    "is still being synthesized. Every word you hear travels through five small services: speech, "
    "audio features, rendering, encoding, and a gateway that streams the video back to you. "
    "Mouths close on the letters p, b and m, and rest during silence. Thanks for watching!"
)


def _serve(args: argparse.Namespace) -> int:
    from talkmesh.common.logs import setup_logging
    from talkmesh.common.server import ServiceHost
    from talkmesh.common.telemetry import Telemetry, tracer_provider_from_env

    module = importlib.import_module(f"services.{args.service}.main")
    config = module.load_config(args.config)
    setup_logging(args.service, config.server.log_level, config.server.log_json)
    telemetry = Telemetry(args.service, tracer_provider=tracer_provider_from_env(args.service))

    async def run() -> None:
        # Built inside the running loop: grpc.aio channels and servers bind to the loop they are made in.
        host = ServiceHost(module.create_service(config, telemetry), config.server)
        await host.run_until_signal()

    asyncio.run(run())
    return 0


class ProgressBar:
    """Upload progress, then an elapsed-time line while the renderer prepares the avatar."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.sent = 0
        self.total = 0
        self.start = time.monotonic()
        self.uploaded_at = 0.0
        self.interactive = stream.isatty()

    def upload(self, sent: int, total: int) -> None:
        self.sent, self.total = sent, total
        if sent >= total:
            self.uploaded_at = time.monotonic()
        self.tick()

    def tick(self) -> None:
        if not self.total:
            return
        if self.sent < self.total:
            filled = int(self.width * self.sent / self.total)
            line = (
                f"uploading [{'#' * filled}{'.' * (self.width - filled)}] {100 * self.sent / self.total:3.0f}% "
                f"{self.sent / 1e6:.1f}/{self.total / 1e6:.1f} MB"
            )
        else:
            line = f"uploaded {self.total / 1e6:.1f} MB; preparing (face tracking, masks) {self._since():.1f}s"
        if self.interactive:
            self.stream.write("\r" + line.ljust(78))
            self.stream.flush()

    def _since(self) -> float:
        return time.monotonic() - (self.uploaded_at or self.start)

    def close(self) -> None:
        if self.interactive:
            self.stream.write("\n")
        elif self.total:
            self.stream.write(f"uploaded {self.total / 1e6:.1f} MB; prepared in {self._since():.1f}s\n")
        self.stream.flush()


def _print_result(result: object) -> None:
    from talkmesh.client import SpeakResult

    assert isinstance(result, SpeakResult)
    s = result.summary
    print(f"time to first fragment (client): {result.time_to_first_fragment * 1000:.0f} ms")
    print(
        f"audio {s.audio_seconds:.2f} s, {s.frames} frames, total {result.total_seconds:.2f} s "
        f"({s.audio_seconds / max(result.total_seconds, 1e-9):.1f}x real time), encoder {s.video_encoder}"
    )
    print("per-stage timings (gateway view):")
    for st in s.stages:
        print(f"  {st.service:>8} {st.stage:<24} {st.seconds * 1000:8.1f} ms")


async def _say(args: argparse.Namespace) -> int:
    from talkmesh.client import TalkmeshClient

    async with TalkmeshClient(args.target) as client:
        result = await client.speak_to_file(
            args.text, args.output, avatar=args.avatar, voice=args.voice, size=args.size, backend=args.backend
        )
    print(f"wrote {args.output} ({result.bytes_written} bytes, {result.mime_type})")
    _print_result(result)
    return 0


async def _up(args: argparse.Namespace) -> int:
    mesh = Mesh(ephemeral=False, host=args.host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await mesh.start()
    try:
        for name, sp in mesh.processes.items():
            print(f"{name:>15}  grpc {sp.address}  metrics http://{args.host}:{sp.metrics_port}/metrics")
        print(f'talkmesh is up: try `talkmesh say "Hello there" -o hello.mp4 --target {mesh.gateway}`')
        print("Ctrl-C stops all services.")
        await stop.wait()
    finally:
        codes = await mesh.stop()
        print("stopped: " + ", ".join(f"{k}={v}" for k, v in codes.items()))
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from talkmesh.client import TalkmeshClient

    out = Path(args.output)
    log_dir = out.parent / "logs"
    print("starting the five services ...", flush=True)
    async with Mesh(ephemeral=True, log_dir=log_dir) as mesh:
        print(f"gateway on {mesh.gateway}; speaking the demo paragraph ...", flush=True)
        async with TalkmeshClient(mesh.gateway) as client:
            result = await client.speak_to_file(args.text, out)
    print(f"wrote {out} ({result.bytes_written} bytes); service logs in {log_dir}/")
    _print_result(result)
    return 0


async def _avatar(args: argparse.Namespace) -> int:
    from talkmesh.client import TalkmeshClient

    async with TalkmeshClient(args.target) as client:
        if args.avatar_cmd == "add":
            bar = ProgressBar(sys.stderr)
            task = asyncio.create_task(
                client.register_avatar(
                    args.path, name=args.name or "", backends=tuple(args.backend or ()), progress=bar.upload
                )
            )
            try:
                while not task.done():  # after the upload: an elapsed-time line while the service prepares
                    bar.tick()
                    await asyncio.wait({task}, timeout=0.2)
            finally:
                bar.close()
            info = task.result()
            state = "already prepared" if info.cached else "prepared"
            print(f"{info.id}  {info.name}  {info.width}x{info.height}  {info.frame_count} frame(s)  ({state})")
        elif args.avatar_cmd == "list":
            for a in await client.list_avatars():
                print(f"{a.id}  {a.name}  {a.width}x{a.height}  {a.frame_count} frame(s)  {','.join(a.backends)}")
        elif args.avatar_cmd == "rm":
            print("deleted" if await client.delete_avatar(args.avatar_id) else "not found")
    return 0


async def _voices(args: argparse.Namespace) -> int:
    from talkmesh.client import TalkmeshClient

    async with TalkmeshClient(args.target) as client:
        for v in await client.list_voices():
            print(f"{v.id:<28} {v.language:<8} {v.engine:<8} {v.sample_rate} Hz  {v.name}")
    return 0


async def _live(args: argparse.Namespace) -> int:
    from talkmesh.live_cli import run

    return await run(args, args.target)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="talkmesh", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run one service in this process")
    s.add_argument("service", choices=SERVICES)
    s.add_argument("--config", help="YAML config file (defaults: services/<name>/config.yaml)")

    u = sub.add_parser("up", help="start all five services on their default ports; Ctrl-C stops them")
    u.add_argument("--host", default="127.0.0.1")

    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("--target", default="127.0.0.1:50051", help="gateway address")

    y = sub.add_parser("say", parents=[target], help="speak a text and write the streamed video")
    y.add_argument("text")
    y.add_argument("-o", "--output", default="out.mp4")
    y.add_argument("--avatar", default="")
    y.add_argument("--voice", default="")
    y.add_argument("--size", default="", help="360p, 480p, 512, 720p or native")
    y.add_argument("--backend", default="", help="renderer backend: viseme, wav2lip, musetalk")

    d = sub.add_parser("demo", help="start the mesh, speak a paragraph, write an MP4, stop")
    d.add_argument("-o", "--output", default="out/demo.mp4")
    d.add_argument("--text", default=DEMO_TEXT)

    a = sub.add_parser("avatar", help="manage avatars")
    asub = a.add_subparsers(dest="avatar_cmd", required=True)
    add = asub.add_parser("add", parents=[target], help="register an image or video")
    add.add_argument("path")
    add.add_argument("--name")
    add.add_argument("--backend", action="append", help="also precompute for this backend")
    asub.add_parser("list", parents=[target])
    rm = asub.add_parser("rm", parents=[target])
    rm.add_argument("avatar_id")

    sub.add_parser("voices", parents=[target], help="list voices")

    lv = sub.add_parser("live", parents=[target], help="a live session: type lines to speak, empty line interrupts")
    from talkmesh.live_cli import add_arguments as live_arguments

    live_arguments(lv)

    b = sub.add_parser("bench", help="measure latency, real-time factor and concurrency; append BENCHMARKS.md")
    with contextlib.suppress(ImportError):
        from talkmesh.bench import add_arguments

        add_arguments(b)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd == "serve":
        return _serve(args)
    if args.cmd == "bench":
        from talkmesh.bench import run

        return run(args)
    handlers = {"say": _say, "up": _up, "demo": _demo, "avatar": _avatar, "voices": _voices, "live": _live}
    try:
        return asyncio.run(handlers[args.cmd](args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error for the command line
        import grpc

        if isinstance(exc, grpc.aio.AioRpcError):
            print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
