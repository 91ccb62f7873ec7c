"""A real Prometheus server scrapes running talkmesh services and evaluates every PromQL expression
of the dashboard, the rules and the prometheus-adapter rule against them."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import math
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest

from talkmesh.common.channel import create_channel
from talkmesh.common.server import Service
from talkmesh.common.telemetry import Telemetry
from talkmesh.testing import serve
from tests.deploy.prom import PrometheusServer, PromQueryError, find_binary
from tests.deploy.promql import (
    RULES,
    adapter_expressions,
    dashboard_expressions,
    rule_expressions,
    variable_queries,
)

TTFF_SECONDS = 0.3  # between the 0.25 and 0.5 buckets
STAGES = {
    ("tts", "synthesize"): 0.02,
    ("renderer", "render"): 0.04,
    ("encoder", "encode"): 0.01,
    ("gateway", "total"): 0.3,
}


class SyntheticService(Service):
    """A service without RPCs whose telemetry holds one observation of every metric family."""

    name = "gateway"

    def register(self, server: grpc.aio.Server) -> Sequence[str]:
        return []

    def observe_round(self) -> None:
        m = self.telemetry.metrics
        m.time_to_first_frame.labels("gateway").observe(TTFF_SECONDS)
        m.time_to_first_audio.labels("tts").observe(0.08)
        for (service, stage), seconds in STAGES.items():
            m.stage_duration.labels(service, stage).observe(seconds)
        m.streams_total.labels("gateway", "/talkmesh.v1.Gateway/Speak", "OK").inc(9)
        m.streams_total.labels("gateway", "/talkmesh.v1.Gateway/Speak", "INTERNAL").inc(1)
        m.streams_total.labels("gateway", "/talkmesh.v1.Gateway/Speak", "CANCELLED").inc(1)
        m.streams_active.labels("renderer").set(2)
        m.rejections_total.labels("renderer", "overload").inc()
        m.frames_total.labels("renderer").inc(50)
        m.skipped_frames_total.labels("renderer", "silence").inc(5)
        m.queue_depth.labels("renderer", "batcher").set(3)
        m.realtime_factor.labels("renderer").observe(1.8)
        m.batch_size.labels("renderer", "wav2lip").observe(8)
        self.telemetry.cache("avatar", hit=True)
        self.telemetry.cache("avatar", hit=False)
        self.telemetry.set_backend("execution_provider", "CPUExecutionProvider")
        m.live_sessions.labels("gateway", "speaking").set(3)
        m.live_sessions.labels("gateway", "idle").set(5)
        m.live_interrupt_seconds.labels("encoder").observe(0.004)
        m.live_underruns_total.labels("encoder").inc(2)
        m.live_late_ticks_total.labels("encoder").inc(1)
        m.live_lead_frames.labels("encoder").set(12)
        m.live_sessions.labels("encoder", "speaking").set(3)  # the sessions of that lead (12 frames each 4)
        m.live_sessions.labels("encoder", "idle").set(5)
        m.live_turns_total.labels("gateway", "completed").inc(4)
        m.live_turns_total.labels("gateway", "interrupted").inc(1)
        m.live_turn_start_seconds.labels("gateway").observe(0.12)
        m.stream_bytes_total.labels("renderer", "out").inc(400_000)
        m.stream_bytes_total.labels("encoder", "in").inc(400_000)


def _values(result: list[dict]) -> list[float]:  # type: ignore[type-arg]
    return [float(r["value"][1]) for r in result]


def _metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return resp.read().decode()  # type: ignore[no-any-return]


def _promtool_check_metrics(text: str) -> None:
    proc = subprocess.run([find_binary("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    # promtool reports lint problems (e.g. counters without _total) on stdout with exit code 1.
    assert proc.returncode == 0, proc.stdout + proc.stderr


async def _speak_to_tts(address: str) -> None:
    from talkmesh.v1 import tts_pb2, tts_pb2_grpc

    async with create_channel(address) as channel:
        stub = tts_pb2_grpc.TTSStub(channel)
        request = tts_pb2.SynthesizeRequest(config=tts_pb2.SynthesisConfig(request_id="prom-test"), text="Hello.")
        chunks = [c async for c in stub.Synthesize(request, timeout=60)]
    assert chunks and chunks[-1].end_of_stream


async def test_prometheus_scrapes_services_and_evaluates_every_expression(tmp_path: Path) -> None:
    find_binary("prometheus")
    synthetic = SyntheticService(Telemetry("gateway"))
    try:
        tts_main = importlib.import_module("services.tts.main")
    except ImportError:
        tts_main = None
    async with contextlib.AsyncExitStack() as stack:
        syn_host = await stack.enter_async_context(serve(synthetic, metrics=True))
        tts_host = None
        if tts_main is not None:  # the real TTS service, once it exists
            tts = tts_main.create_service(tts_main.load_config(), Telemetry("tts"))
            tts_host = await stack.enter_async_context(serve(tts, metrics=True))
        targets = {"synthetic": [f"127.0.0.1:{syn_host.metrics_port}"]}
        labels = {"synthetic": {"namespace": "talkmesh", "pod": "synthetic-0"}}
        if tts_host is not None:
            await _speak_to_tts(tts_host.address)
            targets["tts"] = [f"127.0.0.1:{tts_host.metrics_port}"]
            labels["tts"] = {"namespace": "talkmesh", "pod": "tts-0"}
        with PrometheusServer.start(tmp_path / "prom", targets, labels=labels, rule_files=[RULES]) as prom:
            # Two rounds of observations with scrapes in between, so rate() sees an increase.
            synthetic.observe_round()
            await asyncio.to_thread(prom.wait_for_scrapes, "synthetic", 2)
            synthetic.observe_round()
            for job in targets:
                await asyncio.to_thread(prom.wait_for_scrapes, job, 2)
            await asyncio.to_thread(_check_expressions, prom, tts_host is not None)
            groups = await asyncio.to_thread(prom.rules)
            assert {g["name"] for g in groups} == {"talkmesh.recording", "talkmesh.alerts"}
            assert all(not r.get("lastError") for g in groups for r in g["rules"])
        _promtool_check_metrics(await asyncio.to_thread(_metrics_text, syn_host.metrics_port))
        if tts_host is not None:
            _promtool_check_metrics(await asyncio.to_thread(_metrics_text, tts_host.metrics_port))


def _check_expressions(prom: PrometheusServer, with_tts: bool) -> None:
    # Every dashboard panel has data from the synthetic service, and no expression errs.
    for name, expr in {**dashboard_expressions(), **variable_queries()}.items():
        try:
            result = prom.query(expr)
        except PromQueryError as exc:
            pytest.fail(f"{name}: {exc}\n{expr}")
        assert result, f"{name} returned no series:\n{expr}"
        assert any(math.isfinite(v) for v in _values(result)), f"{name}: only NaN/Inf:\n{expr}"
    for name, expr in {**rule_expressions(), **adapter_expressions()}.items():
        try:
            prom.query(expr)
        except PromQueryError as exc:
            pytest.fail(f"{name}: {exc}\n{expr}")

    # A few values against what was observed (the independent reference).
    exprs = dashboard_expressions()
    (ttff_p50,) = _values(prom.query(exprs["Time to first frame (gateway) / A"]))
    assert 0.25 < ttff_p50 <= 0.5
    means = {
        (r["metric"]["service"], r["metric"]["stage"]): float(r["value"][1])
        for r in prom.query(exprs["Mean time per stage / A"])
    }
    for key, seconds in STAGES.items():
        assert means[key] == pytest.approx(seconds)
    ratio = {r["metric"]["service"]: float(r["value"][1]) for r in prom.query(exprs["Error ratio / A"])}
    assert ratio["gateway"] == pytest.approx(1 / 11)  # INTERNAL out of OK + INTERNAL + CANCELLED
    (active,) = prom.query(adapter_expressions()["adapter rule 0"])
    assert active["metric"] == {"pod": "synthetic-0"} and float(active["value"][1]) == 2
    # the lead per speaking session of the pod (the gauge sums its sessions), and each live session
    # counted once (the gateway's and the encoder's gauges both count it)
    (lead,) = prom.query(exprs["Rendered lead per speaking session (frames ahead of the clock) / A"])
    assert lead["metric"] == {"pod": "synthetic-0"} and float(lead["value"][1]) == 4
    panel = prom.query(exprs["Live sessions (speaking / idle) / A"])
    sessions = {r["metric"]["state"]: float(r["value"][1]) for r in panel}
    assert sessions == {"speaking": 3, "idle": 5}

    if with_tts:
        # The real TTS service counted the request in its stage histograms and is idle again.
        counted = _values(prom.query('sum(talkmesh_stage_duration_seconds_count{job="tts"})'))
        assert counted and counted[0] > 0
        assert _values(prom.query('sum(talkmesh_streams_active{job="tts", service="tts"})')) == [0.0]
        assert _values(prom.query('sum(talkmesh_streams_total{job="tts", code="OK"})')) == [1.0]
