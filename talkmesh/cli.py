"""The `talkmesh` command: serve one service, run the whole mesh, speak, manage avatars, bench.

Every failure a user can cause (a mesh that is not running, a bad option, a missing file, an
output that cannot be written, a closed pipe, a busy port) ends with one line on stderr,
``error: ...``, and a non-zero exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from talkmesh.common.enums import choices
from talkmesh.common.faces import DEFAULT_SIDE, SMALL_FACE_PX
from talkmesh.common.registry import (
    NAMES,
    PORT_BASE_ENV,
    SERVICES,
    SIZE_PRESETS,
    spec,
)
from talkmesh.v1 import types_pb2

DEMO_TEXT = (
    "Hello, and welcome to talkmesh. I am a talking head, rendered on your own machine, while my voice "
    "is still being synthesized. Every word you hear travels through five small services: speech, "
    "audio features, rendering, encoding, and a gateway that streams the video back to you. "
    "Mouths close on the letters p, b and m, and rest during silence. Thanks for watching!"
)
#: ``say --container`` choices, and what an output file's extension implies when none is given.
CONTAINERS = choices(types_pb2.Container)
AUDIO_CODECS = choices(types_pb2.AudioCodec)
#: ``avatar add --framing`` choices (AvatarMeta.framing)
FRAMINGS = choices(types_pb2.Framing)
#: The option a user sets for a request field a service names in an error.
#: The command that lists what a NOT_FOUND's resource type names (its error points at it).
LIST_COMMAND = {"voice": "talkmesh voices", "avatar": "talkmesh avatar list"}
#: The fields of an avatar upload that are the file itself (its bytes, its name): `avatar add`'s
#: errors on them name the file given.
UPLOAD_FIELDS = ("data", "meta.filename")
OPTION_FOR_FIELD = {
    "voice": "--voice",
    "avatar_id": "--avatar",
    "size": "--size",
    "renderer_backend": "--backend",
    "backend": "--backend",
    "container": "--container",
    "audio_codec": "--audio-codec",
    "rate": "--rate",
    "pitch": "--pitch",
    "volume": "--volume",
    "text_format": "--markdown",
    "idle_motion": "--still",
    "text": "the text argument",
    "backends": "--backend",
    "face_index": "--face-index",
    "face_point": "--face-point",
    "framing": "--framing",
    # the encoder's limits on the frames the renderer makes, whose size --size (output.size) picks:
    # "native" keeps the avatar's, which may be larger than the encoder takes
    "width": "--size (output.size; e.g. --size 720p)",
    "height": "--size (output.size; e.g. --size 720p)",
}


#: The gateway's setting that limits a recording sent in one request (``say --audio``); a live
#: session's audio turns have no such limit.
RECORDING_LIMIT_KEY = "max_audio_seconds"


def _field_hint(field: str, args: argparse.Namespace | None) -> str:
    """What to do about a refusal no option of the command fixes (empty: nothing to add)."""
    if field == "audio.total_samples":  # the gateway's limit on one recording
        from talkmesh.common.registry import spec

        audio = getattr(args, "audio", None) if args is not None else None
        return (
            f"raise the gateway's {RECORDING_LIMIT_KEY} ({spec('gateway').env_name(RECORDING_LIMIT_KEY)}), "
            f"or use `talkmesh live --audio {audio if isinstance(audio, str) and audio else 'FILE'}`: "
            "a live session has no per-recording limit"
        )
    return ""


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


# -- serve / up / config -------------------------------------------------------------------------
def _warn_stray_overrides(warn: Callable[[str], None] | None = None) -> None:
    """One warning per ``TALKMESH_<X>__...`` variable that no service reads (a misspelt service,
    ``TALKMESH_RENDRER__...``), before the environment is used: `serve` logs them, `up` and
    `config` print them on stderr."""
    from talkmesh.common.config import stray_overrides

    for line in stray_overrides():
        if warn is not None:
            warn(line)
        else:
            print(f"warning: {line}", file=sys.stderr, flush=True)


def _serve(args: argparse.Namespace) -> int:
    import prometheus_client

    from talkmesh.common.logs import setup_logging
    from talkmesh.common.memory import tune_malloc_for_frames
    from talkmesh.common.server import ServiceHost
    from talkmesh.common.telemetry import Telemetry, tracer_provider_from_env
    from talkmesh.launcher import PARENT_PIPE_ENV, stop_with_parent

    if spec(args.service).raw_frames:
        # frame-sized buffers reused, not faulted in afresh (talkmesh/common/memory.py); first of
        # all: a thread that allocates before it (the parent pipe's below) gets an arena of its own
        tune_malloc_for_frames()
    stop_with_parent()  # started by a launcher (`talkmesh up`): never outlive it
    module = importlib.import_module(spec(args.service).main_module)
    config = module.load_config(args.config)
    setup_logging(args.service, config.server.log_level, config.server.log_json)
    if os.environ.get(PARENT_PIPE_ENV) is None:  # (`talkmesh up` warns once for all its services)
        _warn_stray_overrides(lambda line: logging.getLogger("talkmesh.config").warning("%s", line))
    # no ``*_created`` series beside every counter and histogram: a third of the series, unused
    # by the dashboards and rules (Prometheus knows a counter's resets without them)
    prometheus_client.disable_created_metrics()
    telemetry = Telemetry(args.service, tracer_provider=tracer_provider_from_env(args.service))

    async def run() -> None:
        # Built inside the running loop: grpc.aio channels and servers bind to the loop they are made in.
        service = module.create_service(config, telemetry)
        # The HTTP edge (web) hosts itself; gRPC services run in a ServiceHost.
        host = service if spec(args.service).protocol == "http" else ServiceHost(service, config.server)
        await host.run_until_signal()

    asyncio.run(run())
    return 0


def _config(args: argparse.Namespace) -> int:
    from talkmesh.common.config_yaml import config_to_yaml

    s = spec(args.service)
    module = importlib.import_module(s.main_module)
    if args.defaults:
        config = module.load_config(None, env={})
        where = "defaults"
    else:
        _warn_stray_overrides()
        config = module.load_config(args.config)
        where = "defaults" + (f" < {args.config}" if args.config else "") + f" < {s.env_prefix}__* environment"
    header = f"talkmesh {s.name}: effective configuration ({where})"
    sys.stdout.write(config_to_yaml(config, header=header, comments=not args.no_comments))
    return 0


#: ``up --api-keys`` without ``--pki`` (stderr, before the mesh starts).
UNPROTECTED_STAGES_WARNING = (
    "warning: --api-keys without --pki: the gateway checks API keys, but the stages behind it listen on "
    "{host} in plaintext, and any local process can call them directly, naming any key (even an admin's) "
    "in metadata; they refuse only calls that name none. Add --pki DIR (`talkmesh certs DIR`) for mutual "
    "TLS, which only the mesh's own certificates pass (docs/SECURITY.md)."
)


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _secure_env(args: argparse.Namespace) -> dict[str, str]:
    """``up --pki DIR``: mutual TLS with the certificates of `talkmesh certs DIR`; ``--api-keys FILE``:
    keys at the gateway, and the stages refuse calls that carry no key's principal. Without ``--pki``
    the stages' ports are plaintext: a warning on loopback, refused on any other address."""
    env: dict[str, str] = {}
    if args.pki:
        from talkmesh.devcerts import mesh_tls_env

        pki = Path(args.pki)
        if not (pki / "ca.crt").is_file():
            raise CliError(f"--pki {pki}: no ca.crt there; make the certificates with `talkmesh certs {pki}`")
        env.update(mesh_tls_env(pki.resolve()))
    if args.api_keys:
        if not Path(args.api_keys).is_file():
            raise CliError(f"--api-keys {args.api_keys}: no such file (make one with `talkmesh keys new NAME --file`)")
        if not args.pki:
            if not _is_loopback(args.host):
                raise CliError(
                    f"--api-keys without --pki on --host {args.host}: the stages would take calls from the "
                    "network naming any API key; add --pki DIR (`talkmesh certs DIR`) or serve on 127.0.0.1"
                )
            print(UNPROTECTED_STAGES_WARNING.format(host=args.host), file=sys.stderr, flush=True)
        env[spec("gateway").env_name("auth.api_keys_file")] = str(Path(args.api_keys).resolve())
        from talkmesh.devcerts import edge_key_env, principal_required_env

        env.update(edge_key_env())  # the web edge's own key (docs/WEB.md, "Security")
        env.update(principal_required_env())  # no principal, no service (talkmesh/common/principal.py)
    return env


async def _up(args: argparse.Namespace) -> int:
    from talkmesh.common.registry import check_port_base, port_base_from_env
    from talkmesh.common.server import BindError
    from talkmesh.launcher import Mesh

    try:
        base = port_base_from_env() if args.port_base is None else check_port_base(args.port_base)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    _warn_stray_overrides()
    mesh = Mesh(ephemeral=False, host=args.host, port_base=base, env=_secure_env(args))
    try:
        mesh.check_ports()
    except BindError as exc:
        raise CliError(f"{exc}; stop it, or move this mesh with `talkmesh up --port-base N`") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:  # the first stops the mesh in order; a second kills what is left
        if stop.is_set():
            mesh.kill()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal was closed
        loop.add_signal_handler(sig, on_signal)
    await mesh.start()
    code = 0
    try:
        for name, sp in mesh.processes.items():
            kind = "http" if spec(name).protocol == "http" else "grpc"
            print(f"{name:>15}  {kind} {sp.address}  metrics http://{args.host}:{sp.metrics_port}/metrics")
        key = f" (KEY: a key of {args.api_keys}, as `talkmesh keys new` printed it)" if args.api_keys else ""
        print(f"talkmesh is up: try `{up_hint(mesh.gateway, args.pki, args.api_keys)}`{key}")
        if "web" in mesh.processes:
            print(f"open http://{mesh.address('web')}/ in a browser to watch and talk to the avatar")
        print("Ctrl-C stops all services.", flush=True)
        stopping = asyncio.ensure_future(stop.wait())
        died = asyncio.ensure_future(mesh.wait_for_exit())
        try:
            await asyncio.wait({stopping, died}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            from talkmesh.common.aio import cancel_and_wait

            await cancel_and_wait(stopping, died)
        if died.done() and not died.cancelled() and died.exception() is None:
            print(f"error: {died.result().describe()}; stopping the mesh", file=sys.stderr, flush=True)
            code = 1
    finally:
        codes = await mesh.stop()
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print("stopped: " + ", ".join(f"{k}={v}" for k, v in codes.items()), flush=True)
    return code


def self_command() -> str:
    """How to run this `talkmesh` again from a shell here: ``talkmesh`` when PATH finds this one,
    else the path of the script next to this Python (a venv's ``.venv/bin/talkmesh``), else
    ``python -m talkmesh.cli``."""
    import shlex
    import shutil

    script = Path(sys.executable).parent / "talkmesh"
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m talkmesh.cli"
    found = shutil.which("talkmesh")
    if found and Path(found).resolve() == script.resolve():
        return "talkmesh"
    try:
        rel = os.path.relpath(script)
    except ValueError:
        rel = str(script)
    if rel.startswith(".."):
        rel = str(script)
    return shlex.quote(rel if os.sep in rel else f".{os.sep}{rel}")


def up_hint(gateway: str, pki: str = "", api_keys: str = "") -> str:
    """The `talkmesh say` command that reaches the mesh `up` started: its target when it is not on
    the default ports (the command is typed in another terminal, which may not have `up`'s
    $TALKMESH_PORT_BASE or $TALKMESH_TARGET), the CA when it serves TLS (--pki), an API key when it
    asks for one."""
    import shlex

    from talkmesh.client import TARGET_ENV
    from talkmesh.common.registry import default_target

    words = [] if gateway == default_target("gateway") else [f"{TARGET_ENV}={gateway}"]
    words += [self_command(), "say", '"Hello there"']
    if pki:
        words += ["--tls-ca", shlex.quote(str(Path(pki).resolve() / "ca.crt"))]
    if api_keys:
        words += ["--api-key", "KEY"]
    return " ".join([*words, "-o", "hello.mp4"])


# -- say / demo ----------------------------------------------------------------------------------
def check_output(path: Path) -> None:
    """CliError unless ``path`` can be written (before the mesh spends time on it)."""
    if str(path) == "-":  # not a file named "-" (the media is written atomically, to a file)
        raise CliError("-o -: the video goes to a file; give its name (e.g. -o out.mp4)")
    if path.is_dir():
        raise CliError(f"-o {path}: is a directory")
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CliError(f"-o {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CliError(f"-o {path}: permission denied")


def container_for(path: Path, container: str) -> str:
    """The container asked for, else the one the file name implies (a seekable MP4 by default)."""
    if container:
        return container
    return "mpegts" if path.suffix.lower() in (".ts", ".m2ts") else "mp4"


def _print_result(result: Any, container: str = "fmp4") -> None:
    s = result.summary
    if container == "mp4":
        print(f"whole file received after {result.total_seconds:.2f} s (seekable MP4, +faststart)")
    else:
        print(f"time to first fragment (client): {result.time_to_first_fragment * 1000:.0f} ms")
    print(
        f"audio {s.audio_seconds:.2f} s, {s.frames} frames, total {result.total_seconds:.2f} s "
        f"({s.audio_seconds / max(result.total_seconds, 1e-9):.1f}x real time), encoder {s.video_encoder}"
        + (f", voice {s.voice}" if s.voice else "")
    )
    print("per-stage timings (gateway view):")
    for st in s.stages:
        print(f"  {st.service:>8} {st.stage:<24} {st.seconds * 1000:8.1f} ms")
    for warning in s.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def client_for(args: argparse.Namespace) -> Any:
    """A TalkmeshClient for ``--target`` with the TLS and API-key flags (their env defaults otherwise)."""
    from talkmesh.client import TalkmeshClient

    return TalkmeshClient(args.target, tls=tls_from_args(args), api_key=getattr(args, "api_key", None))


def tls_from_args(args: argparse.Namespace) -> Any:
    """``ClientTLS`` from the --tls* flags; None (the env defaults) when none is given."""
    from talkmesh.common.channel import ClientTLS

    tls = ClientTLS(
        enabled=bool(getattr(args, "tls", False)),
        ca_file=getattr(args, "tls_ca", "") or "",
        cert_file=getattr(args, "tls_cert", "") or "",
        key_file=getattr(args, "tls_key", "") or "",
        server_name=getattr(args, "tls_server_name", "") or "",
    )
    if bool(tls.cert_file) != bool(tls.key_file):
        raise CliError("--tls-cert and --tls-key go together")
    return tls if tls.active else None


async def _say(args: argparse.Namespace) -> int:
    from talkmesh.live_cli import idle_motion

    out = Path(args.output)
    check_output(out)
    container = container_for(out, args.container)
    if args.text is not None and args.audio is not None:
        raise CliError("say: give a text to speak, or --audio FILE (your own speech), not both")
    if args.text is None and args.audio is None:
        raise CliError('say: nothing to speak: give a text (talkmesh say "Hello.") or --audio FILE (your own speech)')
    speech = None
    if args.audio is not None:
        from talkmesh.speech_file import SpeechFileError, read_speech

        try:
            speech = read_speech(args.audio)
        except SpeechFileError as exc:
            raise CliError(str(exc)) from None
    async with client_for(args) as client:
        options = {
            "avatar": args.avatar,  # an id or a name: the gateway resolves it
            "voice": args.voice,
            "size": args.size,
            "backend": args.backend,
            "container": CONTAINERS[container],
            "audio_codec": AUDIO_CODECS[args.audio_codec] if args.audio_codec else 0,
            "rate": args.rate,
            "pitch": args.pitch,
            "volume": args.volume,
            "idle_motion": idle_motion(args),
        }
        if args.markdown:
            options["markdown"] = True
        if speech is not None:
            result = await client.save(client.speak_audio(*speech, **options), out)
        else:
            result = await client.save(client.speak(args.text, **options), out)
    print(f"wrote {out} ({result.bytes_written} bytes, {result.mime_type})")
    _print_result(result, container)
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from talkmesh.client import TalkmeshClient
    from talkmesh.launcher import Mesh
    from talkmesh.v1 import encoder_pb2 as epb

    out = Path(args.output)
    check_output(out)
    log_dir = out.parent / "logs"
    print(f"starting the {len(SERVICES)} services ...", flush=True)
    async with Mesh(ephemeral=True, log_dir=log_dir) as mesh:
        print(f"gateway on {mesh.gateway}; speaking the demo paragraph ...", flush=True)
        async with TalkmeshClient(mesh.gateway) as client:
            # streamed as fragments (fMP4), as a player would receive it: the first one's arrival is
            # the latency the demo shows; the file they make plays in any player
            result = await client.speak_to_file(args.text, out, container=epb.CONTAINER_FMP4)
    print(f"wrote {out} ({result.bytes_written} bytes, fragmented MP4); service logs in {log_dir}/")
    _print_result(result, "fmp4")
    return 0


# -- avatars and voices --------------------------------------------------------------------------
class ProgressBar:
    """Upload progress, then the renderer's preparation progress (frames done of total)."""

    STAGES = {
        "received": "received",
        "decoding": "decoding",
        "faces": "face tracking",
        "framing": "framing the head and shoulders",
        "saving": "saving",
    }

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.sent = 0
        self.total = 0
        self.start = time.monotonic()
        self.uploaded_at = 0.0
        self.stage = ""
        self.done = 0
        self.of = 0
        self.frames = 0
        self.interactive = stream.isatty()

    def upload(self, sent: int, total: int) -> None:
        self.sent, self.total = sent, total
        if sent >= total and not self.uploaded_at:
            self.uploaded_at = time.monotonic()
        self.draw()

    def preparing(self, progress: Any) -> None:
        if not self.uploaded_at:
            self.uploaded_at = time.monotonic()
        self.stage, self.done, self.of = progress.stage, int(progress.done), int(progress.total)
        if self.stage == "faces":
            self.frames = self.of
        self.draw()

    def _bar(self, done: int, total: int) -> str:
        filled = int(self.width * done / total) if total else 0
        return f"[{'#' * filled}{'.' * (self.width - filled)}]"

    def line(self) -> str:
        if self.total and self.sent < self.total:
            return (
                f"uploading {self._bar(self.sent, self.total)} {100 * self.sent / self.total:3.0f}% "
                f"{self.sent / 1e6:.1f}/{self.total / 1e6:.1f} MB"
            )
        stage = self.STAGES.get(self.stage, self.stage.replace("backend:", "precompute for ") or "preparing")
        if self.stage in ("faces", "framing") and self.of:
            return f"preparing: {stage} {self._bar(self.done, self.of)} {self.done}/{self.of} frames"
        return f"preparing: {stage} ({time.monotonic() - (self.uploaded_at or self.start):.1f}s)"

    def draw(self) -> None:
        if self.interactive:
            self.stream.write("\r" + self.line().ljust(78))
            self.stream.flush()

    def close(self, ok: bool = True) -> None:
        if self.interactive:
            self.stream.write("\n")
        elif self.total and ok:
            frames = f", {self.frames} frame(s) analysed" if self.frames else ""
            self.stream.write(
                f"uploaded {self.total / 1e6:.1f} MB; prepared in "
                f"{time.monotonic() - (self.uploaded_at or self.start):.1f}s{frames}\n"
            )
        self.stream.flush()


async def _avatar(args: argparse.Namespace) -> int:
    async with client_for(args) as client:
        command = args.avatar_cmd
        if command == "add":
            path = Path(args.path)
            if path.is_dir():
                raise CliError(f"{path}: is a directory; give an image or a video file")
            if not path.is_file():
                raise CliError(f"{path}: no such file")
            bar = ProgressBar(sys.stderr)
            try:
                info = await client.register_avatar(
                    path,
                    name=args.name or "",
                    backends=tuple(args.backend or ()),
                    face_index=args.face_index,
                    face_point=args.face_point,
                    framing=FRAMINGS[args.framing],
                    progress=bar.upload,
                    preparing=bar.preparing,
                )
            except BaseException:
                bar.close(ok=False)
                raise
            bar.close()
            state = "already prepared" if info.cached else "prepared"
            print(f"{info.id}  {info.name}  {info.width}x{info.height}  {info.frame_count} frame(s)  ({state})")
            for line in face_lines(info, args.framing):
                print(line)
        elif command in ("list", "ls"):
            for a in await client.list_avatars():
                names, backends = ",".join(a.names or [a.name]), ",".join(a.backends)
                default = "  (default)" if a.default else ""
                print(f"{a.id}  {names}  {a.width}x{a.height}  {a.frame_count} frame(s)  {backends}{default}")
        elif command in ("rm", "delete", "remove"):
            avatar_id, name = await client.find_avatar(args.avatar)
            if not await client.delete_avatar(avatar_id, name=name):
                raise CliError(f"avatar {args.avatar!r} not found (see `talkmesh avatar list`)")
            if name and await _still_there(client, avatar_id):
                print(f"deleted the name {name!r}; avatar {avatar_id} keeps its other name(s)")
            else:
                print("deleted")
    return 0


async def _still_there(client: Any, avatar_id: str) -> bool:
    """Whether the avatar is still listed (``rm <name>`` removed only one of its names)."""
    return any(a.id == avatar_id for a in await client.list_avatars())


def face_lines(info: Any, framing: str = "auto") -> list[str]:
    """What `avatar add` says about the face analysis: where the face is, in the picture's pixels
    (those of --face-point; the stored frames' for an avatar prepared before the renderer reported
    them), and how sure the detector was; a face too small to see speak at the default size
    (talkmesh.common.faces, as the web page says it), with what to do; and for a video, on how many
    frames the face was found and what becomes of the others (FaceReport.frames_rejected).
    ``framing``: the --framing asked for (auto framing that kept the whole picture is not offered
    again)."""
    from talkmesh.common.faces import framing_note, small_face_hint

    lines = []
    framed = framing_note(info)
    if framed:
        lines.append(framed)
    box = list(info.face.box)
    if len(box) == 4 and info.width and info.height:
        shown = list(info.face.upload_box)
        where = "in the picture"
        if len(shown) != 4:
            shown, where = box, f"in the stored frames ({info.width}x{info.height})"
        lines.append(
            f"face {shown[2] - shown[0]:.0f}x{shown[3] - shown[1]:.0f} px at ({shown[0]:.0f}, {shown[1]:.0f}) "
            f"{where}, confidence {info.face.confidence:.2f}"
        )
        again = "or add it again with --framing auto (the server crops it)" if framing == "as_is" else ""
        hint = small_face_hint(info, or_frame=again)
        if hint:
            lines.append(f"  {hint}")
    kept, rejected = int(info.face.frames_kept), int(info.face.frames_rejected)
    if info.frame_count <= 1 or not kept + rejected:
        return lines
    lines.append(f"face found on {kept} of {kept + rejected} frame(s) ({rejected} rejected)")
    if rejected:
        lines.append(
            f"  the {rejected} frame(s) without a face are shown as they are, without lip-sync: the mouth "
            "does not move while the video passes them (trim them from the video to avoid it)"
        )
    return lines


async def _voices(args: argparse.Namespace) -> int:

    async with client_for(args) as client:
        voices = await client.list_voices()
    for line in voice_table(voices, header=sys.stdout.isatty()):
        print(line)
    return 0


def voice_table(voices: Any, *, header: bool = False) -> list[str]:
    """`talkmesh voices`: one line per voice (after a header on a terminal: a script reading the
    lines gets voices only), the columns as wide as their longest value; the default voice (the one
    a request without --voice speaks with) has "(default)" after its name. The first column is what
    --voice takes."""
    rows = [("VOICE (--voice)", "LANGUAGE", "ENGINE", "RATE", "NAME")] if header else []
    rows += [
        (v.id, v.language, v.engine, f"{v.sample_rate} Hz", v.name + ("  (default)" if v.default else ""))
        for v in voices
    ]
    widths = [max((len(r[i]) for r in rows), default=0) for i in range(4)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]


async def _live(args: argparse.Namespace) -> int:
    from talkmesh.live_cli import run

    return await run(args, args.target)


def _certs(args: argparse.Namespace) -> int:
    from talkmesh.devcerts import make_dev_pki

    out = Path(args.dir)
    make_dev_pki(out, NAMES, days=args.days)
    print(f"wrote a development CA and certificates for {', '.join(NAMES)} and client under {out}/")
    print(f"  e.g. TALKMESH_TTS__SERVER__TLS__CERT_FILE={out}/tts/tls.crt (see docs/SECURITY.md)")
    return 0


def _keys(args: argparse.Namespace) -> int:
    import yaml

    from services.gateway.auth import ROLES, hash_key, new_key, parse_keys

    if args.role not in ROLES:
        raise CliError(f"--role must be one of {', '.join(ROLES)}")
    key = new_key()
    entry: dict[str, Any] = {"name": args.name, "role": args.role, "sha256": hash_key(key)}
    if args.file:
        path = Path(args.file)
        data = (yaml.safe_load(path.read_text()) or {}) if path.exists() else {}
        data.setdefault("keys", [])
        data["keys"] = [k for k in data["keys"] if k.get("name") != args.name] + [entry]
        parse_keys(data, str(path))  # refuses to write a file the gateway would not load
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        print(f"added {args.name!r} ({args.role}) to {path}", file=sys.stderr)
    else:
        print(yaml.safe_dump({"keys": [entry]}, sort_keys=False), end="", file=sys.stderr)
    print(key)
    return 0


#: The comment `talkmesh token secret --next` puts above the secret it adds (--promote looks for it).
NEXT_MARK = "# next: accepted, not minting yet (talkmesh token secret FILE --promote)"


def _token(args: argparse.Namespace) -> int:
    """`talkmesh token secret FILE` / `talkmesh token new`: the web edge's access tokens
    (services.web.tokens; docs/WEB.md "Access tokens")."""
    from services.web import tokens

    if args.token_cmd == "secret":
        return _token_secret(args)
    try:
        secret = tokens.read_secrets(args.secret_file)[0]
        token = tokens.mint(
            secret,
            ttl_seconds=args.ttl,
            subject=args.subject,
            scopes=tuple(args.scope) if args.scope else None,
            sessions=tuple(args.session or ()),
        )
    except ValueError as exc:
        raise CliError(str(exc)) from None
    print(f"{args.page.split('#')[0]}#access_token={token}" if args.page else token)
    return 0


def _token_secret(args: argparse.Namespace) -> int:
    """A new secret first in the file; or, to rotate without a refused login (docs/WEB.md
    "Access tokens"), --next adds one the edges accept but nobody mints with, and once every edge
    has it, --promote makes it the one that mints (the old one, second, still verifies until its
    tokens expired)."""
    import os
    import tempfile

    from services.web import tokens

    path = Path(args.file)
    lines = path.read_text().splitlines() if path.exists() else []

    def secret_lines() -> list[int]:
        return [i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")]

    at = secret_lines()
    marked = [i for i, line in enumerate(lines) if line.strip() == NEXT_MARK]
    if args.promote:
        # the secret --next added (the line after its mark) goes first, once: a second
        # --promote finds no mark and changes nothing
        if not marked or marked[0] + 1 not in at:
            raise CliError(f"{path}: no secret waits to be promoted (add one with --next first)")
        promoted = lines[marked[0] + 1]
        del lines[marked[0] : marked[0] + 2]
        lines.insert(secret_lines()[0], promoted)
        said = "the new secret now mints; the one before still verifies (remove it once its tokens expired)"
    elif args.next and at:
        if marked:
            raise CliError(f"{path}: a secret already waits to be promoted (--promote it first)")
        lines[at[0] + 1 : at[0] + 1] = [NEXT_MARK, tokens.new_secret()]
        said = (
            "added a new secret after the first: once every edge has read it (within "
            f"{tokens.TOKEN_SECRETS_CHECK_SECONDS:g} s of a change; a Kubernetes Secret reaches its pods within "
            "about a minute), --promote it"
        )
    else:
        lines.insert(0, tokens.new_secret())
        said = "wrote a new secret first" + (f" ({len(at)} older one(s) still accepted)" if at else "")
    # written beside it and renamed over it: never half a file, and always mode 0600
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:  # (mkstemp makes it 0600)
            out.write("\n".join(lines) + "\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    print(f"{path}: {said}", file=sys.stderr)
    return 0


# -- arguments -----------------------------------------------------------------------------------
def _port_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None


def _ports_help(base: int | None, label: Callable[[int], str]) -> str:
    """The ports of the services in a mesh on block ``base`` (None: the defaults), from the
    registry, each written with ``label``: "gRPC a..b, HTTP c, metrics d..e"."""

    def span(ports: list[int]) -> str:
        first, last = label(ports[0]), label(ports[-1])
        return first if first == last else f"{first}..{last}"

    grpc_ports = sorted(s.ports(base)[0] for s in SERVICES if s.protocol == "grpc")
    http_ports = sorted(s.ports(base)[0] for s in SERVICES if s.protocol == "http")
    out = f"gRPC {span(grpc_ports)}"
    if http_ports:
        out += f", HTTP {span(http_ports)}"
    return out + f", metrics {span(sorted(s.ports(base)[1] for s in SERVICES))}"


def _face_index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a face index (0 = the largest face, 1 = the next...)")
    return value


def _image_point(text: str) -> tuple[float, float]:
    """``X,Y`` in pixels (fractions allowed, not negative)."""
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not X,Y (pixels, e.g. 320,200)") from None
    if not (x >= 0 and y >= 0):
        raise argparse.ArgumentTypeError(f"{text!r}: X and Y are pixels from the top-left corner, not negative")
    return x, y


def build_parser() -> argparse.ArgumentParser:
    from talkmesh.client import API_KEY_ENV, TARGET_ENV, TLS_ENV

    p = argparse.ArgumentParser(prog="talkmesh", description=__doc__.split("\n")[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", parents=[common], help="run one service in this process")
    s.add_argument("service", choices=NAMES)
    s.add_argument("--config", help="YAML file over the built-in defaults (see `talkmesh config <service>`)")

    c = sub.add_parser("config", parents=[common], help="print a service's effective configuration as YAML")
    c.add_argument("service", choices=NAMES)
    c.add_argument("--config", help="YAML file over the defaults, as `talkmesh serve --config` reads it")
    c.add_argument("--defaults", action="store_true", help="the built-in defaults only (no file, no environment)")
    c.add_argument("--no-comments", action="store_true", help="leave out the comments")

    u = sub.add_parser(
        "up",
        parents=[common],
        help=f"start all {len(SERVICES)} services ({', '.join(NAMES)}; default ports, or --port-base); "
        "Ctrl-C stops them",
    )
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument(
        "--port-base",
        type=_port_number,
        default=None,  # resolved in _up (registry.port_base_from_env), where a bad environment is one line
        help=f"ports {_ports_help(0, lambda o: f'BASE+{o}' if o else 'BASE')} "
        f"(default: ${PORT_BASE_ENV}, else {_ports_help(None, str)})",
    )
    u.add_argument("--pki", default="", help="mutual TLS on every hop with the certificates of `talkmesh certs DIR`")
    u.add_argument("--api-keys", default="", help="API keys file for the gateway (`talkmesh keys new`)")

    target = argparse.ArgumentParser(add_help=False, parents=[common])
    target.add_argument(
        "--target",
        default=None,  # resolved in main() (default_target()), where a bad environment is one line
        help=f"gateway address (default: ${TARGET_ENV}, else the local mesh's gateway: "
        f"the one `talkmesh up` starts, on ${PORT_BASE_ENV}'s block when set)",
    )
    target.add_argument(
        "--api-key", default=None, help=f"API key, sent as 'authorization: Bearer <key>' (default: ${API_KEY_ENV})"
    )
    target.add_argument("--tls", action="store_true", help=f"connect over TLS (default: ${TLS_ENV}=1)")
    target.add_argument(
        "--tls-ca", default="", help=f"CA bundle to verify the gateway (implies --tls; ${TLS_ENV}_CA_FILE)"
    )
    target.add_argument("--tls-cert", default="", help=f"client certificate for mutual TLS (${TLS_ENV}_CERT_FILE)")
    target.add_argument("--tls-key", default="", help=f"its private key (${TLS_ENV}_KEY_FILE)")
    target.add_argument(
        "--tls-server-name", default="", help="name the gateway's certificate carries, if not the target's host"
    )

    y = sub.add_parser("say", parents=[target], help="speak a text (or your own speech) and write the video to a file")
    y.add_argument("text", nargs="?", help="what the avatar says")
    y.add_argument(
        "--audio",
        metavar="FILE",
        help="your own speech instead of a text: the avatar says it, lip-synced (PCM WAV; MP3, M4A, Ogg... with PyAV)",
    )
    y.add_argument(
        "-o",
        "--output",
        default="out.mp4",
        help="write the video to this file (default: %(default)s; missing directories are created)",
    )
    y.add_argument("--avatar", default="", help="avatar name or id (default: the default avatar)")
    y.add_argument("--voice", default="", help="voice id, e.g. espeak:en-gb (see `talkmesh voices`)")
    y.add_argument("--size", default="", help=f"output size preset: {', '.join(SIZE_PRESETS)}")
    y.add_argument("--backend", default="", help=f"renderer backend: {', '.join(spec('renderer').backends)}")
    y.add_argument(
        "--container",
        choices=tuple(CONTAINERS),
        default="",
        help="mp4: one seekable file (+faststart; the default for .mp4 files); fmp4: fragments as streamed; "
        "mpegts (the default for .ts files)",
    )
    y.add_argument("--audio-codec", choices=tuple(AUDIO_CODECS), default="", help="default: aac")
    from talkmesh.common.names import VOICE_SETTING_RANGES

    for setting, what in (("rate", "speaking rate"), ("pitch", "pitch"), ("volume", "volume")):
        low, high = VOICE_SETTING_RANGES[setting]
        y.add_argument(
            f"--{setting}", type=float, default=0.0, help=f"{what}, x normal ({low:g}..{high:g}; 0 = default)"
        )
    y.add_argument(
        "--markdown", action="store_true", help="the text is Markdown (an LLM's reply): markup and emoji are not read"
    )
    from talkmesh.live_cli import STILL_HELP

    y.add_argument("--still", action="store_true", help=STILL_HELP)

    d = sub.add_parser("demo", parents=[common], help="start the mesh, speak a paragraph, write an MP4, stop")
    d.add_argument(
        "-o",
        "--output",
        default="out/demo.mp4",
        help="write the video to this file, the services' logs beside it in logs/ "
        "(default: %(default)s; missing directories are created)",
    )
    d.add_argument("--text", default=DEMO_TEXT)

    a = sub.add_parser("avatar", parents=[common], help="manage avatars")
    asub = a.add_subparsers(dest="avatar_cmd", required=True)
    add = asub.add_parser("add", parents=[target], help="register an image or video")
    add.add_argument("path")
    add.add_argument("--name")
    add.add_argument("--backend", action="append", help="also precompute for this backend")
    add.add_argument(
        "--face-index",
        type=_face_index,
        default=0,
        metavar="N",
        help="which face to animate when the picture shows several: 0 = the largest (default), 1 = the next...",
    )
    add.add_argument(
        "--face-point",
        type=_image_point,
        default=None,
        metavar="X,Y",
        help="or the face whose box contains this point: pixels of the picture as it is shown (after its "
        "EXIF rotation; for a video, of its first frame with a face), as `avatar add` prints the face's "
        "box; overrides --face-index",
    )
    add.add_argument(
        "--framing",
        choices=tuple(FRAMINGS),
        default="auto",
        help="auto (default): crop the picture to the head and shoulders when the face would be too small to see "
        f"it speak ({SMALL_FACE_PX} px in a {DEFAULT_SIDE}-pixel video; a phone photo of a whole person or a room); "
        "as_is: keep the whole picture; head_and_shoulders: always crop. For a video one box covers the face on "
        "every frame",
    )
    asub.add_parser(
        "list", aliases=["ls"], parents=[target], help="list the avatars: id, names, size, frames, backends"
    )
    rm = asub.add_parser(
        "rm",
        aliases=["delete", "remove"],
        parents=[target],
        help="delete an avatar by id, or one of its names by name (the avatar goes with its last name)",
    )
    rm.add_argument("avatar", metavar="avatar")

    sub.add_parser(
        "voices",
        parents=[target],
        help="list voices",
        description="List the voices: the first column is what --voice takes; (default) marks the one "
        "a request without --voice speaks with.",
        epilog="eSpeak's voices also speak in other registers, not listed: a variant after a '+', any case, "
        "e.g. espeak:en-us+f3 (female: f1 to f5; male: m1 to m8; whisper, croak, klatt and the other "
        "files of eSpeak's voices/!v). An unknown variant is NOT_FOUND naming the closest ones.",
    )

    lv = sub.add_parser(
        "live",
        parents=[target],
        help="a live session: type lines to speak; an empty line or Ctrl-C interrupts, Ctrl-C while idle quits",
        epilog="Exit status 1 if any message or turn was refused or failed, even when the session then ended normally.",
    )
    from talkmesh.live_cli import add_arguments as live_arguments

    live_arguments(lv)

    ce = sub.add_parser("certs", parents=[common], help="make a development CA and mutual-TLS certificates")
    ce.add_argument("dir", help="output directory (<dir>/<service>/tls.crt, tls.key, ca.crt)")
    ce.add_argument("--days", type=int, default=90, help="validity of the service certificates")
    k = sub.add_parser("keys", parents=[common], help="API keys for the gateway")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    kn = ksub.add_parser("new", parents=[common], help="make a key: prints it once; stores only its hash")
    kn.add_argument("name", help="the key's name (owner of its avatars; in logs)")
    kn.add_argument("--role", default="user", help="user (default) or admin")
    kn.add_argument("--file", help="add the hashed entry to this keys file (auth.api_keys_file)")
    t = sub.add_parser("token", parents=[common], help="access tokens for a web edge that others can reach")
    tsub = t.add_subparsers(dest="token_cmd", required=True)
    ts = tsub.add_parser(
        "secret", parents=[common], help="put a new random secret first in FILE (web.token_secret_file; mode 0600)"
    )
    ts.add_argument("file")
    order = ts.add_mutually_exclusive_group()
    order.add_argument("--next", action="store_true", help="add it second, marked # next: accepted, not yet minting")
    order.add_argument("--promote", action="store_true", help="make the secret --next added the one that mints")
    tn = tsub.add_parser("new", parents=[common], help="print a token signed with the first secret of --secret-file")
    tn.add_argument("--secret-file", required=True, help="the web edge's web.token_secret_file")
    tn.add_argument("--ttl", type=float, default=3600.0, help="seconds it stays valid (default %(default)g)")
    tn.add_argument("--subject", default="", help="who it is for (the sub claim, on the edge's traces)")
    from services.web.tokens import SCOPES

    tn.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        help="allow this (repeatable; default: speak, live and watch; avatars only when named)",
    )
    tn.add_argument(
        "--session",
        action="append",
        metavar="SESSION_ID",
        help="it may watch this live session whoever opened it (repeatable; the sessions claim)",
    )
    tn.add_argument("--page", default="", help="print the page's URL with the token (e.g. http://127.0.0.1:8080/)")
    dr = sub.add_parser(
        "doctor", parents=[common],
        help="check this node's GPU stack: driver, CUDA, ONNX Runtime providers, TensorRT, NVENC, model speed",
    )  # fmt: skip
    from talkmesh.doctor import add_arguments as doctor_arguments

    doctor_arguments(dr)

    b = sub.add_parser(
        "bench", parents=[common], help="measure latency, real-time factor and concurrency; append BENCHMARKS.md"
    )
    with contextlib.suppress(ImportError):
        from talkmesh.bench import add_arguments

        add_arguments(b)
    return p


# -- errors ---------------------------------------------------------------------------------------
def describe_rpc_error(exc: Any, target: str, args: argparse.Namespace | None = None) -> str:
    """One line for a failed call: the status, its message and the offending field or option (with
    ``args``, the command's: an option the user did not give is not said to have set the field)."""
    import grpc

    from talkmesh.client import TARGET_ENV, TLS_ENV
    from talkmesh.common.errors import ErrorDetails, named_by_a_stage, unreachable

    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE and "handshake failed" in details.lower():
        reason = details.rsplit(":", 2)[-2].strip() if details.count(":") >= 2 else details
        return (
            f"TLS handshake with the gateway at {target} failed ({reason}): check --tls-ca "
            f"({TLS_ENV}_CA_FILE), --tls-server-name, or whether the gateway serves TLS at all"
        )
    if unreachable(exc):
        return (
            f"cannot reach the gateway at {target}: is the mesh running? "
            f"Start it with `talkmesh up`, or point --target (or {TARGET_ENV}) at it"
            + ("" if "socket closed" not in details.lower() else "; if it serves TLS, add --tls or --tls-ca")
        )
    line = f"{code.name}: {details}"
    info = ErrorDetails.of(exc)
    field = info.field
    upload = getattr(args, "path", "") if getattr(args, "avatar_cmd", "") == "add" else ""
    if upload and field in UPLOAD_FIELDS:
        # the upload's bytes or name: said of the user's file ("me.jpg: no face found ..."), not of
        # the protocol's field ("renderer: data: ... (field data)")
        said = details.split(": ", 1)[1] if named_by_a_stage(details) else details
        said = said.removeprefix(f"{field}: ")
        name = Path(upload).name  # (the renderer may name it: "me.png is not a decodable image")
        line = f"{code.name}: {upload}" + (said[len(name) :] if said.startswith(f"{name} ") else f": {said}")
    elif field:
        option = OPTION_FOR_FIELD.get(field.rsplit(".", 1)[-1])
        flag = option.split()[0] if option else ""
        value = getattr(args, flag[2:].replace("-", "_"), None) if args is not None and flag.startswith("--") else None
        if option and value is not None and not isinstance(value, bool) and not value:
            # `say` without --voice: the service's default voice was refused, not a --voice
            line += f" (field {field}: the default {flag[2:].replace('-', ' ')}; choose one with {option})"
        else:
            line += f" (field {field}" + (f"; set by {option}" if option else "") + ")"
    elif info.resource_name:
        line += f" ({info.resource_type} {info.resource_name!r})"
    hint = _field_hint(field, args)
    if hint:
        line += f"; {hint}"
    if info.retry_delay:
        line = f"{line.removesuffix('; retry later')}; retry in {info.retry_delay:g} s"  # (said once)
    if code == grpc.StatusCode.NOT_FOUND and info.resource_type in LIST_COMMAND:
        line += f"; see `{LIST_COMMAND[info.resource_type]}`"
    return line


def describe_error(exc: BaseException, args: argparse.Namespace) -> str:
    import grpc

    from talkmesh.common.config import ConfigError
    from talkmesh.common.server import BindError
    from talkmesh.launcher import MeshError

    if isinstance(exc, grpc.aio.AioRpcError):
        return describe_rpc_error(exc, getattr(args, "target", ""), args)
    if isinstance(exc, CliError | BindError | MeshError):
        return str(exc)
    if isinstance(exc, ConfigError):
        return f"config: {exc}"
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"{exc.filename}: no such file or directory"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    if getattr(args, "cmd", "") == "serve":
        # a service that cannot start (a model refused, a file missing): its message says why; a
        # TalkmeshError's gRPC code says what kind (FAILED_PRECONDITION: a model, a setting)
        from talkmesh.common.errors import TalkmeshError

        if isinstance(exc, TalkmeshError):
            return f"{exc.code.name}: {exc}"
        if isinstance(exc, ValueError | OSError) and str(exc):
            # a message meant for users names its setting first ("whisper_encoder.path: ..."), or
            # comes from our own error types; anything else may be a bug: the traceback is one flag away
            import re

            ours = type(exc).__module__.startswith(("talkmesh.", "services.")) or re.match(r"[a-z_][\w. ]*: ", str(exc))
            return str(exc) if ours else f"{exc} (run with --debug for the traceback)"
    return f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"


def _default_target() -> str:
    """The clients' default target: ``$TALKMESH_TARGET``, else the local mesh's gateway."""
    from talkmesh.client import default_target

    try:
        return default_target()
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _closed_stdout() -> None:
    """After a broken pipe: stdout to /dev/null, so the interpreter's final flush stays quiet."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def run(args: argparse.Namespace) -> int:
    if args.cmd == "serve":
        return _serve(args)
    if args.cmd == "config":
        return _config(args)
    if args.cmd == "certs":
        return _certs(args)
    if args.cmd == "token":
        return _token(args)
    if args.cmd == "keys":
        return _keys(args)
    if args.cmd == "doctor":
        from talkmesh.doctor import run as run_doctor

        return run_doctor(args)
    if args.cmd == "bench":
        from talkmesh.bench import run as run_bench

        return run_bench(args)
    handlers = {"say": _say, "up": _up, "demo": _demo, "avatar": _avatar, "voices": _voices, "live": _live}
    return asyncio.run(handlers[args.cmd](args))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd != "bench" and "target" in args and args.target is None:
            # (a bench with no --target starts a mesh of its own)
            args.target = _default_target()
        code = run(args)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `talkmesh voices | head`: the reader has all it wanted. Quiet, as Unix tools are, with
        # the exit code of a process killed by SIGPIPE.
        _closed_stdout()
        if args.debug:
            raise
        return 128 + signal.SIGPIPE
    except Exception as exc:
        if args.debug:
            raise
        print(f"error: {describe_error(exc, args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # `python -m talkmesh.cli` (how the launcher starts services, and tests the command): run the
    # module as `talkmesh.cli`, so that what other modules import from it (CliError) is the same
    # class as here, not a second copy in `__main__`
    from talkmesh.cli import main as _main

    sys.exit(_main())
