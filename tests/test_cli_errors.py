"""The command line fails with one line on stderr and a non-zero code, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2

from talkmesh.cli import build_parser, describe_rpc_error
from talkmesh.common.errors import NotFound, status_trailer
from talkmesh.common.registry import spec


def run_cli(*args: str, env: Mapping[str, str | None] | None = None, timeout: float = 60) -> tuple[int, str, str]:
    """Runs the command; ``env`` adds variables to this process's environment (None removes one)."""
    merged = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "talkmesh.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={k: v for k, v in merged.items() if v is not None},
    )
    return proc.returncode, proc.stdout, proc.stderr


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something listens on (the socket a running mesh would hold)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_mesh_that_is_not_running_is_one_line(closed_port: int) -> None:
    code, _, err = run_cli("voices", "--target", f"127.0.0.1:{closed_port}")
    assert code == 1
    line = one_error_line(err)
    assert f"cannot reach the gateway at 127.0.0.1:{closed_port}" in line and "talkmesh up" in line
    assert "point --target (or TALKMESH_TARGET) at it" in line


def test_clients_read_the_target_from_talkmesh_target(closed_port: int) -> None:
    code, _, err = run_cli("avatar", "list", env={"TALKMESH_TARGET": f"127.0.0.1:{closed_port}"})
    assert code == 1
    assert f"127.0.0.1:{closed_port}" in one_error_line(err)
    # --target wins over the environment
    code, _, err = run_cli("voices", "--target", "127.0.0.1:1", env={"TALKMESH_TARGET": f"127.0.0.1:{closed_port}"})
    assert "127.0.0.1:1:" in one_error_line(err)


def test_clients_dial_the_mesh_of_talkmesh_port_base(closed_port: int) -> None:
    """`TALKMESH_PORT_BASE=B talkmesh up` puts the gateway on B; the clients find it there."""
    for cmd in (["voices"], ["avatar", "list"], ["say", "Hi", "-o", os.devnull]):
        code, _, err = run_cli(*cmd, env={"TALKMESH_TARGET": None, "TALKMESH_PORT_BASE": str(closed_port)})
        assert code == 1
        assert f"cannot reach the gateway at 127.0.0.1:{closed_port}" in one_error_line(err), cmd
    code, _, err = run_cli("voices", env={"TALKMESH_TARGET": None, "TALKMESH_PORT_BASE": "many"})
    assert code == 1 and "TALKMESH_PORT_BASE" in one_error_line(err)
    # `up` and the clients read it the same way, with the same checks
    for cmd in (["up"], ["voices"]):
        for value, problem in (("many", "'many' is not a port number"), ("65530", "65530 is outside 1024..65515")):
            code, _, err = run_cli(*cmd, env={"TALKMESH_TARGET": None, "TALKMESH_PORT_BASE": value})
            assert (code, one_error_line(err)) == (1, f"error: $TALKMESH_PORT_BASE: {problem}"), (cmd, value)
    code, _, err = run_cli("up", "--port-base", "80", env={"TALKMESH_PORT_BASE": "many"})  # the option wins
    assert (code, one_error_line(err)) == (1, "error: --port-base: 80 is outside 1024..65515")
    # TALKMESH_TARGET still wins
    code, _, err = run_cli("voices", env={"TALKMESH_TARGET": "127.0.0.1:1", "TALKMESH_PORT_BASE": str(closed_port)})
    assert "127.0.0.1:1:" in one_error_line(err)


def test_debug_shows_the_traceback(closed_port: int) -> None:
    code, _, err = run_cli("--debug", "voices", "--target", f"127.0.0.1:{closed_port}")
    assert code != 0 and "Traceback" in err
    code, _, err = run_cli("voices", "--debug", "--target", f"127.0.0.1:{closed_port}")
    assert code != 0 and "Traceback" in err


def test_a_bad_output_path_is_one_line_before_any_work(tmp_path: Path, closed_port: int) -> None:
    target = ("--target", f"127.0.0.1:{closed_port}")  # nothing listens: the path is checked first
    code, _, err = run_cli("say", "Hi.", "-o", str(tmp_path), *target)
    assert code == 1 and one_error_line(err) == f"error: -o {tmp_path}: is a directory"
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    code, _, err = run_cli("say", "Hi.", "-o", str(a_file / "out.mp4"), *target)
    assert code == 1 and "is not a directory" in one_error_line(err)
    code, _, err = run_cli("say", "Hi.", "-o", "-", *target)  # not a file named "-"
    assert code == 1 and one_error_line(err) == "error: -o -: the video goes to a file; give its name (e.g. -o out.mp4)"


def test_a_missing_input_file_is_one_line(tmp_path: Path, closed_port: int) -> None:
    code, _, err = run_cli("avatar", "add", str(tmp_path / "nope.png"), "--target", f"127.0.0.1:{closed_port}")
    assert code == 1 and one_error_line(err) == f"error: {tmp_path / 'nope.png'}: no such file"
    code, _, err = run_cli("serve", "tts", "--config", str(tmp_path / "nope.yaml"))
    assert code == 1 and "not found" in one_error_line(err)


def test_a_busy_metrics_port_is_one_line_naming_it(busy_port: int) -> None:
    env = {"TALKMESH_TTS__SERVER__PORT": "0", "TALKMESH_TTS__SERVER__METRICS_PORT": str(busy_port)}
    code, out, err = run_cli("serve", "tts", env=env)
    assert code == 1 and "READY" not in out
    line = one_error_line(err)
    assert f"metrics port 127.0.0.1:{busy_port}" in line and "in use" in line


def test_a_busy_grpc_port_is_one_line_naming_it(busy_port: int) -> None:
    code, _, err = run_cli("serve", "renderer", env={"TALKMESH_RENDERER__SERVER__PORT": str(busy_port)})
    assert code == 1
    assert f"gRPC port 127.0.0.1:{busy_port}" in one_error_line(err)


def test_a_closed_pipe_ends_quietly() -> None:
    """`talkmesh config renderer | head -0`: the reader is gone before the first write."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "talkmesh.cli", "config", "renderer"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(60) == 141  # 128 + SIGPIPE, quietly
    assert err == ""


def test_config_errors_name_the_full_key() -> None:
    code, _, err = run_cli("config", "renderer", env={"TALKMESH_RENDERER__MUSETALK__FRAME_SKIP": "0"})
    assert code == 1
    assert one_error_line(err) == (
        "error: config: musetalk.frame_skip: must be at least 1 (set by TALKMESH_RENDERER__MUSETALK__FRAME_SKIP)"
    )


def test_config_prints_the_effective_config_as_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("batch:\n  max_size: 3\n")
    code, out, err = run_cli("config", "renderer", "--config", str(path), env={"TALKMESH_RENDERER__SESSION_QUEUE": "5"})
    assert code == 0, err
    data = yaml.safe_load(out)
    assert data["batch"]["max_size"] == 3 and data["session_queue"] == 5
    assert data["server"]["port"] == spec("renderer").port
    assert "# Frames in flight per session" in out  # the dataclass's own comments


def test_rpc_errors_show_the_field_from_the_rich_details() -> None:
    class FakeError(grpc.aio.AioRpcError):
        def __init__(self, exc: NotFound) -> None:
            trailer = grpc.aio.Metadata(*status_trailer(exc.code, exc.message, exc.details()))
            super().__init__(exc.code, grpc.aio.Metadata(), trailer, details=f"tts: {exc.message}")

    line = describe_rpc_error(FakeError(NotFound("config.voice", "espeak:xx", "voice")), "127.0.0.1:1")
    assert line == (
        "NOT_FOUND: tts: config.voice: voice 'espeak:xx' not found (field config.voice; set by --voice); "
        "see `talkmesh voices`"
    )
    line = describe_rpc_error(FakeError(NotFound("avatar_id", "me", "avatar")), "127.0.0.1:1")
    assert line.endswith("(field avatar_id; set by --avatar); see `talkmesh avatar list`")
    assert error_details_pb2.BadRequest  # the details really are google.rpc messages


def _rpc_error(exc: Exception) -> grpc.aio.AioRpcError:
    """The AioRpcError a client sees for a service's error (rich details in the trailer)."""
    trailer = grpc.aio.Metadata(*status_trailer(exc.code, exc.message, exc.details()))  # type: ignore[attr-defined]
    return grpc.aio.AioRpcError(exc.code, grpc.aio.Metadata(), trailer, details=exc.message)  # type: ignore[attr-defined]


def test_an_error_on_the_text_names_the_argument_that_sets_it() -> None:
    from talkmesh.common.errors import InvalidArgument

    line = describe_rpc_error(_rpc_error(InvalidArgument("text", "is empty")), "127.0.0.1:1")
    assert line.endswith("(field text; set by the text argument)"), line


def test_a_refused_default_is_not_said_to_be_set_by_an_option_the_user_did_not_give() -> None:
    """`talkmesh say "<Chinese text>"` without --voice: the default voice was refused, and the line
    said "(field config.voice; set by --voice)" to a user who gave no --voice (a new user's trial)."""
    from talkmesh.cli import describe_error
    from talkmesh.common.errors import InvalidArgument

    refusal = InvalidArgument(
        "config.voice",
        "2 of the text's 2 letters are Han script, which espeak:en-us reads letter by letter, by name; "
        "use a voice that reads it, e.g. espeak:cmn",
    )
    default = build_parser().parse_args(["say", "你好"])
    line = describe_error(_rpc_error(refusal), default)
    assert line.endswith("e.g. espeak:cmn (field config.voice: the default voice; choose one with --voice)"), line
    chosen = build_parser().parse_args(["say", "你好", "--voice", "espeak:en-gb"])
    assert describe_error(_rpc_error(refusal), chosen).endswith("(field config.voice; set by --voice)")
    too_large = InvalidArgument("frame.width", "3000x4000 exceeds the limit 3840x2160")
    line = describe_error(_rpc_error(too_large), default)
    size = "--size (output.size; e.g. --size 720p)"
    assert line.endswith(f"(field frame.width: the default size; choose one with {size})"), line
    # a flag's absence is no default value: it keeps "set by"
    line = describe_error(_rpc_error(InvalidArgument("text_format", "bad")), default)
    assert line.endswith("(field text_format; set by --markdown)"), line


def test_an_overload_says_when_to_retry_once() -> None:
    """It said "retry later; retry in 1 s" (the server's words, then the RetryInfo's)."""
    from talkmesh.common.errors import ResourceExhausted

    refusal = ResourceExhausted("2 streams in flight (limit 2, server.max_concurrent_streams); retry later")
    line = describe_rpc_error(_rpc_error(refusal), "127.0.0.1:1")
    assert line.endswith("(limit 2, server.max_concurrent_streams); retry in 1 s"), line
    assert line.count("retry") == 1, line


def test_say_exposes_the_options_of_the_api() -> None:
    options = ["--container", "fmp4", "--audio-codec", "opus", "--rate", "1.5", "--pitch", "0.8", "--volume", "1.2"]
    args = build_parser().parse_args(
        ["say", "Hi", *options, "--backend", "viseme", "--avatar", "Astro", "--voice", "espeak:en-gb"]
    )
    assert (args.container, args.audio_codec, args.rate, args.pitch, args.volume) == ("fmp4", "opus", 1.5, 0.8, 1.2)
    assert (args.backend, args.avatar, args.voice) == ("viseme", "Astro", "espeak:en-gb")


def test_say_help_says_where_the_video_goes() -> None:
    """`-o OUTPUT, --output OUTPUT` had no words: not its default, nor that its directory is made."""
    code, out, err = run_cli("say", "--help")
    assert code == 0, err
    text = " ".join(out.split())
    said = "-o OUTPUT, --output OUTPUT write the video to this file (default: out.mp4; missing directories are created)"
    assert said in text, out


def test_voices_help_says_how_to_ask_for_a_variant() -> None:
    """eSpeak's variants are not listed by `talkmesh voices` (a voice times ~100 variants)."""
    code, out, err = run_cli("voices", "--help")
    assert code == 0, err
    text = " ".join(out.split())
    assert "espeak:en-us+f3" in text and "f1 to f5" in text and "m1 to m8" in text, out


def test_bench_help_lists_every_mode() -> None:
    code, out, err = run_cli("bench", "--help")
    assert code == 0, err
    assert "--quick" in out and "components" in out


def test_voice_columns_line_up_whatever_the_length_of_the_ids() -> None:
    from talkmesh.cli import voice_table
    from talkmesh.v1 import types_pb2 as api

    voices = [
        api.Voice(id="espeak:en-us", language="en-us", engine="espeak", sample_rate=22050, name="English (US)",
                  default=True),
        api.Voice(id="espeak:chr-US-Qaaa-x-west", language="chr-US-Qaaa-x-west", engine="espeak",
                  sample_rate=22050, name="Cherokee"),
        api.Voice(id="piper:en_US-lessac-medium", language="en-us", engine="piper", sample_rate=16000, name="lessac"),
    ]  # fmt: skip
    assert [line.split()[0] for line in voice_table(voices)] == [v.id for v in voices]  # piped: no header
    header, *lines = voice_table(voices, header=True)
    assert header.split()[:3] == ["VOICE", "(--voice)", "LANGUAGE"] and header.index("ENGINE") == lines[0].index(
        " espeak "
    ) + 1, [header, *lines]
    assert len(lines) == 3
    import re

    assert len({re.search(r"\d+ Hz", line).start() for line in lines}) == 1, lines  # type: ignore[union-attr]
    assert len({line.index(f" {v.engine} ") for line, v in zip(lines, voices, strict=True)}) == 1, lines
    assert lines[0].endswith("English (US)  (default)") and "(default)" not in "".join(lines[1:]), lines
    names = [line.rindex(v.name) for line, v in zip(lines, voices, strict=True)]
    assert len(set(names)) == 1, lines
    assert all(line.split()[0] == v.id for line, v in zip(lines, voices, strict=True))


def test_avatar_add_of_a_directory_says_it_is_one(tmp_path: Path, closed_port: int) -> None:
    code, _, err = run_cli("avatar", "add", str(tmp_path), "--target", f"127.0.0.1:{closed_port}")
    assert code == 1
    assert one_error_line(err) == f"error: {tmp_path}: is a directory; give an image or a video file"


def test_avatar_help_lists_every_subcommand() -> None:
    code, out, _ = run_cli("avatar", "--help")
    assert code == 0
    listed = out.split("{", 1)[1].split("}", 1)[0].split(",")
    # `ls` for `list`, `delete` and `remove` for `rm` (argparse aliases)
    assert listed == ["add", "list", "ls", "rm", "delete", "remove"]
    for sub in ("add", "list", "rm"):  # each has a line of help, not only its name in the braces
        assert any(line.split()[:1] == [sub] and len(line.split()) > 1 for line in out.splitlines()), out
    assert "list (ls)" in out and "rm (delete, remove)" in out


def test_a_frame_too_large_for_the_encoder_points_at_size() -> None:
    """`say --size native` on a 3000x4000 avatar: the encoder refuses the frames; --size fixes it."""
    from talkmesh.common.errors import InvalidArgument

    exc = InvalidArgument("frame.width", "3000x4000 exceeds the limit 3840x2160")
    line = describe_rpc_error(_rpc_error(exc), "127.0.0.1:1")
    assert line.endswith("(field frame.width; set by --size (output.size; e.g. --size 720p))"), line


def test_the_up_hint_is_a_command_that_works_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closed_port: int
) -> None:
    """`talkmesh up` prints a `say` command to try: runnable without the venv on PATH, with the CA
    under --pki and an API key under --api-keys, and the target unless the clients find it."""
    import shlex

    from talkmesh.cli import self_command, up_hint
    from talkmesh.common.registry import default_target

    monkeypatch.delenv("TALKMESH_TARGET", raising=False)
    monkeypatch.delenv("TALKMESH_PORT_BASE", raising=False)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv is not activated
    command = shlex.split(self_command())
    assert command[0] != "talkmesh"
    res = subprocess.run([*command, "voices", "--target", f"127.0.0.1:{closed_port}"], capture_output=True, text=True)
    assert res.returncode == 1 and "cannot reach the gateway" in one_error_line(res.stderr)

    hint = up_hint(f"127.0.0.1:{closed_port}", pki=str(tmp_path), api_keys="keys.yaml")
    words = shlex.split(hint)
    assert words[0] == f"TALKMESH_TARGET=127.0.0.1:{closed_port}"
    assert words[words.index("--tls-ca") + 1] == str(tmp_path.resolve() / "ca.crt")
    assert "--api-key" in words
    assert build_parser().parse_args(words[len(command) + 1 :]).cmd == "say"  # flags `say` takes

    # typed in another terminal, without `up`'s $TALKMESH_PORT_BASE: the target is named all the same
    monkeypatch.setenv("TALKMESH_PORT_BASE", str(closed_port))
    assert up_hint(f"127.0.0.1:{closed_port}").startswith(f"TALKMESH_TARGET=127.0.0.1:{closed_port} ")
    assert not up_hint(default_target("gateway")).startswith("TALKMESH_TARGET")  # the default mesh


def test_up_with_api_keys_makes_the_stages_require_a_principal_and_says_what_plaintext_means(tmp_path, capsys):
    """`up --api-keys` without `--pki`: the stages refuse calls that name no key
    (server.require_principal), and a warning says that any local process can still reach their
    plaintext ports naming any key; on an address other than loopback it is refused outright.
    With `--pki` (mutual TLS) no warning."""
    from talkmesh.cli import CliError, _secure_env
    from talkmesh.common.registry import NAMES
    from talkmesh.devcerts import make_dev_pki

    keys = tmp_path / "keys.yaml"
    keys.write_text("keys: []\n")
    parser = build_parser()
    args = parser.parse_args(["up", "--api-keys", str(keys)])
    env = _secure_env(args)
    stages = ("TTS", "AUDIO_FEATURES", "RENDERER", "ENCODER")
    assert all(env[f"TALKMESH_{s}__SERVER__REQUIRE_PRINCIPAL"] == "true" for s in stages)
    assert "TALKMESH_GATEWAY__SERVER__REQUIRE_PRINCIPAL" not in env
    err = capsys.readouterr().err
    assert err.startswith("warning: --api-keys without --pki") and "any local process can call them" in err
    with pytest.raises(CliError, match=r"--api-keys without --pki on --host 0\.0\.0\.0"):
        _secure_env(parser.parse_args(["up", "--api-keys", str(keys), "--host", "0.0.0.0"]))
    make_dev_pki(tmp_path / "pki", NAMES)
    env = _secure_env(parser.parse_args(["up", "--api-keys", str(keys), "--pki", str(tmp_path / "pki")]))
    assert env["TALKMESH_RENDERER__SERVER__REQUIRE_PRINCIPAL"] == "true"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("service", "env", "expected"),
    [
        (
            "renderer",
            {"TALKMESH_RENDERER__BACKENDS": "viseme,wav2lip", "TALKMESH_RENDERER__WAV2LIP__PATH": "/tmp/nope.onnx"},
            "error: FAILED_PRECONDITION: renderer backend 'wav2lip' could not be loaded: "
            "wav2lip.path: wav2lip (/tmp/nope.onnx): model file does not exist",
        ),
        (
            "audio_features",
            {"TALKMESH_AUDIO_FEATURES__WHISPER_ENCODER__PATH": "/tmp/nope.onnx"},
            "error: whisper_encoder.path: /tmp/nope.onnx is not a file",
        ),
    ],
)
def test_a_service_that_cannot_start_says_why_without_class_names(
    service: str, env: dict[str, str], expected: str
) -> None:
    prefix = spec(service).env_prefix
    env = {**env, f"{prefix}__SERVER__PORT": "0", f"{prefix}__SERVER__METRICS_PORT": "-1"}
    code, out, err = run_cli("serve", service, env=env)
    assert code == 1 and "READY" not in out
    assert one_error_line(err) == expected


def test_an_unexpected_error_at_start_keeps_the_traceback_hint() -> None:
    """A ValueError that is no message of ours (a bug) is not shown as if it were one."""
    from talkmesh.cli import describe_error

    args = build_parser().parse_args(["serve", "renderer"])
    bug = ValueError("too many values to unpack (expected 2)")
    assert describe_error(bug, args) == "too many values to unpack (expected 2) (run with --debug for the traceback)"
    ours = ValueError("whisper_encoder.path: /tmp/nope.onnx is not a file")
    assert describe_error(ours, args) == "whisper_encoder.path: /tmp/nope.onnx is not a file"
    assert describe_error(ValueError(), args) == "ValueError:  (run with --debug for the traceback)"
    for message in ("musetalk.version 1.0: needs a Whisper encoder ...", "whisper encoder: refused"):
        assert describe_error(ValueError(message), args) == message


def test_a_recording_over_the_gateways_limit_says_which_setting_raises_it_or_to_go_live() -> None:
    """`say --audio` of a 12-minute recording said only "over the limit of 600 seconds" (a speech
    trainer's trial): the line names the gateway's setting, as a key and as its variable (which
    really sets it), and the live session, which has no per-recording limit."""
    from services.gateway.config import GatewayConfig
    from talkmesh.cli import describe_error
    from talkmesh.common.config import load_config
    from talkmesh.common.errors import InvalidArgument

    refusal = InvalidArgument("audio.total_samples", "the recording is 720.0 seconds, over the limit of 600 seconds")
    line = describe_error(_rpc_error(refusal), build_parser().parse_args(["say", "--audio", "talk.m4a"]))
    assert "\n" not in line and line.startswith("INVALID_ARGUMENT: audio.total_samples: the recording is 720.0"), line
    env = "TALKMESH_GATEWAY__MAX_AUDIO_SECONDS"
    assert f"raise the gateway's max_audio_seconds ({env})" in line, line
    assert line.endswith("or use `talkmesh live --audio talk.m4a`: a live session has no per-recording limit"), line
    raised = load_config(GatewayConfig, None, env_prefix=spec("gateway").env_prefix, env={env: "900"})
    assert raised.max_audio_seconds == 900 != GatewayConfig().max_audio_seconds
