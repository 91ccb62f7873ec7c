"""The Kubernetes manifests: every overlay (alone and with each optional component) renders, validates
against several Kubernetes versions (custom resources against their own schemas) and keeps the
invariants the services rely on: one container per service, probes, drains, ports, selectors,
references, and the renderer/encoder layouts (co-located media pod, or split)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.encoder.config import EncoderConfig
from services.renderer.config import RendererConfig
from talkmesh.common import registry
from tests.deploy.manifests import (
    DEPLOY,
    GPU_OVERLAYS,
    HEADLESS_TWINS,
    OPTIONAL_COMPONENTS,
    OVERLAYS,
    SERVICES,
    config_of,
    containers,
    device_plugin_config,
    env_of,
    k8s_name,
    matches,
    mounts_of,
    named,
    of_kind,
    pod_labels,
    pod_spec,
    pods_selected,
    ports_of,
    render,
    runs,
    service_containers,
    service_of,
    volume,
)

# The oldest Kubernetes version we support (native gRPC probes are GA since 1.27) and a recent one.
K8S_VERSIONS = ("1.29.0", "1.34.0")
SCHEMAS = Path(__file__).parent / "schemas"
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring-v1.json",
    ("cert-manager.io/v1", "Certificate"): "certificate-cert-manager-v1.json",
    ("cert-manager.io/v1", "Issuer"): "issuer-cert-manager-v1.json",
}
PORTS = {s.name: s.ports() for s in registry.SERVICES}
COLOCATED = [o for o in OVERLAYS if o != "gpu-split"]
# Secrets the manifests mount but do not create: the operator creates them (docs/DEPLOY.md).
EXTERNAL_SECRETS = {"talkmesh-api-keys", "talkmesh-web-api-key", "talkmesh-live-session", "talkmesh-web-token-secrets"}

VARIANTS = [(o, ()) for o in OVERLAYS] + [(o, (c,)) for o in OVERLAYS for c in OPTIONAL_COMPONENTS]
VARIANT_IDS = [o + "".join(f"+{c}" for c in cs) for o, cs in VARIANTS]


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text())  # type: ignore[no-any-return]


def grace_seconds(docs: list[dict[str, Any]], dep: dict[str, Any], c: dict[str, Any]) -> float:
    return float(config_of(docs, dep, c)["server"]["grace_seconds"])


def prestop_seconds(c: dict[str, Any]) -> float:
    """The longest a container's preStop hook takes: ``sleep N``, or a wait for a port to close
    (the media pod's renderer waits for its encoder) with its bound as the last argument."""
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    if command[0] == "sleep":
        return float(command[1])
    assert command[:2] == ["python", "-c"] and len(command) == 5, command
    return float(command[4])


def test_there_are_cpu_gpu_gpu_shared_and_gpu_split_overlays() -> None:
    assert {"cpu", "gpu", "gpu-shared", "gpu-split"} <= set(OVERLAYS)


@pytest.mark.parametrize(("overlay", "components"), VARIANTS, ids=VARIANT_IDS)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_overlay_validates_strictly(overlay: str, components: tuple[str, ...], version: str) -> None:
    docs = render(overlay, *components)
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
    docs = render("cpu", "mtls")
    cert = json.loads(json.dumps(named(docs, "Certificate", "renderer-tls")))
    cert["spec"]["usages"].append("client authentication")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cert, schema("certificate-cert-manager-v1.json"))
    issuer = json.loads(json.dumps(named(docs, "Issuer", "talkmesh-ca")))
    issuer["spec"]["selfSigned"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(issuer, schema("issuer-cert-manager-v1.json"))


def test_device_plugin_and_adapter_configs_follow_their_schemas() -> None:
    cm = device_plugin_config()
    assert cm["metadata"]["namespace"] == "gpu-operator"
    replicas = {}
    for key, text in cm["data"].items():
        config = yaml.safe_load(text)
        jsonschema.validate(config, schema("nvidia-device-plugin-config-v1.json"))
        if "sharing" not in config:
            replicas[key] = 1
            continue
        slicing = config["sharing"]["timeSlicing"]
        assert slicing["renameByDefault"] is False, "keeps nvidia.com/gpu; products get the -SHARED suffix"
        (resource,) = slicing["resources"]
        assert resource["name"] == "nvidia.com/gpu"
        replicas[key] = resource["replicas"]
    # talkmesh-none: whole GPUs, the default for nodes nobody labelled (gpu-split's renderers need it).
    assert replicas == {"talkmesh-none": 1, "talkmesh-media": 2, "talkmesh-shared": 8}
    adapter = yaml.safe_load((DEPLOY / "prometheus" / "adapter-config.yaml").read_text())
    jsonschema.validate(adapter, schema("prometheus-adapter-config.json"))


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_device_plugin_config_is_a_separate_admin_step(version: str) -> None:
    """The overlays write nothing outside their namespace (no device plugin ConfigMap in gpu-operator:
    test_namespaces); the admin kustomization renders it there and validates."""
    cm = device_plugin_config()
    kubernetes_validate.validate(cm, version, strict=True)
    for overlay in OVERLAYS:
        assert not [d for d in of_kind(render(overlay), "ConfigMap") if d["metadata"]["name"] == cm["metadata"]["name"]]


def test_documented_device_plugin_default_does_not_time_slice() -> None:
    """Every device plugin patch or Helm setting in the docs and comments names a non-sharing default:
    a time-slicing default would slice every GPU node of the cluster (and leave gpu-split's renderers,
    which need sharing-strategy=none, nowhere to go). Nodes are time-sliced by label instead."""
    cm = device_plugin_config()
    sharing = {k for k, text in cm["data"].items() if "sharing" in yaml.safe_load(text)}
    texts = {
        "docs/DEPLOY.md": (DEPLOY.parent / "docs" / "DEPLOY.md").read_text(),
        **{str(p.relative_to(DEPLOY.parent)): p.read_text() for p in (DEPLOY / "k8s").rglob("*.yaml")},
    }
    defaults = []
    for where, text in texts.items():
        for m in re.finditer(r'"default":\s*"([\w-]+)"|config\.default=([\w-]+)', text):
            defaults.append((where, m.group(1) or m.group(2)))
    assert defaults, "the docs show how to set the device plugin's config"
    for where, name in defaults:
        assert name in cm["data"] and name not in sharing, f"{where}: default {name}"
    assert "nvidia.com/device-plugin.config=talkmesh-media" in texts["docs/DEPLOY.md"]
    assert "kubectl apply -k deploy/k8s/gpu-operator" in texts["docs/DEPLOY.md"]



@pytest.mark.parametrize(("overlay", "components"), VARIANTS, ids=VARIANT_IDS)
def test_namespaces(overlay: str, components: tuple[str, ...]) -> None:
    """Everything an overlay renders is in the talkmesh namespace: nothing for the cluster admin's
    namespaces (the device plugin config is deploy/k8s/gpu-operator, applied apart)."""
    for doc in render(overlay, *components):
        assert doc["metadata"].get("namespace") == "talkmesh", f"{overlay}: {doc['metadata']['name']}"


@pytest.mark.parametrize(("overlay", "components"), VARIANTS, ids=VARIANT_IDS)
def test_everything_is_labelled_part_of_talkmesh(overlay: str, components: tuple[str, ...]) -> None:
    """`kubectl get all -l app.kubernetes.io/part-of=talkmesh` finds every object and pod, the media,
    renderer and encoder Deployments and the components' objects too (they lacked it: an SRE's trial)."""
    for doc in render(overlay, *components):
        where = f"{overlay}{list(components)}: {doc['kind']} {doc['metadata']['name']}"
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == "talkmesh", where
        template = doc.get("spec", {}).get("template") if isinstance(doc.get("spec"), dict) else None
        if template is not None:
            assert template["metadata"]["labels"].get("app.kubernetes.io/part-of") == "talkmesh", where

# -- invariants ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_runs_in_one_container_with_one_service_object(overlay: str) -> None:
    docs = render(overlay)
    assert sorted(s for s, _, _ in service_containers(docs)) == sorted(SERVICES)
    assert {d["metadata"]["name"] for d in of_kind(docs, "Service")} == {k8s_name(s) for s in SERVICES} | set(
        HEADLESS_TWINS
    )
    deployments = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert {d["metadata"]["name"] for d in of_kind(docs, kind)} == deployments, kind
    media, _ = runs(docs, "renderer")
    encoder_dep, _ = runs(docs, "encoder")
    if overlay in COLOCATED:
        assert media is encoder_dep and media["metadata"]["name"] == "media", "renderer and encoder share a pod"
        assert deployments == {"gateway", "tts", "audio-features", "media", "web"}
    else:
        assert media is not encoder_dep
        assert deployments == {k8s_name(s) for s in SERVICES}


@pytest.mark.parametrize(("overlay", "components"), VARIANTS, ids=VARIANT_IDS)
def test_every_container_has_probes_resources_and_a_locked_down_context(
    overlay: str, components: tuple[str, ...]
) -> None:
    docs = render(overlay, *components)
    for dep in of_kind(docs, "Deployment"):
        spec = pod_spec(dep)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        init_names = {c["name"] for c in spec.get("initContainers", [])}
        seen_ports: set[str] = set()
        for c in containers(dep):
            where = f"{overlay}: {dep['metadata']['name']}/{c['name']}"
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"].get(section, {})), f"{where}: {section}"
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            if c["name"] in init_names:
                assert "restartPolicy" not in c, f"{where}: no sidecars"
                continue
            ports = ports_of(c)
            assert not set(ports) & seen_ports, f"{where}: port names must be unique in the pod"
            seen_ports |= set(ports)
            service = service_of(c)
            assert service is not None, f"{where}: runs `talkmesh serve <service>`"
            grpc_port = PORTS[service][0]
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in c, f"{where}: no {probe}"
                p = c[probe]
                if "httpGet" in p:  # the HTTP edge (web): /readyz follows the gateway, /healthz the process
                    assert registry.spec(service).protocol == "http", f"{where}: {probe}"
                    assert ports[p["httpGet"]["port"]] == grpc_port, f"{where}: {probe} port"
                    path = "/readyz" if probe == "readinessProbe" else "/healthz"
                    assert p["httpGet"]["path"] == path, f"{where}: {probe}"
                elif "grpc" in p:
                    assert p["grpc"]["port"] == grpc_port, f"{where}: {probe} port"
                    expected = "" if probe == "readinessProbe" else "liveness"
                    # Readiness is the overall health ("": SERVING after warm-up, NOT_SERVING while
                    # draining), liveness and start-up the process-level "liveness" service.
                    assert p["grpc"].get("service", "") == expected, f"{where}: {probe}"
                else:
                    command = p["exec"]["command"]
                    assert command[:3] == ["python", "-m", "talkmesh.healthcheck"], f"{where}: {probe}"
                    assert command[command.index("--service") + 1] == service
                    check = command[command.index("--check") + 1] if "--check" in command else ""
                    assert check == ("" if probe == "readinessProbe" else "liveness"), f"{where}: {probe}"
            mounts = mounts_of(c)
            assert {"/tmp", "/etc/talkmesh/config.yaml", "/home/talkmesh/.cache"} <= set(mounts), where
            for path in ("/tmp", "/home/talkmesh/.cache"):
                vol = volume(dep, mounts[path]["name"])
                assert "sizeLimit" in vol.get("emptyDir", {}), f"{where}: {path} is a bounded emptyDir"
            if "ephemeral-storage" in c["resources"]["limits"]:
                assert "ephemeral-storage" in c["resources"]["requests"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_and_config_agree(overlay: str) -> None:
    """Container ports are the ones the service listens on (from its mounted config)."""
    docs = render(overlay)
    for service, dep, c in service_containers(docs):
        assert c["command"] == ["talkmesh", "serve", service]
        assert c["args"] == ["--config", "/etc/talkmesh/config.yaml"]
        config = config_of(docs, dep, c)
        assert sorted(ports_of(c).values()) == sorted(PORTS[service])
        assert (config["server"]["port"], config["server"]["metrics_port"]) == PORTS[service]
        assert config["server"]["host"] == "0.0.0.0"
        # Each service reads its own config file.
        cm = volume(dep, mounts_of(c)["/etc/talkmesh/config.yaml"]["name"])["configMap"]["name"]
        assert cm.startswith(f"{k8s_name(service)}-config-")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_and_drain(overlay: str) -> None:
    docs = render(overlay)
    for dep in of_kind(docs, "Deployment"):
        need = 0.0
        for c in pod_spec(dep)["containers"]:
            drain = grace_seconds(docs, dep, c)
            assert drain >= 30, "a stream of a paragraph of speech must be able to finish"
            need = max(need, prestop_seconds(c) + drain + 5)
        assert pod_spec(dep)["terminationGracePeriodSeconds"] >= need, dep["metadata"]["name"]


@pytest.mark.parametrize("overlay", COLOCATED)
def test_colocated_drain_order_the_renderer_outlives_the_encoder(overlay: str) -> None:
    """Both containers of a media pod get SIGTERM after their own preStop; the renderer must keep
    serving the encoder's in-flight renders until the encoder has drained."""
    docs = render(overlay)
    dep, renderer = runs(docs, "renderer")
    _, encoder = runs(docs, "encoder")
    encoder_done = prestop_seconds(encoder) + grace_seconds(docs, dep, encoder)
    assert prestop_seconds(renderer) >= encoder_done


@pytest.mark.parametrize("overlay", COLOCATED)
def test_colocated_renderer_waits_for_its_encoder_to_stop_not_a_fixed_time(overlay: str) -> None:
    """The renderer's preStop was `sleep 65`: every media pod took 65 s + the renderer's drain to go,
    even with an encoder that had nothing to drain. It waits for the encoder's gRPC port in the
    pod to close (its process stopped), at most the encoder's preStop + grace_seconds."""
    docs = render(overlay)
    dep, renderer = runs(docs, "renderer")
    _, encoder = runs(docs, "encoder")
    command = renderer["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "python" and int(command[3]) == PORTS["encoder"][0] in ports_of(encoder).values()
    assert prestop_seconds(renderer) == prestop_seconds(encoder) + grace_seconds(docs, dep, encoder)
    assert "127.0.0.1" in command[2], "the encoder next door, in the pod's network namespace"


def test_the_renderers_wait_ends_when_the_encoders_port_closes_or_at_its_bound() -> None:
    """The preStop program itself, against a socket standing for the encoder (port 0)."""
    _, renderer = runs(render("cpu"), "renderer")
    program = renderer["lifecycle"]["preStop"]["exec"]["command"][2]
    started: list[subprocess.Popen[bytes]] = []

    def wait(port: int, most: float) -> subprocess.Popen[bytes]:
        started.append(subprocess.Popen([sys.executable, "-c", program, str(port), str(most)]))
        return started[-1]

    try:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            listener.settimeout(60)
            waiting = wait(listener.getsockname()[1], 600)
            listener.accept()[0].close()  # it polls the port...
            assert waiting.poll() is None  # ...and goes on while the port answers
            listener.close()  # the encoder has stopped
            assert waiting.wait(60) == 0  # long before its bound of 600 s
        with socket.socket() as still:  # an encoder that never stops: the bound ends the wait
            still.bind(("127.0.0.1", 0))
            still.listen(8)
            assert wait(still.getsockname()[1], 1).wait(60) == 0
        with socket.socket() as silent:  # nothing listens (an encoder that never started): at once
            silent.bind(("127.0.0.1", 0))
            assert wait(silent.getsockname()[1], 600).wait(60) == 0
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.mark.parametrize("overlay", COLOCATED)
def test_colocated_encoder_reaches_its_renderer_over_a_shared_unix_socket(overlay: str) -> None:
    docs = render(overlay)
    dep, renderer = runs(docs, "renderer")
    _, encoder = runs(docs, "encoder")
    sock = env_of(renderer)["TALKMESH_RENDERER__SERVER__UNIX_SOCKET"]
    target = env_of(encoder)["TALKMESH_ENCODER__RENDERER__TARGET"]
    assert target == f"unix://{sock}", "the encoder dials the renderer's socket"
    directory = sock.rsplit("/", 1)[0]
    r_mount, e_mount = mounts_of(renderer)[directory], mounts_of(encoder)[directory]
    assert r_mount["name"] == e_mount["name"], "one volume for both containers"
    vol = volume(dep, r_mount["name"])
    assert vol["emptyDir"]["medium"] == "Memory" and not r_mount.get("readOnly") and not e_mount.get("readOnly")
    # Not in the packaged defaults or the container configs: only the manifests set the new keys.
    for c in (renderer, encoder):
        config = config_of(docs, dep, c)
        assert "unix_socket" not in config["server"] and "renderer" not in config


@pytest.mark.parametrize("overlay", COLOCATED)
def test_colocated_containers_share_the_frame_ring_directory(overlay: str) -> None:
    """The encoder's frame rings (frame_ring.directory) are in memory both containers mount."""
    directory = EncoderConfig().frame_ring.directory
    assert RendererConfig().frame_ring.directory == directory
    docs = render(overlay)
    dep, renderer = runs(docs, "renderer")
    _, encoder = runs(docs, "encoder")
    r_mount, e_mount = mounts_of(renderer)[directory], mounts_of(encoder)[directory]
    assert r_mount["name"] == e_mount["name"], "one volume for both containers"
    vol = volume(dep, r_mount["name"])["emptyDir"]
    assert vol["medium"] == "Memory" and vol["sizeLimit"]
    for c in (renderer, encoder):
        assert not mounts_of(c)[directory].get("readOnly")
        assert "TALKMESH_ENCODER__FRAME_RING__ENABLED" not in env_of(c)
        assert "frame_ring" not in config_of(docs, dep, c)


def test_split_encoder_offers_no_frame_rings() -> None:
    _, encoder = runs(render("gpu-split"), "encoder")
    assert env_of(encoder)["TALKMESH_ENCODER__FRAME_RING__ENABLED"] == "false"


def test_split_encoder_reaches_the_renderer_service() -> None:
    docs = render("gpu-split")
    _, encoder = runs(docs, "encoder")
    target = env_of(encoder)["TALKMESH_ENCODER__RENDERER__TARGET"]
    m = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", target)
    assert m, f"{target!r}: use dns:///<service>:<port> (round robin over renderer pods)"
    svc = named(docs, "Service", m.group(1))
    (dep_name,) = pods_selected(docs, svc["spec"]["selector"])
    assert runs(docs, "renderer")[0]["metadata"]["name"] == dep_name
    assert int(m.group(2)) in {p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_the_container_that_serves_them(overlay: str) -> None:
    docs = render(overlay)
    for svc in of_kind(docs, "Service"):
        name = svc["metadata"]["name"]
        (dep_name,) = pods_selected(docs, svc["spec"]["selector"])
        dep = named(docs, "Deployment", dep_name)
        service = HEADLESS_TWINS.get(name) or next(s for s in SERVICES if k8s_name(s) == name)
        for port in svc["spec"]["ports"]:
            owners = [c for c in pod_spec(dep)["containers"] if port["targetPort"] in ports_of(c)]
            assert len(owners) == 1, f"Service {name} port {port['name']}: targetPort must name one container port"
            assert service_of(owners[0]) == service, f"Service {name} reaches {service_of(owners[0])}"
            number = ports_of(owners[0])[port["targetPort"]]
            assert number == PORTS[service][0 if port["name"] in ("grpc", "http") else 1]
            assert port["port"] == number
        # Internal stages are headless: the gateway's round_robin channel sees every pod. The entry
        # points (the gateway, the HTTP edge behind an ingress) have a cluster IP.
        if name != "gateway" and registry.spec(service).protocol == "grpc":
            assert svc["spec"]["clusterIP"] == "None"
        if name in HEADLESS_TWINS:
            assert [p["name"] for p in svc["spec"]["ports"]] == ["grpc"], "a twin is not scraped"
            assert "prometheus.io/scrape" not in svc["metadata"].get("annotations", {})
            continue
        # Annotation-based scraping (role: endpoints) of the service's own metrics port.
        metrics_port = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "metrics")
        assert svc["metadata"]["annotations"]["prometheus.io/port"] == str(metrics_port)
    for dep in of_kind(docs, "Deployment"):
        assert matches(dep["spec"]["selector"], pod_labels(dep))
        assert "replicas" not in dep["spec"], "the HPA owns the replica count"
        annotations = dep["spec"]["template"]["metadata"].get("annotations", {})
        assert "prometheus.io/scrape" not in annotations, "scraped through the Services (a pod has 2 ports)"
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        assert pods_selected(docs, pdb["spec"]["selector"]) == [pdb["metadata"]["name"]]
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        named(docs, "Deployment", target["name"])
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        cpu = [m for m in hpa["spec"]["metrics"] if m["type"] == "Resource" and m["resource"]["name"] == "cpu"]
        assert pods_metrics in ([], ["talkmesh_streams_active"]) and (pods_metrics or cpu)
        if overlay in GPU_OVERLAYS:  # GPU media pods scale on streams (prometheus-adapter required)
            assert pods_metrics == ["talkmesh_streams_active"]
        else:  # no adapter assumed: a metric that cannot be fetched would stop every scale-down
            assert pods_metrics == [], f"{overlay}: HPA {hpa['metadata']['name']} needs prometheus-adapter"


def dns_targets(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(where, target) for every "dns:///" target in the services' configs and environments."""
    out = []

    def walk(where: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{where}.{k}", v)
        elif isinstance(value, str) and value.startswith("dns:///"):
            out.append((where, value))

    for service, dep, c in service_containers(docs):
        walk(f"{service} config", config_of(docs, dep, c))
        for name, value in env_of(c).items():
            walk(f"{service} env {name}", value)
    return out


def undialable_targets(docs: list[dict[str, Any]]) -> list[str]:
    """dns:/// targets that do not name a headless Service's gRPC port: through a cluster IP, the
    client's round_robin sees one address and sends every stream to one pod."""
    problems = []
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for where, target in dns_targets(docs):
        m = re.fullmatch(r"dns:///([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)", target)
        svc = services.get(m.group(1)) if m else None
        if m is None or svc is None:
            problems.append(f"{where}: {target} names no Service")
        elif svc["spec"].get("clusterIP") != "None":
            problems.append(f"{where}: {target} names a ClusterIP Service (not headless)")
        elif int(m.group(2)) not in {p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"}:
            problems.append(f"{where}: {target} is not the Service's grpc port")
    return problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_dns_target_names_a_headless_service(overlay: str) -> None:
    docs = render(overlay)
    targets = dict(dns_targets(docs))
    # the gateway's four stages, and the web edge's gateway
    assert "web config.gateway.target" in targets and "gateway config.tts.target" in targets
    assert undialable_targets(docs) == []
    # ...and the headless gateway Service reaches the gateway pods
    svc = named(docs, "Service", "gateway-pods")
    assert pods_selected(docs, svc["spec"]["selector"]) == [runs(docs, "gateway")[0]["metadata"]["name"]]


def test_the_dns_target_check_can_fail() -> None:
    docs = [dict(d) for d in render("cpu")]
    web_cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("web-config"))
    web_cm["data"] = {"config.yaml": web_cm["data"]["config.yaml"].replace("gateway-pods:", "gateway:")}
    (problem,) = undialable_targets(docs)
    assert "ClusterIP" in problem and "web config.gateway.target" in problem


async def test_the_web_channel_balances_round_robin(monkeypatch: pytest.MonkeyPatch) -> None:
    """The web edge's gateway client (talkmesh.client.TalkmeshClient, services/web/server.py) asks
    for round_robin, so every address of a dns:/// target gets streams."""
    import grpc

    from talkmesh.client import TalkmeshClient

    seen: list[Any] = []
    real = grpc.aio.insecure_channel

    def recording_channel(target: str, options: Any = None, **kw: Any) -> Any:
        seen.append((target, dict(options or [])))
        return real(target, options=options, **kw)

    monkeypatch.setattr(grpc.aio, "insecure_channel", recording_channel)
    async with TalkmeshClient("dns:///gateway-pods:50051"):
        pass
    ((target, options),) = seen
    assert target == "dns:///gateway-pods:50051"
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]


def test_hpa_metric_is_served_by_the_adapter_rule() -> None:
    adapter = yaml.safe_load((DEPLOY / "prometheus" / "adapter-config.yaml").read_text())
    (rule,) = adapter["rules"]
    assert rule["name"]["as"] == "talkmesh_streams_active"
    assert re.search(rule["name"]["matches"], "talkmesh_streams_active")
    assert rule["resources"]["overrides"]["pod"]["resource"] == "pod"
    # A media pod reports the gauge twice (renderer, encoder): the max per pod is its streams.
    assert rule["metricsQuery"].startswith("max by")


@pytest.mark.parametrize(("overlay", "components"), VARIANTS, ids=VARIANT_IDS)
def test_references_resolve(overlay: str, components: tuple[str, ...]) -> None:
    """ConfigMaps, Secrets, PVCs and the gateway's downstream targets point at objects that exist."""
    docs = render(overlay, *components)
    config_maps = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    claims = {d["metadata"]["name"] for d in of_kind(docs, "PersistentVolumeClaim")}
    secrets = {d["spec"]["secretName"] for d in of_kind(docs, "Certificate")} | EXTERNAL_SECRETS
    for dep in of_kind(docs, "Deployment"):
        volumes = {v["name"]: v for v in pod_spec(dep).get("volumes", [])}
        for vol in volumes.values():
            if "configMap" in vol:
                assert vol["configMap"]["name"] in config_maps
            if "secret" in vol:
                assert vol["secret"]["secretName"] in secrets, vol["secret"]["secretName"]
            if "persistentVolumeClaim" in vol:
                assert vol["persistentVolumeClaim"]["claimName"] in claims
        for c in containers(dep):
            for src in c.get("envFrom", []):
                assert src["configMapRef"]["name"] in config_maps
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] in secrets, ref["name"]
            assert {m["name"] for m in c.get("volumeMounts", [])} <= set(volumes)
    gateway_dep, gateway = runs(docs, "gateway")
    gateway_config = config_of(docs, gateway_dep, gateway)
    for stage in ("tts", "audio_features", "renderer", "encoder"):
        target = gateway_config[stage]["target"]
        m = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", target)
        assert m, f"gateway {stage}.target {target!r}: use dns:///<service>:<port> (round robin)"
        svc = named(docs, "Service", m.group(1))
        (dep_name,) = pods_selected(docs, svc["spec"]["selector"])
        assert runs(docs, stage)[0]["metadata"]["name"] == dep_name
        assert int(m.group(2)) in {p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"}


def test_monitoring_objects_select_the_services() -> None:
    docs = render("gpu")
    (sm,) = of_kind(docs, "ServiceMonitor")
    selected = [s for s in of_kind(docs, "Service") if matches(sm["spec"]["selector"], s["metadata"]["labels"])]
    assert {s["metadata"]["name"] for s in selected} == {k8s_name(s) for s in SERVICES} | set(HEADLESS_TWINS)
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["honorLabels"] is True, "the metrics' own `service` label must survive"
        for svc in selected:
            # a headless twin has no metrics port: its pods are scraped once, through the main Service
            has_port = endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
            assert has_port == (svc["metadata"]["name"] not in HEADLESS_TWINS)
    dashboards = [d for d in of_kind(docs, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard")]
    (dashboard,) = dashboards
    on_disk = json.loads((DEPLOY / "grafana" / "talkmesh-dashboard.json").read_text())
    assert json.loads(dashboard["data"]["talkmesh-dashboard.json"]) == on_disk


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trace_resource_names_the_service_as_locally_and_the_pod(overlay: str) -> None:
    """Spans carry the service name the code gives them without Kubernetes (``talkmesh-<service>``,
    talkmesh/common/telemetry.py: ``talkmesh-audio_features``, not the Service's ``audio-features``),
    so one query finds a service's traces on a laptop and in the cluster; and ``k8s.pod.name`` from
    the downward API (``$(POD_NAME)`` expands only when POD_NAME comes earlier in the list)."""
    for service, _, c in service_containers(render(overlay)):
        env = c.get("env", [])
        names = [e["name"] for e in env]
        values = env_of(c)
        assert values["OTEL_SERVICE_NAME"] == f"talkmesh-{service}", (overlay, service)
        attributes = dict(kv.split("=", 1) for kv in values["OTEL_RESOURCE_ATTRIBUTES"].split(","))
        assert attributes["k8s.pod.name"] == "$(POD_NAME)", (overlay, service)
        assert names.index("POD_NAME") < names.index("OTEL_RESOURCE_ATTRIBUTES"), (overlay, service)
        (pod_name,) = [e for e in env if e["name"] == "POD_NAME"]
        assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_eviction_leaves_the_gateways_every_cpu_stage(overlay: str) -> None:
    """tts and audio_features ran one pod each: a node drain (PodDisruptionBudget maxUnavailable 1)
    evicting it left every gateway not ready until the new pod was. They start two, as the gateway
    and the web edge do; the cpu overlay keeps one of each on purpose, for laptop clusters, where
    its only media pod is such a single point anyway (docs/DEPLOY.md, section 9)."""
    docs = render(overlay)
    media, _ = runs(docs, "renderer")
    single_media = named(docs, "HorizontalPodAutoscaler", media["metadata"]["name"])["spec"]["maxReplicas"] == 1
    for service in ("gateway", "web", "tts", "audio_features"):
        dep, _ = runs(docs, service)
        assert named(docs, "PodDisruptionBudget", dep["metadata"]["name"])["spec"]["maxUnavailable"] == 1
        least = named(docs, "HorizontalPodAutoscaler", dep["metadata"]["name"])["spec"]["minReplicas"]
        if overlay == "cpu" and service in ("tts", "audio_features"):
            assert least == 1 and single_media, f"{overlay}: {service}"
        else:
            assert least >= 2, f"{overlay}: {service} starts {least} pod(s)"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_entry_replicas_spread_over_nodes_softly(overlay: str) -> None:
    """The gateway and the web edge (several replicas each, minReplicas 2) prefer different nodes and
    zones, so one node's loss or drain takes out one of them; softly, so a one-node cluster runs them."""
    docs = render(overlay)
    for service in ("gateway", "web"):
        dep, _ = runs(docs, service)
        constraints = {c["topologyKey"]: c for c in pod_spec(dep).get("topologySpreadConstraints", [])}
        assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= set(constraints), service
        for c in constraints.values():
            assert c["whenUnsatisfiable"] == "ScheduleAnyway" and c["maxSkew"] == 1
            assert matches(c["labelSelector"], pod_labels(dep))
            assert pods_selected(docs, c["labelSelector"]) == [dep["metadata"]["name"]]
