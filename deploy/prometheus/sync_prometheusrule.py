"""Writes prometheusrule.yaml (Prometheus Operator) from talkmesh.rules.yaml (the plain rule file).

    python deploy/prometheus/sync_prometheusrule.py

talkmesh.rules.yaml is the source of truth: promtool checks and tests it. A test fails when the
PrometheusRule's groups differ from it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
HEADER = "# Generated from talkmesh.rules.yaml by sync_prometheusrule.py: edit that file, then re-run the script.\n"


def render(rules_text: str) -> str:
    groups = yaml.safe_load(rules_text)["groups"]
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "talkmesh",
            "labels": {"app.kubernetes.io/name": "talkmesh", "app.kubernetes.io/component": "monitoring"},
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(resource, sort_keys=False, width=110)


def main() -> int:
    text = render((HERE / "talkmesh.rules.yaml").read_text())
    (HERE / "prometheusrule.yaml").write_text(text)
    print(f"wrote {HERE / 'prometheusrule.yaml'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
