"""deploy/prometheus/scrape-config.yaml: the scrape job for plain Prometheus (no Operator).

The rules, the adapter and the per-pod panels group by `pod` (and the memory alert by `container`),
which the usual `kubernetes-service-endpoints` job does not set. The shipped job's relabelling is run
by a real Prometheus over a file-discovered target carrying the labels Kubernetes endpoints discovery
gives a talkmesh Service's endpoints, next to ports and Services it must skip.
"""

from __future__ import annotations

import asyncio
import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import start_http_server

from talkmesh.common.telemetry import Telemetry
from tests.deploy.manifests import DEPLOY
from tests.deploy.prom import PrometheusServer, find_binary

SCRAPE_CONFIG = DEPLOY / "prometheus" / "scrape-config.yaml"


def promtool_check_config(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check config` of ``text``. Debian's Prometheus is built without Kubernetes
    discovery: there, everything else (the relabelling, the job's fields) is checked with file
    discovery in its place."""
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    proc = subprocess.run([find_binary("promtool"), "check", "config", str(path)], capture_output=True, text=True)
    if "field kubernetes_sd_configs not found" in proc.stdout + proc.stderr:
        (job,) = yaml.safe_load(text)["scrape_configs"]
        assert job.pop("kubernetes_sd_configs") == [{"role": "endpoints", "namespaces": {"names": ["talkmesh"]}}]
        job["file_sd_configs"] = [{"files": [str(tmp_path / "targets.json")]}]
        path.write_text(yaml.safe_dump({"scrape_configs": [job]}))
        proc = subprocess.run([find_binary("promtool"), "check", "config", str(path)], capture_output=True, text=True)
    return proc


def test_promtool_check_config(tmp_path: Path) -> None:
    proc = promtool_check_config(SCRAPE_CONFIG.read_text(), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_check_config_can_fail(tmp_path: Path) -> None:
    proc = promtool_check_config(SCRAPE_CONFIG.read_text().replace("target_label: pod", "target_label: 1pod"), tmp_path)
    assert proc.returncode != 0 and "1pod" in proc.stdout + proc.stderr


def endpoint_labels(port_name: str, *, scrape: str = "true", pod: str = "media-7f9c-x2") -> dict[str, str]:
    """What role: endpoints discovery attaches to one endpoint port of a talkmesh Service."""
    return {
        "__meta_kubernetes_namespace": "talkmesh",
        "__meta_kubernetes_service_name": "encoder",
        "__meta_kubernetes_service_label_app_kubernetes_io_name": "talkmesh",
        "__meta_kubernetes_service_annotation_prometheus_io_scrape": scrape,
        "__meta_kubernetes_service_annotation_prometheus_io_path": "/metrics",
        "__meta_kubernetes_endpoint_port_name": port_name,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_container_name": "encoder",
        "__meta_kubernetes_pod_node_name": "node-1",
    }


def file_sd_job(name: str, sd_file: Path, *, drop_relabel: str | None = None) -> dict[str, Any]:
    """The shipped job with file discovery instead of Kubernetes discovery (same relabelling)."""
    (job,) = yaml.safe_load(SCRAPE_CONFIG.read_text())["scrape_configs"]
    job = copy.deepcopy(job)
    job.pop("kubernetes_sd_configs")
    job.update(job_name=name, scrape_interval="1s", scrape_timeout="1s", file_sd_configs=[{"files": [str(sd_file)]}])
    if drop_relabel:
        job["relabel_configs"] = [r for r in job["relabel_configs"] if r.get("target_label") != drop_relabel]
    return job


async def test_the_job_labels_series_with_namespace_pod_and_container(tmp_path: Path) -> None:
    telemetry = Telemetry("encoder")
    telemetry.metrics.live_late_ticks_total.labels("encoder").inc(3)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=telemetry.metrics.registry)
    try:
        address = f"127.0.0.1:{server.server_port}"
        sd_file = tmp_path / "targets.json"
        sd_file.write_text(
            json.dumps(
                [
                    {"targets": [address], "labels": endpoint_labels("metrics")},
                    # the gRPC port of the same Service, and a Service without the annotation: skipped
                    {"targets": ["127.0.0.1:1"], "labels": endpoint_labels("grpc")},
                    {"targets": ["127.0.0.1:2"], "labels": endpoint_labels("metrics", scrape="false", pod="x")},
                ]
            )
        )
        jobs = [file_sd_job("talkmesh", sd_file), file_sd_job("without-pod", sd_file, drop_relabel="pod")]
        with PrometheusServer.start(tmp_path / "prom", {}, extra_scrape_configs=jobs) as prom:
            await asyncio.to_thread(prom.wait_for_scrapes, "talkmesh", 1)
            await asyncio.to_thread(prom.wait_for_scrapes, "without-pod", 1)
            targets = await asyncio.to_thread(prom.targets)
            assert sorted(t["labels"]["job"] for t in targets) == ["talkmesh", "without-pod"]
            (series,) = await asyncio.to_thread(prom.query, 'talkmesh_live_late_ticks_total{job="talkmesh"}')
            labels = series["metric"]
            assert labels["namespace"] == "talkmesh" and labels["pod"] == "media-7f9c-x2"
            assert labels["container"] == "encoder" and labels["service"] == "encoder"
            # the grouping of TalkmeshLiveFramesLate and the adapter: one series per pod
            grouped = await asyncio.to_thread(
                prom.query, "sum by (job, namespace, pod) (talkmesh_live_late_ticks_total)"
            )
            pods = {r["metric"]["job"]: r["metric"].get("pod") for r in grouped}
            # without the pod relabelling (the usual kubernetes-service-endpoints job) there is no pod
            assert pods == {"talkmesh": "media-7f9c-x2", "without-pod": None}
    finally:
        server.shutdown()
        thread.join(timeout=5)
