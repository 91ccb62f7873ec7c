"""The five services as separate processes on loopback, as `talkmesh up` and the demo run them."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from talkmesh.client import TalkmeshClient
from talkmesh.common.registry import GRPC_NAMES, NAMES, PORT_SPAN, spec
from talkmesh.common.registry import SERVICES as REGISTRY
from talkmesh.launcher import MIN_WAVE_SECONDS, Mesh, MeshError, ServiceProcess
from talkmesh.v1 import encoder_pb2 as epb
from tests.media import probe

pytestmark = pytest.mark.slow

PARAGRAPH = (
    "Good morning, and welcome back to the lesson. Today we will practise a few sounds together. "
    "Please listen carefully first, and then repeat after me. Papa bought a big blue map in Memphis. "
    "Well done, that was very good!"
)


@pytest.fixture
async def mesh(tmp_path):
    env = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "avatars")}
    async with Mesh(env=env, log_dir=tmp_path / "logs") as m:
        yield m


def _active_streams(mesh: Mesh) -> dict[str, float]:
    out = {}
    for name in NAMES:
        body = urllib.request.urlopen(mesh.metrics_url(name), timeout=5).read().decode()
        line = next(ln for ln in body.splitlines() if ln.startswith(f'talkmesh_streams_active{{service="{name}"}}'))
        assert "_created" not in body, f"{name} exports *_created series"
        out[name] = float(line.rsplit(" ", 1)[1])
    return out


async def _health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return resp.status


async def _await_health(address: str, status: int, polls: int = 100) -> int:
    """Polls ``address``'s readiness every 0.1 s until it is ``status`` (at most ``polls`` times);
    returns the last status seen, for the caller to assert on."""
    for _ in range(polls):
        seen = await _health(address)
        if seen == status:
            break
        await asyncio.sleep(0.1)
    return seen


async def test_first_fragment_arrives_before_tts_finishes(mesh, tmp_path):
    async with TalkmeshClient(mesh.gateway) as client:
        result = await client.speak_to_file(PARAGRAPH, tmp_path / "out.mp4", container=epb.CONTAINER_FMP4)
    tl = result.summary.timeline
    assert tl.first_fragment > 0 and tl.last_audio > 0
    assert tl.first_fragment < tl.last_audio, (
        f"first fragment {tl.first_fragment - tl.received:.3f}s after the request, "
        f"but TTS finished at {tl.last_audio - tl.received:.3f}s"
    )
    assert len(result.fragment_times) > 3


async def test_cancel_stops_every_service_within_a_second(mesh):
    async with TalkmeshClient(mesh.gateway) as client:
        call = client.speak(PARAGRAPH * 4)
        fragments = 0
        while fragments < 2:
            chunk = await call.read()
            if chunk.WhichOneof("kind") == "media" and not chunk.media.init_segment:
                fragments += 1
        busy = await asyncio.to_thread(_active_streams, mesh)
        # TTS runs hundreds of times faster than real time and may be done already; the stages
        # that pace the stream are still busy.
        assert all(busy[n] >= 1 for n in ("gateway", "renderer", "encoder")), busy
        call.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        active = busy
        while loop.time() < deadline:
            active = await asyncio.to_thread(_active_streams, mesh)
            if not any(active.values()):
                break
            await asyncio.sleep(0.05)
        assert active == dict.fromkeys(NAMES, 0.0)


async def test_health_under_load_then_drain_on_sigterm(mesh, tmp_path):
    async with TalkmeshClient(mesh.gateway) as client:
        load = [asyncio.create_task(client.speak_to_file(PARAGRAPH, tmp_path / f"load{i}.mp4")) for i in range(3)]
        try:
            await asyncio.sleep(0.3)
            for name in GRPC_NAMES:
                assert await _health(mesh.address(name)) == health_pb2.HealthCheckResponse.SERVING, name
                assert await _health(mesh.address(name), "liveness") == health_pb2.HealthCheckResponse.SERVING
        finally:
            results = await asyncio.gather(*load)
        assert all(r.summary.frames > 0 for r in results)

        inflight = asyncio.create_task(client.speak_to_file(PARAGRAPH * 2, tmp_path / "inflight.mp4"))
        await asyncio.sleep(0.3)
        mesh.processes["gateway"].proc.send_signal(signal.SIGTERM)
        status = health_pb2.HealthCheckResponse.SERVING
        for _ in range(50):
            status = await _health(mesh.gateway)
            if status == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            await asyncio.sleep(0.02)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.speak_to_file("New request.", tmp_path / "refused.mp4")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        finished = await inflight
        assert finished.summary.frames == math.ceil(finished.summary.audio_seconds * 25)
        assert await asyncio.wait_for(mesh.processes["gateway"].proc.wait(), 30) == 0


def test_demo_command_writes_a_playable_mp4(tmp_path):
    out = tmp_path / "demo.mp4"
    env_cache = {"TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "avatars")}
    import os

    res = subprocess.run(
        [sys.executable, "-m", "talkmesh.cli", "demo", "-o", str(out)],
        env={**os.environ, **env_cache},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    # as the README says: the time to the first fragment (the demo streams), and how many services
    assert "time to first fragment (client): " in res.stdout and "whole file" not in res.stdout
    assert res.stdout.startswith(f"starting the {len(REGISTRY)} services ...")
    info = probe(out)
    assert (info.video_codec, info.audio_codec, info.fps) == ("h264", "aac", 25)
    assert abs(info.frames - math.ceil(info.audio_seconds * 25)) <= 1
    assert abs(info.audio_seconds - info.video_seconds) <= 0.040


def _ports_free(ports: list[int]) -> bool:
    import socket

    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of closed connections is fine
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port_base() -> int:
    """A port block (registry PORT_SPAN wide) that is free now, away from the default ports."""
    import random

    for _ in range(200):
        base = random.randrange(20000, 32000 - PORT_SPAN)
        if _ports_free(list(range(base, base + PORT_SPAN))):
            return base
    pytest.skip("no free block of ports found")


def _children(pid: int) -> dict[str, int]:
    """Service name -> pid of the `talkmesh serve` processes whose parent is ``pid`` (Linux /proc)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"serve" in cmd:
            out[cmd[cmd.index(b"serve") + 1].decode()] = int(proc.name)
    return out


async def _start_up(tmp_path, *args: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    import os

    env = {**os.environ, "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "avatars")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "talkmesh.cli", "up", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    while not any("Ctrl-C stops" in ln for ln in lines):
        raw = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not raw:
            _, err = await proc.communicate()
            pytest.fail(f"`talkmesh up` exited early: {lines} {err.decode()}")
        lines.append(raw.decode())
    return proc, lines


async def test_up_on_a_port_base_starts_five_processes_and_ctrl_c_stops_them(tmp_path):
    base = free_port_base()
    proc, lines = await _start_up(tmp_path, "--port-base", str(base))
    try:
        for s in REGISTRY:
            port, metrics = s.ports(base)
            assert any(f"{s.protocol} 127.0.0.1:{port}" in ln and f":{metrics}/metrics" in ln for ln in lines), lines
            if s.protocol == "http":  # the web edge: the page's URL is printed, /readyz follows the gateway
                assert any(f"open http://127.0.0.1:{port}/ in a browser" in ln for ln in lines), lines
                url = f"http://127.0.0.1:{port}/readyz"
                assert await asyncio.to_thread(lambda u=url: urllib.request.urlopen(u, timeout=5).status) == 200
                continue
            assert await _health(f"127.0.0.1:{port}") == health_pb2.HealthCheckResponse.SERVING
        from talkmesh.cli import self_command

        assert any(f"TALKMESH_TARGET=127.0.0.1:{base} {self_command()} say" in ln for ln in lines), lines
        async with TalkmeshClient(f"127.0.0.1:{base}") as client:
            result = await client.speak_to_file("Up and running.", tmp_path / "up.mp4")
        assert result.summary.frames > 0
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    stopped = out.decode().strip().splitlines()[-1]
    assert stopped.startswith("stopped: ")
    codes = dict(item.split("=") for item in stopped.removeprefix("stopped: ").split(", "))
    assert codes == dict.fromkeys(NAMES, "0")
    assert _ports_free(list(range(base, base + PORT_SPAN)))  # nothing left listening


def _alive(pid: int) -> bool:
    """The process runs (a zombie waiting for its new parent to reap it does not)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def test_sighup_stops_the_mesh_like_ctrl_c(tmp_path):
    """Closing the terminal sends SIGHUP: the mesh stops in order, nothing is left running."""
    base = free_port_base()
    proc, _ = await _start_up(tmp_path, "--port-base", str(base))
    children = _children(proc.pid)
    try:
        proc.send_signal(signal.SIGHUP)
        async with asyncio.timeout(60):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    stopped = out.decode().strip().splitlines()[-1]
    codes = dict(item.split("=") for item in stopped.removeprefix("stopped: ").split(", "))
    assert codes == dict.fromkeys(NAMES, "0")
    assert not any(_alive(pid) for pid in children.values())
    assert _ports_free(list(range(base, base + PORT_SPAN)))


async def test_no_service_outlives_a_killed_launcher(tmp_path):
    """`talkmesh up` killed outright (SIGKILL: no handler runs): its children stop by themselves."""
    base = free_port_base()
    proc, _ = await _start_up(tmp_path, "--port-base", str(base))
    children = _children(proc.pid)
    assert set(children) == set(NAMES)
    try:
        proc.kill()
        await proc.wait()
        async with asyncio.timeout(30):
            while any(_alive(pid) for pid in children.values()):
                await asyncio.sleep(0.1)
    finally:
        for pid in children.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert _ports_free(list(range(base, base + PORT_SPAN)))


class _FakeProcess:
    """Stands for a service process: exits ``linger`` seconds after SIGTERM; logs both."""

    def __init__(self, name: str, log: list[str], linger: float) -> None:
        self.name, self.log, self.linger = name, log, linger
        self.returncode: int | None = None
        self._exited = asyncio.Event()

    def send_signal(self, sig: int) -> None:
        self.log.append(f"term {self.name}")
        asyncio.get_running_loop().call_later(self.linger, self._exit)

    def kill(self) -> None:
        self._exit()

    def _exit(self) -> None:
        if self.returncode is None:
            self.log.append(f"exit {self.name}")
            self.returncode = 0
            self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode


async def test_stop_drains_the_gateway_before_any_stage_stops():
    """Ctrl-C during a stream: the gateway (after the web edge) drains while every stage still
    serves; each stage stops only after the services that call it have exited."""
    log: list[str] = []
    mesh = Mesh()
    for s in REGISTRY:
        fake = _FakeProcess(s.name, log, 0.3 if s.name == "gateway" else 0.01)
        mesh.processes[s.name] = ServiceProcess(s.name, fake)  # type: ignore[arg-type]
    codes = await mesh.stop(timeout=5)
    assert codes == dict.fromkeys(NAMES, 0)
    assert log.index("exit web") < log.index("term gateway")
    for s in REGISTRY:
        for callee in s.calls:
            assert log.index(f"exit {s.name}") < log.index(f"term {callee}"), log
    assert mesh.processes == {}


async def test_the_stop_timeout_bounds_the_whole_stop_not_each_wave():
    """A gateway and an encoder that never exit on SIGTERM: the gateway is killed when the stop's
    time is up, the encoder after MIN_WAVE_SECONDS more, not after a whole timeout of its own."""
    log: list[str] = []
    mesh = Mesh()
    for s in REGISTRY:
        fake = _FakeProcess(s.name, log, 3600 if s.name in ("gateway", "encoder") else 0.01)
        mesh.processes[s.name] = ServiceProcess(s.name, fake)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    start = loop.time()
    codes = await mesh.stop(timeout=4.0)
    took = loop.time() - start
    assert codes == dict.fromkeys(NAMES, 0)
    assert 4.0 + MIN_WAVE_SECONDS - 0.1 < took < 4.0 + MIN_WAVE_SECONDS + 1.0  # per wave: 8 s
    assert log.index("exit gateway") < log.index("term encoder") < log.index("exit encoder") < log.index("term tts")


async def test_a_hung_stage_fails_streams_fast_and_readiness_shows_it(mesh, tmp_path):
    """SIGSTOP the renderer mid-stream (a hung process that still holds its sockets): the stream in
    flight fails with UNAVAILABLE, new calls are refused at once, the gateway reports NOT_SERVING;
    SIGCONT brings everything back."""
    renderer = mesh.processes["renderer"].proc
    loop = asyncio.get_running_loop()
    async with TalkmeshClient(mesh.gateway) as client:
        call = client.speak(PARAGRAPH * 3)
        assert (await call.read()).media.init_segment
        renderer.send_signal(signal.SIGSTOP)
        stopped_at = loop.time()
        try:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                while await call.read() is not grpc.aio.EOF:
                    pass
            failed_after = loop.time() - stopped_at
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
            print(f"\nin-flight stream failed {failed_after:.2f} s after SIGSTOP", file=sys.stderr)
            # target 5 s; keepalive (1 s interval, 1.5 s timeout) fails it in ~2.5 s
            assert failed_after < 5, f"in-flight stream failed {failed_after:.1f} s after the stage hung"
            # the dependency watch needs two missed checks (1 s apart, 1 s timeout)
            not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
            assert await _await_health(mesh.gateway, not_serving) == not_serving
            not_ready_after = loop.time() - stopped_at
            print(f"gateway NOT_SERVING {not_ready_after:.2f} s after SIGSTOP", file=sys.stderr)
            assert not_ready_after < 5, f"readiness showed the hung stage after {not_ready_after:.1f} s"
            assert await _health(mesh.gateway, "liveness") == health_pb2.HealthCheckResponse.SERVING
            started = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.speak_to_file("Anyone there?", tmp_path / "x.mp4")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "renderer" in err.value.details()
            refused_in = loop.time() - started
            print(f"new call refused in {refused_in * 1000:.0f} ms", file=sys.stderr)
            assert refused_in < 2.0, "new calls are refused, not left hanging"
        finally:
            renderer.send_signal(signal.SIGCONT)
        await _await_health(mesh.gateway, health_pb2.HealthCheckResponse.SERVING)
        # the resumed renderer works off its backlog first: one more health check may time out, so
        # the gateway may refuse (UNAVAILABLE, naming it) for a moment; it must serve again within 10 s
        deadline = loop.time() + 10
        while True:
            try:
                result = await client.speak_to_file("Back again.", tmp_path / "ok.mp4")
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and "renderer" in exc.details()
                assert loop.time() < deadline, "the gateway did not serve again within 10 s of SIGCONT"
                await asyncio.sleep(0.2)
        assert result.summary.frames > 0


async def test_a_killed_stage_fails_streams_fast_and_the_mesh_recovers_after_restart(mesh, tmp_path):
    """Chaos: SIGKILL the renderer mid-stream. The streams in flight fail with UNAVAILABLE within
    5 s, the gateway's readiness goes NOT_SERVING (liveness stays SERVING), new calls are refused
    fast; once the renderer is started again on its port, readiness and Speak come back."""
    loop = asyncio.get_running_loop()
    async with TalkmeshClient(mesh.gateway) as client:
        calls = [client.speak(PARAGRAPH * 3) for _ in range(3)]
        for call in calls:
            assert (await call.read()).media.init_segment
        mesh.processes["renderer"].proc.send_signal(signal.SIGKILL)
        killed_at = loop.time()

        async def fails(call) -> tuple[grpc.StatusCode, float]:
            try:
                while await call.read() is not grpc.aio.EOF:
                    pass
            except grpc.aio.AioRpcError as exc:
                return exc.code(), loop.time() - killed_at
            return grpc.StatusCode.OK, loop.time() - killed_at

        results = await asyncio.gather(*(fails(c) for c in calls))
        assert all(code == grpc.StatusCode.UNAVAILABLE for code, _ in results), results
        assert max(t for _, t in results) < 5.0, results
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert await _await_health(mesh.gateway, not_serving) == not_serving
        assert await _health(mesh.gateway, "liveness") == health_pb2.HealthCheckResponse.SERVING
        started = loop.time()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.speak_to_file("Anyone there?", tmp_path / "x.mp4")
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert loop.time() - started < 2.0

        await mesh.restart("renderer")
        restarted = loop.time()
        for _ in range(200):
            if all(
                [
                    await _health(mesh.address(n)) == health_pb2.HealthCheckResponse.SERVING
                    for n in ("encoder", "gateway")
                ]
            ):
                break
            await asyncio.sleep(0.1)
        assert await _health(mesh.gateway) == health_pb2.HealthCheckResponse.SERVING
        ready_after = loop.time() - restarted
        while True:  # UNAVAILABLE is retryable: a client retries until the encoder has seen it too
            try:
                result = await client.speak_to_file("Back again.", tmp_path / "ok.mp4")
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and loop.time() - restarted < 10, exc
                await asyncio.sleep(0.2)
        assert result.summary.frames > 0
        assert ready_after < 10, f"readiness came back {ready_after:.1f} s after the restart"


async def test_a_second_up_on_busy_ports_is_one_line_and_starts_nothing(tmp_path):
    import socket

    base = free_port_base()
    with socket.socket() as s:
        s.bind(("127.0.0.1", base + spec("renderer").index))  # as if another mesh held the renderer's port
        s.listen()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "talkmesh.cli", "up", "--port-base", str(base),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: renderer: gRPC port"), err.decode()
    assert f":{base + spec('renderer').index} is already in use" in lines[0] and "--port-base" in lines[0]
    assert out == b""


async def test_up_reports_a_dead_child_and_stops_the_mesh(tmp_path):
    base = free_port_base()
    proc, _ = await _start_up(tmp_path, "--port-base", str(base))
    try:
        children = _children(proc.pid)
        assert set(children) == set(NAMES)
        os.kill(children["renderer"], signal.SIGKILL)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            await proc.wait()
    assert proc.returncode == 1
    assert "error: renderer was killed by signal 9; stopping the mesh" in err.decode()
    stopped = out.decode().strip().splitlines()[-1]
    codes = dict(item.split("=") for item in stopped.removeprefix("stopped: ").split(", "))
    assert codes["renderer"] == "-9" and all(codes[n] == "0" for n in NAMES if n != "renderer")
    assert _ports_free(list(range(base, base + PORT_SPAN)))


async def test_a_service_that_fails_to_start_stops_its_wave_and_leaves_nothing(tmp_path):
    """TTS refuses its config while the rest of its start wave comes up: the mesh reports it,
    and every process it started is stopped (none is left running unowned)."""
    env = {f"{spec('tts').env_prefix}__MAX_TEXT_CHARS": "0"}
    mesh = Mesh(env=env, log_dir=tmp_path / "logs")
    with pytest.raises(MeshError, match="tts exited with code"):
        await mesh.start()
    assert mesh.processes == {}
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == [], "no start left running"
    assert {p.stem for p in (tmp_path / "logs").glob("*.log")} >= {"tts"}
    assert _serving_children() == []


def _serving_children() -> list[int]:
    """This process's children that run a service (``talkmesh.cli serve``)."""
    out = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and b"talkmesh.cli\x00serve" in cmdline:
            out.append(int(entry.name))
    return out


async def test_spans_a_service_prints_reach_its_log(tmp_path):
    """OTEL_TRACES_EXPORTER=console writes spans to a service's stdout, which the launcher reads
    for READY: what comes after goes to the service's log (here) or the launcher's stderr. A
    gateway with JSON logs says READY in JSON too, and the launcher still hears it."""
    env = {
        "TALKMESH_RENDERER__AVATARS__CACHE_DIR": str(tmp_path / "avatars"),
        "OTEL_TRACES_EXPORTER": "console",
        "TALKMESH_GATEWAY__SERVER__LOG_JSON": "true",
    }
    async with Mesh(env=env, log_dir=tmp_path / "logs") as mesh, TalkmeshClient(mesh.gateway) as client:
        await client.speak_to_file("Hello.", tmp_path / "out.mp4")
    assert '"name": "talkmesh.v1.TTS/Synthesize"' in (tmp_path / "logs" / "tts.log").read_text()
