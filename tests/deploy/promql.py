"""The PromQL expressions shipped in deploy/: dashboard targets, rules, the adapter's query."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.manifests import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "talkmesh-dashboard.json"
RULES = DEPLOY / "prometheus" / "talkmesh.rules.yaml"
ADAPTER = DEPLOY / "prometheus" / "adapter-config.yaml"

# What Grafana substitutes before sending a query ("All" of a multi-value variable is ".*").
GRAFANA_VARIABLES = {"$__rate_interval": "15s", "$namespace": ".*", "$service": ".*"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_expressions(dash: dict[str, Any] | None = None) -> dict[str, str]:
    """Panel title / refId -> expression, with Grafana's variables substituted."""
    dash = dash or dashboard()
    exprs = {}
    for p in panels(dash):
        for t in p.get("targets", []):
            expr = t["expr"]
            for var, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unsubstituted variable in {p['title']}: {expr}"
            exprs[f"{p['title']} / {t['refId']}"] = expr
    return exprs


def variable_queries(dash: dict[str, Any] | None = None) -> dict[str, str]:
    """label_values(metric, label) variables as the equivalent PromQL (Grafana's series lookup)."""
    dash = dash or dashboard()
    out = {}
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        assert q.startswith("label_values(") and q.endswith(")"), q
        metric, label = (s.strip() for s in q[len("label_values(") : -1].split(","))
        out[f"variable {v['name']}"] = f"count by ({label}) ({metric})"
    return out


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r.get("record") or r["alert"]: r["expr"] for g in groups for r in g["rules"]}


def adapter_expressions() -> dict[str, str]:
    """The adapter's metricsQuery as it sends it for the HPA's lookup of pods in a namespace."""
    rules = yaml.safe_load(ADAPTER.read_text())["rules"]
    out = {}
    for i, r in enumerate(rules):
        series = r["seriesQuery"].split("{")[0]
        q = (
            r["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="talkmesh",pod=~"synthetic-0|other-0"')
            .replace("<<.GroupBy>>", "pod")
        )
        out[f"adapter rule {i}"] = q
        out[f"adapter rule {i} series"] = r["seriesQuery"]
    return out


def check_parse(promtool: str, exprs: dict[str, str], workdir: Path) -> None:
    """Every expression parses: promtool checks them as recording rules (one file, one group)."""
    rules = [{"record": f"check:expr_{i}", "expr": e} for i, e in enumerate(exprs.values())]
    path = workdir / "exprs.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "check", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        names = "\n".join(f"expr_{i}: {k}: {v}" for i, (k, v) in enumerate(exprs.items()))
        raise AssertionError(f"promtool rejected an expression:\n{proc.stdout}{proc.stderr}\n{names}")


HISTOGRAM_QUANTILE = re.compile(r"histogram_quantile\s*\(\s*[0-9.]+\s*,.*?\b([a-zA-Z_:][a-zA-Z0-9_:]*)_bucket\b", re.S)
COMPARISON = re.compile(r"(?<![=!<>])(>=|<=|>|<|==|!=)\s*(?:bool\s+)?([0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?)\b")
SET_OPERATOR = re.compile(r"\b(?:and|or|unless)\b")


def histograms_of(expr: str, records: Mapping[str, str]) -> set[str]:
    """The histograms whose quantile ``expr`` computes, directly or through recording rules."""
    found = set(HISTOGRAM_QUANTILE.findall(expr))
    for name, rexpr in records.items():
        if re.search(rf"(?<![a-zA-Z0-9_:]){re.escape(name)}(?![a-zA-Z0-9_:])", expr):
            found |= histograms_of(rexpr, {k: v for k, v in records.items() if k != name})
    return found


def quantile_thresholds(rules: Mapping[str, str]) -> list[tuple[str, str, float]]:
    """(rule, histogram, threshold) for every comparison of a histogram quantile with a number.

    A rule's expression is split at its set operators (and/or/unless): each part compares at most
    one thing, and the histograms of that part are the ones the number is compared against.
    """
    records = {k: v for k, v in rules.items() if ":" in k}
    out = []
    for rule, expr in rules.items():
        for part in SET_OPERATOR.split(expr):
            thresholds = [float(v) for _, v in COMPARISON.findall(part)]
            for metric in sorted(histograms_of(part, records)):
                out.extend((rule, metric, t) for t in thresholds)
    return out
