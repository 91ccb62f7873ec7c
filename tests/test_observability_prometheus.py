"""A real Prometheus scrapes the whole mesh after real requests and evaluates the dashboard."""

from __future__ import annotations

import asyncio

import pytest

from talkmesh.client import TalkmeshClient
from tests.deploy.prom import PrometheusServer, PromQueryError, find_binary
from tests.deploy.promql import RULES, dashboard_expressions, rule_expressions, variable_queries
from tests.mesh import inprocess_mesh


async def test_prometheus_evaluates_the_dashboard_against_the_running_mesh(tmp_path):
    find_binary("prometheus")  # skips with a clear message when Prometheus cannot be installed
    async with inprocess_mesh(tmp_path, metrics=True) as mesh, TalkmeshClient(mesh.gateway) as client:
        targets = {name: [f"127.0.0.1:{host.metrics_port}"] for name, host in mesh.hosts.items()}
        labels = {name: {"namespace": "talkmesh", "pod": f"{name}-0"} for name in mesh.hosts}
        with PrometheusServer.start(tmp_path / "prom", targets, labels=labels, rule_files=[RULES]) as prom:
            for job in targets:
                await asyncio.to_thread(prom.wait_for_scrapes, job, 1)
            # one whole-file MP4 and two streamed requests (fragmented MP4, last: the panels' rate
            # window is 15 s): only the streamed ones have a first fragment to time
            # (talkmesh_time_to_first_frame_seconds)
            await client.speak_to_file("Hello there, number 0.", tmp_path / "out0.mp4")
            for i in (1, 2):
                chunks = [c async for c in client.speak(f"Hello there, number {i}.")]
                assert chunks[-1].end_of_stream
                for job in targets:
                    await asyncio.to_thread(prom.wait_for_scrapes, job, 2)

            def check() -> None:
                for name, expr in {**dashboard_expressions(), **variable_queries(), **rule_expressions()}.items():
                    try:
                        prom.query(expr)
                    except PromQueryError as exc:
                        pytest.fail(f"{name}: {exc}\n{expr}")
                exprs = dashboard_expressions()
                ttff = prom.query(exprs["Time to first frame (gateway) / A"])
                assert ttff and 0 < float(ttff[0]["value"][1]) < 30
                counted = prom.query('sum(talkmesh_time_to_first_frame_seconds_count{service="gateway"})')
                assert float(counted[0]["value"][1]) == 2.0
                stages = prom.query("sum by (service) (talkmesh_stage_duration_seconds_count)")
                assert {r["metric"]["service"] for r in stages} >= {"gateway", "tts", "renderer", "encoder"}
                active = prom.query("sum(talkmesh_streams_active)")
                assert float(active[0]["value"][1]) == 0.0
                ok = prom.query('sum(talkmesh_streams_total{service="gateway", code="OK"})')
                assert float(ok[0]["value"][1]) == 3.0

            await asyncio.to_thread(check)
