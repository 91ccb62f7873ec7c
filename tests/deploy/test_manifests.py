"""The Kubernetes manifests: every overlay renders, validates against several Kubernetes versions
(custom resources against their own schemas) and keeps the invariants the services rely on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.manifests import (
    DEPLOY,
    GPU_OVERLAYS,
    GPU_SERVICES,
    OVERLAYS,
    SERVICES,
    config_of,
    containers,
    env_of,
    k8s_name,
    matches,
    named,
    of_kind,
    pod_spec,
    pods_selected,
    render,
)

# The oldest Kubernetes version we support (native gRPC probes are GA since 1.27) and a recent one.
K8S_VERSIONS = ("1.29.0", "1.34.0")
SCHEMAS = Path(__file__).parent / "schemas"
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
}
PORTS = {
    "gateway": (50051, 9101),
    "tts": (50052, 9102),
    "audio_features": (50053, 9103),
    "renderer": (50054, 9104),
    "encoder": (50055, 9105),
}


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())  # type: ignore[no-any-return]


def test_there_are_cpu_gpu_and_gpu_shared_overlays() -> None:
    assert {"cpu", "gpu", "gpu-shared"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_overlay_validates_strictly(overlay: str, version: str) -> None:
    docs = render(overlay)
    for doc in docs:
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        custom = CUSTOM_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        if custom is not None:
            jsonschema.validate(doc, schema(custom))
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(f"{where}: no schema for {doc['apiVersion']} {doc['kind']} in Kubernetes {version}")


def test_custom_schemas_reject_mistakes() -> None:
    """The hand-written schemas are strict: a misspelt field or a missing selector is an error."""
    sm = named(render("gpu"), "ServiceMonitor", "talkmesh")
    bad = json.loads(json.dumps(sm))
    bad["spec"]["endpoints"][0]["honourLabels"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema("servicemonitor-monitoring-v1.json"))
    del bad["spec"]["selector"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema("servicemonitor-monitoring-v1.json"))
    rule = named(render("gpu"), "PrometheusRule", "talkmesh")
    bad = json.loads(json.dumps(rule))
    bad["spec"]["groups"][1]["rules"][0]["for"] = "ten minutes"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema("prometheusrule-monitoring-v1.json"))


def test_device_plugin_and_adapter_configs_follow_their_schemas() -> None:
    cm = named(render("gpu-shared"), "ConfigMap", "talkmesh-time-slicing")
    assert cm["metadata"]["namespace"] == "gpu-operator"
    config = yaml.safe_load(cm["data"]["any"])
    jsonschema.validate(config, schema("nvidia-device-plugin-config-v1.json"))
    (resource,) = config["sharing"]["timeSlicing"]["resources"]
    assert resource["name"] == "nvidia.com/gpu" and resource["replicas"] >= 2
    adapter = yaml.safe_load((DEPLOY / "prometheus" / "adapter-config.yaml").read_text())
    jsonschema.validate(adapter, schema("prometheus-adapter-config.json"))


def test_namespaces() -> None:
    for overlay in OVERLAYS:
        for doc in render(overlay):
            if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "talkmesh-time-slicing":
                continue
            assert doc["metadata"].get("namespace") == "talkmesh", f"{overlay}: {doc['metadata']['name']}"


# -- invariants ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_deployment_service_pdb_and_hpa_per_service(overlay: str) -> None:
    docs = render(overlay)
    names = {k8s_name(s) for s in SERVICES}
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert {d["metadata"]["name"] for d in of_kind(docs, kind)} == names, kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_grpc_probes_resources_and_a_locked_down_context(overlay: str) -> None:
    docs = render(overlay)
    for dep in of_kind(docs, "Deployment"):
        spec = pod_spec(dep)
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in containers(dep):
            where = f"{overlay}: {dep['metadata']['name']}/{c['name']}"
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in c, f"{where}: no {probe}"
                assert c[probe]["grpc"]["port"] == ports["grpc"], f"{where}: {probe} port"
            # Readiness is the overall health ("": SERVING after warm-up, NOT_SERVING while draining),
            # liveness and start-up the process-level "liveness" service.
            assert c["readinessProbe"]["grpc"].get("service", "") == ""
            assert c["livenessProbe"]["grpc"]["service"] == "liveness"
            assert c["startupProbe"]["grpc"]["service"] == "liveness"
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"].get(section, {})), f"{where}: {section}"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert {"/tmp", "/etc/talkmesh"} <= mounts, f"{where}: writable /tmp and the config"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_config_agree(overlay: str) -> None:
    """Container ports are the ones the service listens on (from its mounted config)."""
    docs = render(overlay)
    for service in SERVICES:
        dep = named(docs, "Deployment", k8s_name(service))
        (c,) = pod_spec(dep)["containers"]
        assert c["command"] == ["talkmesh", "serve", service]
        config = config_of(docs, dep)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert (ports["grpc"], ports["metrics"]) == PORTS[service]
        assert (config["server"]["port"], config["server"]["metrics_port"]) == PORTS[service]
        assert config["server"]["host"] == "0.0.0.0"
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(ports["metrics"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_and_drain(overlay: str) -> None:
    docs = render(overlay)
    for dep in of_kind(docs, "Deployment"):
        (c,) = pod_spec(dep)["containers"]
        command = c["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        drain = float(config_of(docs, dep)["server"]["grace_seconds"])
        assert drain >= 30, "a stream of a paragraph of speech must be able to finish"
        assert pod_spec(dep)["terminationGracePeriodSeconds"] >= float(command[1]) + drain + 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_match_real_pods(overlay: str) -> None:
    docs = render(overlay)
    for svc in of_kind(docs, "Service"):
        name = svc["metadata"]["name"]
        assert pods_selected(docs, svc["spec"]["selector"]) == [name], f"Service {name}"
        dep = named(docs, "Deployment", name)
        (c,) = pod_spec(dep)["containers"]
        container_ports = {p["name"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"Service {name} port {port['name']}"
        # Internal stages are headless: the gateway's round_robin channel sees every pod.
        if name != "gateway":
            assert svc["spec"]["clusterIP"] == "None"
    for dep in of_kind(docs, "Deployment"):
        assert matches(dep["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])
        assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        assert pods_selected(docs, pdb["spec"]["selector"]) == [pdb["metadata"]["name"]]
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        named(docs, "Deployment", target["name"])
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert pods_metrics == ["talkmesh_streams_active"]


def test_hpa_metric_is_served_by_the_adapter_rule() -> None:
    adapter = yaml.safe_load((DEPLOY / "prometheus" / "adapter-config.yaml").read_text())
    (rule,) = adapter["rules"]
    assert rule["name"]["as"] == "talkmesh_streams_active"
    assert re.search(rule["name"]["matches"], "talkmesh_streams_active")
    assert rule["resources"]["overrides"]["pod"]["resource"] == "pod"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_only_the_gateway_reach_internal_stages(overlay: str) -> None:
    docs = render(overlay)
    internal = {k8s_name(s) for s in SERVICES if s != "gateway"}
    protected: set[str] = set()
    for policy in of_kind(docs, "NetworkPolicy"):
        selected = pods_selected(docs, policy["spec"]["podSelector"])
        assert selected, f"NetworkPolicy {policy['metadata']['name']} selects no pods"
        for rule in policy["spec"].get("ingress", []):
            for dep_name in selected:
                (c,) = pod_spec(named(docs, "Deployment", dep_name))["containers"]
                names = {p["name"] for p in c["ports"]}
                for port in rule.get("ports", []):
                    assert port["port"] in names, f"{policy['metadata']['name']}: port {port['port']}"
            grpc_rule = any(p["port"] == "grpc" for p in rule.get("ports", []))
            if grpc_rule and set(selected) & internal:
                peers = rule.get("from")
                assert peers, "internal gRPC ports must not be open to everyone"
                for peer in peers:
                    assert set(peer) == {"podSelector"}, "only pods of the same namespace"
                    assert pods_selected(docs, peer["podSelector"]) == ["gateway"]
        protected |= set(selected) & internal
    assert protected == internal


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay: str) -> None:
    """ConfigMaps, PVCs and the gateway's downstream targets point at objects that exist."""
    docs = render(overlay)
    config_maps = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    claims = {d["metadata"]["name"] for d in of_kind(docs, "PersistentVolumeClaim")}
    for dep in of_kind(docs, "Deployment"):
        for vol in pod_spec(dep).get("volumes", []):
            if "configMap" in vol:
                assert vol["configMap"]["name"] in config_maps
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in claims
        for c in containers(dep):
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] in config_maps
            volumes = {v["name"] for v in pod_spec(dep).get("volumes", [])}
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes
    gateway_config = config_of(docs, named(docs, "Deployment", "gateway"))
    for stage in ("tts", "audio_features", "renderer", "encoder"):
        target = gateway_config[stage]["target"]
        m = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", target)
        assert m, f"gateway {stage}.target {target!r}: use dns:///<service>:<port> (round robin)"
        svc = named(docs, "Service", m.group(1))
        assert pods_selected(docs, svc["spec"]["selector"]) == [k8s_name(stage)]
        assert int(m.group(2)) in {p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpu_limits_only_on_renderer_and_encoder_in_gpu_overlays(overlay: str) -> None:
    docs = render(overlay)
    for dep in of_kind(docs, "Deployment"):
        name = dep["metadata"]["name"]
        spec = pod_spec(dep)
        for c in containers(dep):
            gpus = c["resources"]["limits"].get("nvidia.com/gpu")
            wants_gpu = overlay in GPU_OVERLAYS and name in {k8s_name(s) for s in GPU_SERVICES}
            assert (gpus == 1) if wants_gpu else (gpus is None), f"{overlay}: {name} nvidia.com/gpu={gpus}"
            if not wants_gpu:
                assert "affinity" not in spec and "tolerations" not in spec
                continue
            assert "video" in env_of(c)["NVIDIA_DRIVER_CAPABILITIES"].split(",")
            assert {"compute", "utility"} <= set(env_of(c)["NVIDIA_DRIVER_CAPABILITIES"].split(","))
            assert c["image"].endswith("-gpu")
            assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
            required = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            keys = {e["key"] for term in required["nodeSelectorTerms"] for e in term["matchExpressions"]}
            if name == "encoder":
                # NVENC only: the product list excludes the data-centre parts without an encoder.
                (term,) = required["nodeSelectorTerms"]
                (expr,) = [e for e in term["matchExpressions"] if e["key"] == "nvidia.com/gpu.product"]
                assert expr["operator"] == "In"
                assert not {"NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3"} & set(expr["values"])
                assert "Tesla-T4" in expr["values"] and "NVIDIA-L4" in expr["values"]
                assert env_of(c)["TALKMESH_ENCODER__VIDEO__ENCODER"] == "nvenc"
            else:
                assert "nvidia.com/gpu.present" in keys
            if overlay == "gpu-shared" and name == "renderer":
                assert "nvidia.com/gpu.sharing-strategy" in keys
    if overlay == "cpu":
        encoder_config = config_of(docs, named(docs, "Deployment", "encoder"))
        assert encoder_config["video"]["encoder"] == "x264"


def test_monitoring_objects_select_the_services() -> None:
    docs = render("gpu")
    (sm,) = of_kind(docs, "ServiceMonitor")
    selected = [s for s in of_kind(docs, "Service") if matches(sm["spec"]["selector"], s["metadata"]["labels"])]
    assert {s["metadata"]["name"] for s in selected} == {k8s_name(s) for s in SERVICES}
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["honorLabels"] is True, "the metrics' own `service` label must survive"
        for svc in selected:
            assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
    dashboards = [d for d in of_kind(docs, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard")]
    (dashboard,) = dashboards
    on_disk = json.loads((DEPLOY / "grafana" / "talkmesh-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["talkmesh-dashboard.json"]) == on_disk
