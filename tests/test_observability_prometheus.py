"""A real Prometheus scrapes the whole mesh, before and after real requests, and evaluates the
dashboard and the rules."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

from talkmesh.client import TalkmeshClient
from tests.deploy.prom import PrometheusServer, PromQueryError, find_binary
from tests.deploy.promql import RULES, dashboard_expressions, rule_expressions, variable_queries
from tests.mesh import inprocess_mesh

#: Panels that have no series until something happens, and why: their labels are not known at start-up.
EMPTY_AT_START = {
    # `model` is a batching (neural) backend's: a renderer that batches makes its series when it
    # loads the backend; this mesh renders visemes, which do not batch
    "Batch size (p50, p95)",
}
_SELECTOR = re.compile(r"\b(talkmesh_[a-z_]+)(\{[^}]*\})?")
_ABSENT = re.compile(r"absent\([^)]*\)")


async def test_prometheus_evaluates_the_dashboard_against_the_running_mesh(tmp_path):
    find_binary("prometheus")  # skips with a clear message when Prometheus cannot be installed
    async with inprocess_mesh(tmp_path, metrics=True) as mesh, TalkmeshClient(mesh.gateway) as client:
        targets = {name: [f"127.0.0.1:{host.metrics_port}"] for name, host in mesh.hosts.items()}
        labels = {name: {"namespace": "talkmesh", "pod": f"{name}-0"} for name in mesh.hosts}
        with PrometheusServer.start(tmp_path / "prom", targets, labels=labels, rule_files=[RULES]) as prom:
            # two scrapes of each before any request: a rate() needs two samples
            await asyncio.gather(*(asyncio.to_thread(prom.wait_for_scrapes, job, 2) for job in targets))
            await asyncio.to_thread(_check_series_before_any_request, prom, set(targets))
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


def _check_series_before_any_request(prom: PrometheusServer, services: set[str]) -> None:
    """A fresh mesh: every panel (but EMPTY_AT_START's) and every rule has a series from the first
    scrapes on, not "No data" until its first event; a rate reads 0. (A quantile or a ratio of
    nothing reads NaN: the panel has its series and draws no line.)"""
    problems = []
    for name, expr in dashboard_expressions().items():
        values = [float(r["value"][1]) for r in prom.query(expr)]
        if name.rpartition(" / ")[0] in EMPTY_AT_START:
            continue
        if not values:
            problems.append(f"{name}: no series\n  {expr}")
        elif ("rate(" in expr or "increase(" in expr) and "histogram_quantile" not in expr and " / " not in expr:
            if any(v != 0 for v in values):
                problems.append(f"{name}: {values}, not 0\n  {expr}")
    rules = rule_expressions()
    for name, expr in rules.items():
        if ":" in name:  # a recording rule: its expression (its records come every 30 s)
            if not prom.query(expr):
                problems.append(f"{name}: no series\n  {expr}")
            continue
        # an alert: every series it reads (recording rules are checked above; absent() is for
        # a service that exports nothing at all)
        for metric, matchers in _SELECTOR.findall(_ABSENT.sub("", expr)):
            selector = metric + matchers
            if not prom.query(selector):
                problems.append(f"{name}: {selector} has no series")
    assert not problems, "before the first request:\n" + "\n".join(problems)

    # TalkmeshRejectingStreams: every service can refuse, and its rate starts at 0
    overload = prom.query('sum by (service) (rate(talkmesh_rejections_total{reason="overload"}[15s]))')
    assert {r["metric"]["service"]: float(r["value"][1]) for r in overload} == dict.fromkeys(services, 0.0)
    # each scrape target exports its own service's series only
    owners = prom.query('count by (job, service) ({__name__=~"talkmesh_.+"})')
    assert {(r["metric"]["job"], r["metric"]["service"]) for r in owners} == {(s, s) for s in services}
    # the quantiles of histograms without an observation: NaN, not an error or a number
    (ttff,) = prom.query(dashboard_expressions()["Time to first frame (gateway) / A"])
    assert math.isnan(float(ttff["value"][1]))
