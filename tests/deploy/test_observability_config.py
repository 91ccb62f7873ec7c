"""The Grafana dashboard and the Prometheus rules: structure, parsing (promtool) and rule unit tests."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import DEPLOY
from tests.deploy.prom import find_binary
from tests.deploy.promql import (
    RULES,
    adapter_expressions,
    check_parse,
    dashboard,
    dashboard_expressions,
    panels,
    quantile_thresholds,
    rule_expressions,
    variable_queries,
)


def promtool() -> str:
    return find_binary("promtool")


def test_promtool_check_rules() -> None:
    proc = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_test_rules() -> None:
    tests = DEPLOY / "prometheus" / "talkmesh.rules.test.yaml"
    proc = subprocess.run([promtool(), "test", "rules", str(tests)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_tests_cover_every_alert() -> None:
    tests = yaml.safe_load((DEPLOY / "prometheus" / "talkmesh.rules.test.yaml").read_text())
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", []) if a["exp_alerts"]}
    alerts = {name for name in rule_expressions() if not name.startswith("talkmesh:")}
    assert alerts == tested
    assert {"TalkmeshTimeToFirstFrameSLO", "TalkmeshRealtimeFactorBelowOne", "TalkmeshHighErrorRatio"} <= alerts


def test_a_broken_rule_file_fails_the_rule_tests(tmp_path: Path) -> None:
    """promtool test rules can fail: with the SLO threshold raised, the SLO alert no longer fires."""
    (tmp_path / "talkmesh.rules.yaml").write_text(RULES.read_text().replace("p95_5m > 2\n", "p95_5m > 20\n"))
    tests = (DEPLOY / "prometheus" / "talkmesh.rules.test.yaml").read_text()
    (tmp_path / "t.yaml").write_text(tests)
    proc = subprocess.run([promtool(), "test", "rules", str(tmp_path / "t.yaml")], capture_output=True, text=True)
    assert proc.returncode != 0 and "TalkmeshTimeToFirstFrameSLO" in proc.stdout + proc.stderr


def test_prometheusrule_matches_the_rule_file() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("sync", DEPLOY / "prometheus" / "sync_prometheusrule.py")
    assert spec and spec.loader
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    expected = sync.render(RULES.read_text())
    assert (DEPLOY / "prometheus" / "prometheusrule.yaml").read_text() == expected, (
        "run `python deploy/prometheus/sync_prometheusrule.py`"
    )


def test_every_expression_parses(tmp_path: Path) -> None:
    exprs = {**dashboard_expressions(), **variable_queries(), **rule_expressions(), **adapter_expressions()}
    check_parse(promtool(), exprs, tmp_path)


def test_the_parse_check_can_fail(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="promtool rejected"):
        check_parse(promtool(), {"bad": "sum by (service (rate(x[5m]))"}, tmp_path)


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["uid"] == "talkmesh-overview"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    for p in panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            if "rate(" in t["expr"] or "increase(" in t["expr"]:
                assert "[$__rate_interval]" in t["expr"], f"{p['title']}: use $__rate_interval"
            assert 'namespace=~"$namespace"' in t["expr"], f"{p['title']}: filter by namespace"
    # No overlapping panels on the 24-column grid.
    cells: set[tuple[int, int]] = set()
    for p in panels(dash):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine


def test_dashboard_answers_where_the_time_went() -> None:
    exprs = dashboard_expressions()
    joined = "\n".join(exprs.values())
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(talkmesh_time_to_first_frame_seconds_bucket" in joined
    for metric in (
        "talkmesh_stage_duration_seconds_bucket",
        "talkmesh_realtime_factor_bucket",
        "talkmesh_streams_active",
        "talkmesh_streams_total",
        "talkmesh_batch_size_bucket",
        "talkmesh_queue_depth",
        "talkmesh_rejections_total",
        "talkmesh_frames_total",
        "talkmesh_time_to_first_audio_seconds_bucket",
        "talkmesh_backend_info",
        "talkmesh_build_info",
        "talkmesh_cache_requests_total",
        "talkmesh_skipped_frames_total",
    ):
        assert metric in joined, metric
    assert any("by (service, code)" in e for e in exprs.values()), "errors by status code"
    assert any(p["type"] == "heatmap" for p in panels(dashboard()))


def histogram_buckets() -> dict[str, tuple[float, ...]]:
    """Bucket edges of every histogram the services export (talkmesh.common.telemetry)."""
    from prometheus_client import Histogram

    from talkmesh.common.telemetry import Metrics

    metrics = Metrics.create()
    out = {}
    for value in vars(metrics).values():
        if isinstance(value, Histogram):
            out[value._name] = tuple(value._upper_bounds)
    return out


def off_edge_thresholds(rules: dict[str, str], buckets: dict[str, tuple[float, ...]]) -> list[str]:
    problems = []
    for rule, metric, threshold in quantile_thresholds(rules):
        assert metric in buckets, f"{rule}: {metric} is not a histogram of talkmesh.common.telemetry"
        if threshold not in buckets[metric]:
            edges = buckets[metric]
            problems.append(f"{rule}: compares the quantile of {metric} with {threshold}, not an edge of {edges}")
    return problems


def test_every_quantile_threshold_is_a_bucket_edge() -> None:
    """histogram_quantile interpolates inside a bucket: a threshold between two edges reads requests
    well below it as above it (and the other way round). Every number a rule compares a quantile
    with, directly or through a recording rule, must be an edge of that histogram."""
    rules = rule_expressions()
    checked = quantile_thresholds(rules)
    assert {(r, m) for r, m, _ in checked} >= {
        ("TalkmeshTimeToFirstFrameSLO", "talkmesh_time_to_first_frame_seconds"),
        ("TalkmeshRealtimeFactorBelowOne", "talkmesh_realtime_factor"),
    }
    assert off_edge_thresholds(rules, histogram_buckets()) == []


def test_the_bucket_edge_check_can_fail() -> None:
    buckets = histogram_buckets()
    rules = {
        "x:p95": "histogram_quantile(0.95, sum by (le) (rate(talkmesh_time_to_first_frame_seconds_bucket[5m])))",
        "Indirect": "x:p95 > 1.7",
        "Direct": "histogram_quantile(0.9, sum by (le) (rate(talkmesh_realtime_factor_bucket[5m]))) < 0.9"
        " and on () vector(1) > 0.3",
    }
    problems = off_edge_thresholds(rules, buckets)
    assert len(problems) == 2 and problems[0].startswith("Indirect") and problems[1].startswith("Direct"), problems


def test_the_error_ratio_panel_reads_zero_without_errors(tmp_path: Path) -> None:
    """The "Error ratio" panel shows 0 for a service whose streams all succeed (not an empty panel:
    the numerator has no series then), and the failed share for one that fails."""
    (expr,) = [e for k, e in dashboard_expressions().items() if k.startswith("Error ratio /")]
    (tmp_path / "panel.rules.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "panel", "rules": [{"record": "panel:error_ratio", "expr": expr}]}]})
    )
    counts = [("tts", "OK", "0+10x20"), ("tts", "CANCELLED", "0+1x20"), ("encoder", "OK", "0+3x20")]
    counts.append(("encoder", "INTERNAL", "0+1x20"))
    series = [(f'talkmesh_streams_total{{namespace="ns",service="{s}",code="{c}"}}', v) for s, c, v in counts]
    tests = {
        "rule_files": ["panel.rules.yaml"],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": [
                    {
                        "expr": "round(panel:error_ratio, 0.001)",
                        "eval_time": "4m",
                        "exp_samples": [
                            {"labels": '{service="tts"}', "value": 0},
                            {"labels": '{service="encoder"}', "value": 0.25},
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "panel.test.yaml").write_text(yaml.safe_dump(tests))
    proc = subprocess.run(
        [promtool(), "test", "rules", str(tmp_path / "panel.test.yaml")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def panel(title: str) -> dict:  # type: ignore[type-arg]
    (found,) = [p for p in panels(dashboard()) if p["title"].startswith(title)]
    return found


def test_panels_plot_one_meaning_each() -> None:
    """Time to first audio is tts's (the gateway records its own, hop included); the heatmap shows
    one service's one stage (all stages together mix per-frame ms with per-request totals)."""
    for t in panel("Time to first audio (tts)")["targets"]:
        assert 'service="tts"' in t["expr"] and "$service" not in t["expr"], t["expr"]
    (heatmap,) = [p for p in panels(dashboard()) if p["type"] == "heatmap"]
    for t in heatmap["targets"]:
        assert re.search(r'service="[a-z_]+"', t["expr"]) and re.search(r'stage="[a-z_]+"', t["expr"]), t["expr"]
    assert "cpu overlay" in panel("Batch size")["description"]


def test_the_deploy_guide_lists_every_alert() -> None:
    guide = (DEPLOY.parent / "docs" / "DEPLOY.md").read_text()
    listed = set(re.findall(r"^\| `(Talkmesh\w+)` \|", guide, re.M))
    alerts = {name for name in rule_expressions() if not name.startswith("talkmesh:")}
    assert listed == alerts


def test_every_alert_has_a_runbook_section() -> None:
    """Each alert's runbook_url names docs/RUNBOOK.md and an anchor of a section there (GitHub's
    anchor of a `## AlertName` heading is its lower-cased name); the section says what to check and do."""
    runbook = (DEPLOY.parent / "docs" / "RUNBOOK.md").read_text()
    sections = {h.lower(): body for h, body in re.findall(r"^## (\w+)\n(.*?)(?=^## |\Z)", runbook, re.M | re.S)}
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = [r for g in groups for r in g["rules"] if "alert" in r]
    assert alerts
    for rule in alerts:
        url = rule["annotations"].get("runbook_url", "")
        assert url.startswith("https://") and "/docs/RUNBOOK.md#" in url, rule["alert"]
        anchor = url.rsplit("#", 1)[1]
        assert anchor == rule["alert"].lower() and anchor in sections, rule["alert"]
        for part in ("**Means:**", "**Check:**", "**Do:**"):
            assert part in sections[anchor], f"{rule['alert']}: no {part} in its runbook section"


def test_down_alerts_cover_every_service_and_the_scrape_job() -> None:
    """TalkmeshDown has an absent() for every service of the registry (its metrics' own `service`
    label), and TalkmeshTargetDown selects the job both scrape setups give the talkmesh targets."""
    from talkmesh.common.registry import NAMES

    exprs = rule_expressions()
    absent = set(re.findall(r'absent\(talkmesh_build_info\{service="(\w+)"\}\)', exprs["TalkmeshDown"]))
    assert absent == set(NAMES)
    assert 'up{job="talkmesh"}' in exprs["TalkmeshTargetDown"]
    (job,) = yaml.safe_load((DEPLOY / "prometheus" / "scrape-config.yaml").read_text())["scrape_configs"]
    assert job["job_name"] == "talkmesh"
    monitor = yaml.safe_load((DEPLOY / "k8s" / "components" / "monitoring" / "servicemonitor.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"][monitor["spec"]["jobLabel"]] == "talkmesh"


def test_the_error_ratio_counts_exactly_the_server_faults() -> None:
    """The alert's and the dashboard's error ratio count the statuses the services log as their own
    faults (talkmesh.common.interceptors.SERVER_FAULTS), and nothing a client causes."""
    from talkmesh.common.interceptors import SERVER_FAULTS

    dashboard = (DEPLOY / "grafana" / "talkmesh-dashboard.json").read_text()
    for where, text in (("rules", RULES.read_text()), ("dashboard", dashboard.replace('\\"', '"'))):
        selectors = re.findall(r'talkmesh_streams_total\{[^}]*code(=~|!~)"([^"]*)"', text)
        assert selectors, where
        for op, regex in selectors:
            assert op == "=~" and set(regex.split("|")) == SERVER_FAULTS, (where, op, regex)
