"""`talkmesh live` and ``TalkmeshClient.live`` against a scripted gateway (fast: no mesh); and
what `talkmesh avatar add` sends.

The gateway here answers ListVoices / ListAvatars and runs a Live session as its ``mode`` says:
"idle" (started, then waits for the client), "fail" (the stream breaks after the start, as when
the encoder is killed), "turn_error" (each turn fails with an error event).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from talkmesh.client import TalkmeshClient
from talkmesh.common.errors import NotFound, status_trailer
from talkmesh.v1 import gateway_pb2_grpc, live_pb2_grpc
from talkmesh.v1 import live_pb2 as lpb
from talkmesh.v1 import types_pb2 as api

AVATAR_ID = "0123456789abcdef0123"
#: as the gateway makes them: the owner replica's address, a nonce and a signature
SESSION_ID = "MTI3LjAuMC4xOjUwMDUx.a1b2c3d4e5f60718.0123456789abcdef01234567"


class ScriptedGateway(gateway_pb2_grpc.GatewayServicer, live_pb2_grpc.LiveServicer):
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.configs: list[lpb.LiveConfig] = []
        self.uploads: list[api.AvatarMeta] = []
        self.half_closed = asyncio.Event()
        #: what came in after the config, as (kind, turn id, final, sample rate, pcm or text)
        self.received: list[tuple[str, str, bool, int, bytes | str]] = []

    async def RegisterAvatarWithProgress(  # type: ignore[override]
        self, request_iterator: AsyncIterator[api.AvatarUpload], context: object
    ) -> AsyncIterator[api.AvatarRegistration]:
        async for msg in request_iterator:
            if msg.WhichOneof("kind") == "meta":
                self.uploads.append(msg.meta)
        yield api.AvatarRegistration(avatar=api.AvatarInfo(id=AVATAR_ID, name="me", width=64, height=64))

    async def ListVoices(self, request: api.ListVoicesRequest, context: object) -> api.ListVoicesResponse:
        voices = [api.Voice(id="espeak:en-us", name="English", language="en-us", engine="espeak", sample_rate=22050)]
        return api.ListVoicesResponse(voices=voices)

    async def ListAvatars(self, request: api.ListAvatarsRequest, context: object) -> api.ListAvatarsResponse:
        return api.ListAvatarsResponse(avatars=[api.AvatarInfo(id=AVATAR_ID, name="me", width=64, height=64)])

    async def Session(  # type: ignore[override]
        self, request_iterator: AsyncIterator[lpb.LiveClientMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[lpb.LiveServerMessage]:
        first = await anext(aiter(request_iterator))
        self.configs.append(first.config)
        if first.config.voice == "nope":  # the gateway checks the voice before the session starts
            refusal = NotFound("config.voice", "nope", "voice")
            trailer = status_trailer(refusal.code, refusal.message, refusal.details())
            await context.abort(refusal.code, refusal.message, trailing_metadata=trailer)
        started = lpb.SessionStarted(session_id=SESSION_ID, width=64, height=64, fps_numerator=25, fps_denominator=1)
        yield lpb.LiveServerMessage(started=started)
        if self.mode == "fail":
            await asyncio.sleep(0.2)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "encoder: connections to all backends failing")
        async for msg in request_iterator:
            kind = msg.WhichOneof("kind")
            if kind == "audio":
                a = msg.audio
                self.received.append((kind, a.turn_id, a.final, a.sample_rate, a.pcm))
            elif kind == "text":
                self.received.append((kind, msg.text.turn_id, msg.text.final, 0, msg.text.text))
            else:
                self.received.append((kind or "", "", False, 0, b""))
            if msg.WhichOneof("kind") == "text" and self.mode == "turn_error":
                error = lpb.LiveError(code=5, message="config.voice: no such voice", turn_id=msg.text.turn_id)
                yield lpb.LiveServerMessage(error=error)
        self.half_closed.set()
        if self.mode == "linger":  # the turns still queued play on: the stream goes on a while
            await asyncio.sleep(60)


async def _serve(mode: str) -> tuple[grpc.aio.Server, ScriptedGateway, str]:
    gateway = ScriptedGateway(mode)
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServicer_to_server(gateway, server)
    live_pb2_grpc.add_LiveServicer_to_server(gateway, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, gateway, f"127.0.0.1:{port}"


async def _live(target: str, tmp_path: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "talkmesh.cli", "live", "--target", target, "-o", str(tmp_path / "live.mp4"), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("TALKMESH_")},
    )  # fmt: skip


@contextlib.asynccontextmanager
async def _session(mode: str, tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, ScriptedGateway]]:
    """`talkmesh live` against a scripted gateway in ``mode``; both stopped on the way out."""
    server, gateway, target = await _serve(mode)
    proc = await _live(target, tmp_path)
    try:
        yield proc, gateway
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await server.stop(0)


async def _until(proc: asyncio.subprocess.Process, word: str) -> str:
    assert proc.stderr is not None
    seen = ""
    async with asyncio.timeout(30):
        while word not in seen:
            line = (await proc.stderr.readline()).decode()
            assert line, f"ended before {word!r}: {seen}"
            seen += line
    return seen


async def _run_to_end(proc: asyncio.subprocess.Process, server: grpc.aio.Server, stdin: bytes | None = None) -> str:
    """Feeds ``stdin``, waits (30 s at most) for the command to exit, stops the scripted gateway;
    the command's stderr. A command still running is killed."""
    try:
        async with asyncio.timeout(30):
            _, raw = await proc.communicate(stdin)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await server.stop(0)
    return raw.decode()


async def test_ctrl_c_while_idle_quits_without_waiting_for_input(tmp_path: Path) -> None:
    server, _, target = await _serve("idle")
    proc = await _live(target, tmp_path)
    try:
        seen = await _until(proc, "64x64")
        assert f"session {SESSION_ID}: 64x64" in seen  # the whole id: others can watch with it
        if "type a line" not in seen:
            await _until(proc, "type a line")
        proc.send_signal(signal.SIGINT)  # stdin stays open: nobody presses Enter
        async with asyncio.timeout(10):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert f"wrote {tmp_path / 'live.mp4'}" in err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await server.stop(0)


async def test_ctrl_c_with_a_turn_queued_interrupts_it_instead_of_quitting(tmp_path: Path) -> None:
    """A line the session has taken but not begun to speak (queued behind a turn, or its TTS not
    in yet): Ctrl-C interrupts it, as while it speaks; it quit before. Once nothing is left,
    Ctrl-C quits."""
    async with _session("idle", tmp_path) as (proc, gateway):  # (takes turns, never speaks them)
        assert proc.stdin is not None
        await _until(proc, "type a line")
        proc.stdin.write(b"hello there\n")
        await proc.stdin.drain()
        async with asyncio.timeout(10):
            while not any(kind == "text" for kind, *_ in gateway.received):
                await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            while not any(kind == "interrupt" for kind, *_ in gateway.received):
                await asyncio.sleep(0.02)
        assert proc.returncode is None, "Ctrl-C with a turn queued quit the session"
        proc.send_signal(signal.SIGINT)  # nothing left: quits
        async with asyncio.timeout(10):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()


async def test_ctrl_c_after_ctrl_d_quits_at_once(tmp_path: Path) -> None:
    """After Ctrl-D the session is half-closed (it takes no interrupt): Ctrl-C while its queued
    turns still play quits at once. It sent an interrupt that could not go out, and waited for
    the stream's end."""
    async with _session("linger", tmp_path) as (proc, gateway):
        assert proc.stdin is not None
        await _until(proc, "type a line")
        proc.stdin.write(b"a long answer still playing\n")
        await proc.stdin.drain()
        proc.stdin.close()  # Ctrl-D
        async with asyncio.timeout(10):
            await gateway.half_closed.wait()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "SessionEnded" not in err.decode() and not [k for k, *_ in gateway.received if k == "interrupt"]


async def test_a_stream_that_fails_is_one_error_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    server, _, target = await _serve("fail")
    proc = await _live(target, tmp_path)
    err = await _run_to_end(proc, server)
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "never retrieved" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert errors == ["error: UNAVAILABLE: encoder: connections to all backends failing"], err


async def test_an_unknown_voice_fails_at_the_start(tmp_path: Path) -> None:
    server, gateway, target = await _serve("idle")
    proc = await _live(target, tmp_path, "--voice", "nope")
    err = await _run_to_end(proc, server, b"hi\n")
    assert proc.returncode == 1, err
    assert err.strip().splitlines() == [
        "error: NOT_FOUND: config.voice: voice 'nope' not found (field config.voice; set by --voice); "
        "see `talkmesh voices`"
    ]
    assert [c.voice for c in gateway.configs] == ["nope"]  # one session asked for, no turn sent


async def test_a_failed_turn_makes_the_exit_code_non_zero(tmp_path: Path) -> None:
    server, _, target = await _serve("turn_error")
    proc = await _live(target, tmp_path, "--voice", "espeak:EN_US")  # a spelling of a listed voice
    err = await _run_to_end(proc, server, b"hi\n")
    assert proc.returncode == 1, err
    assert err.count("config.voice: no such voice") == 1, err
    # the session itself ended normally: the last line says why the status is 1 all the same
    assert err.strip().splitlines()[-1] == "error: 1 message(s) or turn(s) were refused or failed (above)", err


def _wav(path: Path, pcm: bytes, rate: int) -> Path:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return path


async def test_audio_files_are_spoken_first_each_as_its_own_turn(tmp_path: Path) -> None:
    """`talkmesh live --audio A --audio B`: each recording whole, in order, one turn each, before
    the typed line; at the end of input the session is closed after them."""
    first = bytes(range(256)) * 160  # 20480 samples: more than one second at 16 kHz, so two pieces
    second = b"\x01\x02" * 4000
    a = _wav(tmp_path / "a.wav", first, 16000)
    b = _wav(tmp_path / "b.wav", second, 24000)
    server, gateway, target = await _serve("idle")
    proc = await _live(target, tmp_path, "--audio", str(a), "--audio", str(b))
    err = await _run_to_end(proc, server, b"and a typed line\n")
    assert proc.returncode == 0, err
    audio = [r for r in gateway.received if r[0] == "audio"]
    turns = list(dict.fromkeys(r[1] for r in audio))
    assert len(turns) == 2, gateway.received
    for tid, rate, pcm in zip(turns, (16000, 24000), (first, second), strict=True):
        pieces = [r for r in audio if r[1] == tid]
        assert {r[3] for r in pieces} == {rate}
        assert b"".join(r[4] for r in pieces) == pcm  # type: ignore[misc]
        assert pieces[-1][2] and not any(r[2] for r in pieces[:-1])  # ended once, by its last piece
    assert turns == ["take-1", "take-2"]  # (named after the order of --audio)
    assert "sending   take-1: a.wav, 1.28 s" in err and "sending   take-2: b.wav, 0.17 s" in err, err
    kinds = [r[0] for r in gateway.received]
    assert kinds.index("text") > max(i for i, r in enumerate(gateway.received) if r[0] == "audio"), kinds


async def test_an_audio_file_that_is_not_a_recording_fails_before_the_session(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not sound")
    server, gateway, target = await _serve("idle")
    proc = await _live(target, tmp_path, "--audio", str(tmp_path / "missing.wav"))
    err = await _run_to_end(proc, server, b"hi\n")
    assert proc.returncode == 1, err
    assert err.strip().splitlines() == [f"error: --audio {tmp_path / 'missing.wav'}: no such file"], err
    assert gateway.configs == []  # no session was opened


@pytest.mark.parametrize("avatar", ["me", AVATAR_ID])
async def test_the_client_sends_avatar_names_as_they_are(avatar: str) -> None:
    """The gateway resolves a name (GetAvatar, services/renderer/server.py ``find_avatar``): the
    client no longer lists the avatars to map it to an id first."""
    server, gateway, target = await _serve("idle")
    try:
        async with TalkmeshClient(target) as client, client.live(avatar=avatar) as session:
            assert session.started is not None
    finally:
        await server.stop(0)
    assert [c.avatar_id for c in gateway.configs] == [avatar]


async def test_avatar_add_picks_the_face_by_index_or_point(tmp_path: Path) -> None:
    picture = tmp_path / "group.png"
    picture.write_bytes(b"not decoded by the scripted gateway")
    server, gateway, target = await _serve("idle")
    try:
        for args in (["--face-index", "2"], ["--face-point", "320.5,200"], []):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "talkmesh.cli", "avatar", "add", str(picture), "--target", target, *args,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
        for bad in (["--face-point", "320"], ["--face-index", "-1"]):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "talkmesh.cli", "avatar", "add", str(picture), "--target", target, *bad,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
            assert proc.returncode == 2 and bad[0] in err.decode(), err.decode()
    finally:
        await server.stop(0)
    index, point, neither = gateway.uploads
    assert index.face_index == 2 and not index.HasField("face_point")
    assert (point.face_point.x, point.face_point.y) == (320.5, 200.0) and point.face_index == 0
    assert neither.face_index == 0 and not neither.HasField("face_point")


def test_a_stopped_turn_shows_its_voice_and_warnings() -> None:
    import time

    from talkmesh.live_cli import describe

    stopped = lpb.SpeakingStopped(
        turn_id="t1", reason=lpb.STOP_REASON_COMPLETED, samples_played=22050, sample_rate=22050,
        voice="espeak:en-us", warnings=["2 of the text's 18 letters are Han script"],
    )  # fmt: skip
    line = describe(lpb.LiveServerMessage(event=lpb.LiveEvent(speaking_stopped=stopped)), time.monotonic())
    assert line is not None
    first, second = line.splitlines()
    assert first.endswith("stopped   t1 (completed, 1.00 s played, voice espeak:en-us)"), first
    assert second.endswith("warning   t1: 2 of the text's 18 letters are Han script"), second


def test_a_caption_shows_the_clause_being_spoken() -> None:
    import time

    from talkmesh.live_cli import describe

    caption = lpb.Caption(turn_id="t1", segment_index=1, text="my friend.")
    line = describe(lpb.LiveServerMessage(event=lpb.LiveEvent(caption=caption)), time.monotonic())
    assert line is not None and line.endswith("caption   t1: my friend."), line


async def test_an_interrupt_drops_the_recordings_and_lines_not_sent_yet() -> None:
    """A stranger's review: an empty line while recording A played stopped A, then recording B and
    the lines typed meanwhile were sent and played (the sender still had them). The lines dropped
    are said (a script piped in lost them without a word)."""
    import io

    from talkmesh.live_cli import Recording, TurnSender

    class Session:
        started = None  # (no limit of pending turns known)

        def __init__(self) -> None:
            self.log: list[tuple[str, object]] = []
            self.cut = asyncio.Event()

        async def say_audio(self, pcm: bytes, rate: int, *, turn_id: str | None = None) -> str:
            self.log.append(("audio", pcm))
            await self.cut.wait()  # a long recording: sent until its turn is over
            return "t"

        async def say(self, text: str, *, turn_id: str | None = None) -> str:
            self.log.append(("text", text))
            return "t"

        async def interrupt(self, turn_id: str = "") -> None:
            self.log.append(("interrupt", turn_id))
            self.cut.set()

    session = Session()
    said = io.StringIO()
    takes = [Recording("a.wav", b"A", 16000), Recording("b.wav", b"B", 16000)]
    sender = TurnSender(session, takes, said)  # type: ignore[arg-type]
    try:
        async with asyncio.timeout(10):  # hang guard
            while not session.log:
                await asyncio.sleep(0)
            assert await sender.offer("typed while A plays")
            assert sender.pending
            await sender.interrupt()
            assert await sender.offer("after the interrupt")
            while len(session.log) < 3:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert session.log == [("audio", b"A"), ("interrupt", ""), ("text", "after the interrupt")]
        assert "dropped   1 line(s) not sent yet" in said.getvalue(), said.getvalue()  # (it was dropped silently)
        assert not sender.pending
        # the end of input given, then an interrupt (Ctrl-C after Ctrl-D): the sender still ends
        assert await sender.offer("one more")
        assert await sender.offer(None)
        await sender.interrupt()
        async with asyncio.timeout(10):
            await sender.task
        assert session.log[-2:] == [("text", "one more"), ("interrupt", "")]  # (sent at once: the sender was free)
        assert sender.task.exception() is None
    finally:
        await sender.aclose()


async def test_only_a_refusal_for_room_ends_a_turn_for_ctrl_c() -> None:
    """A turn's input timing out (DEADLINE_EXCEEDED) or a refused later piece leaves the turn
    playing what it had: Ctrl-C must still interrupt it (its speaking_stopped ends it). A turn
    refused for want of room never starts and gets no speaking_stopped: it is over at the error."""
    import io

    from talkmesh.live_cli import OpenTurns, _pump

    class Session:
        def __aiter__(self) -> AsyncIterator[lpb.LiveServerMessage]:
            return self._messages()

        async def _messages(self) -> AsyncIterator[lpb.LiveServerMessage]:
            yield lpb.LiveServerMessage(event=lpb.LiveEvent(speaking_started=lpb.SpeakingStarted(turn_id="t")))
            yield lpb.LiveServerMessage(error=lpb.LiveError(code=4, turn_id="t", message="input timed out"))
            yield lpb.LiveServerMessage(error=lpb.LiveError(code=3, turn_id="t", message="text: too long"))
            room = lpb.LiveError(code=8, turn_id="r", field="text.turn_id", message="32 turns are waiting")
            yield lpb.LiveServerMessage(error=room)
            full = lpb.LiveError(code=8, turn_id="f", message="tts: 1 streams in flight")  # a stage: FAILED follows
            yield lpb.LiveServerMessage(error=full)

    turns = OpenTurns()
    for tid in ("t", "r", "f"):
        turns.add(tid)
    state = {"errors": 0}
    await _pump(Session(), None, io.StringIO(), state, turns)  # type: ignore[arg-type]
    assert turns.ids == {"t", "f"} and state["errors"] == 4
