"""NetworkPolicies: default deny in both directions, and exactly the flows the mesh needs.

The policies of each overlay are evaluated with Kubernetes semantics (a pod selected by a policy of a
direction is isolated in that direction; a flow needs the source's egress and the destination's
ingress to allow it) over the talkmesh pods and a few pods outside the namespace, and the set of
allowed flows is compared with the expected set, so an extra allow fails as much as a missing one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from talkmesh.common import registry
from tests.deploy.manifests import (
    OPTIONAL_COMPONENTS,
    OVERLAYS,
    matches,
    of_kind,
    pod_labels,
    pod_spec,
    render,
)

NAMESPACE = "talkmesh"


@dataclass(frozen=True)
class Port:
    number: int
    protocol: str = "TCP"
    name: str = ""


@dataclass
class Pod:
    name: str
    namespace: str
    labels: Mapping[str, str]
    ports: list[Port] = field(default_factory=list)
    # The address an ipBlock sees ("" for pod-network pods, which ipBlocks here never mean).
    ip: str = ""


def ns_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}


# Pods outside the namespace: what the mesh needs (DNS, the collector, Prometheus), a client, and an
# arbitrary service that nothing in the mesh may reach.
OUTSIDE = [
    Pod("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, [Port(53, "UDP"), Port(53, "TCP")]),
    # NodeLocal DNSCache: host-network pods answering on a link-local address on every node.
    Pod(
        "node-local-dns",
        "kube-system",
        {"k8s-app": "node-local-dns"},
        [Port(53, "UDP"), Port(53, "TCP")],
        ip="169.254.20.10",
    ),
    Pod("otel-collector", "observability", {"app.kubernetes.io/name": "otel-collector"}, [Port(4317), Port(4318)]),
    Pod("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, [Port(9090)]),
    Pod("client", "default", {"app": "client"}, [Port(443)]),
    Pod("kube-apiserver", "default", {"component": "apiserver"}, [Port(443), Port(6443)]),
]


def mesh_pods(docs: list[dict[str, Any]]) -> list[Pod]:
    out = []
    for dep in of_kind(docs, "Deployment"):
        ports = [
            Port(p["containerPort"], p.get("protocol", "TCP"), p.get("name", ""))
            for c in pod_spec(dep)["containers"]
            for p in c.get("ports", [])
        ]
        out.append(Pod(dep["metadata"]["name"], NAMESPACE, pod_labels(dep), ports))
    return out


def _peer_matches(peer: Mapping[str, Any], pod: Pod) -> bool:
    if "ipBlock" in peer:
        if not pod.ip or pod.namespace == NAMESPACE:
            return False  # an address range: only outside pods with a known address
        block = peer["ipBlock"]
        address = ipaddress.ip_address(pod.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], ns_labels(pod.namespace)):
            return False
    elif pod.namespace != NAMESPACE:
        return False  # a podSelector alone means the policy's own namespace
    return "podSelector" not in peer or matches(peer["podSelector"], pod.labels)


def _port_matches(rule_ports: list[Mapping[str, Any]] | None, port: Port) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != port.protocol:
            continue
        value = p.get("port")
        if value is None or value == port.number or (isinstance(value, str) and value == port.name):
            return True
    return False


def _allowed(policies: list[dict[str, Any]], pod: Pod, direction: str, other: Pod, port: Port) -> bool:
    """Whether ``pod``'s policies of ``direction`` (Ingress/Egress) let the flow with ``other`` pass."""
    if pod.namespace != NAMESPACE:
        return True  # not ours to restrict
    selecting = [
        p for p in policies if direction in p["spec"]["policyTypes"] and matches(p["spec"]["podSelector"], pod.labels)
    ]
    if not selecting:
        return True
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    for policy in selecting:
        for rule in policy["spec"].get(key, []):
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(peer, other) for peer in peers)) and _port_matches(
                rule.get("ports"), port
            ):
                return True
    return False


def flows(docs: list[dict[str, Any]]) -> Iterator[tuple[str, str, str]]:
    """(source, destination, port) for every allowed flow that involves a talkmesh pod (a pod stands for
    all replicas of its Deployment, so a flow from a Deployment to itself is between replicas)."""
    policies = of_kind(docs, "NetworkPolicy")
    pods = mesh_pods(docs) + OUTSIDE
    for src in pods:
        for dst in pods:
            if NAMESPACE not in (src.namespace, dst.namespace):
                continue
            for port in dst.ports:
                if _allowed(policies, src, "Egress", dst, port) and _allowed(policies, dst, "Ingress", src, port):
                    yield src.name, dst.name, port.name or f"{port.number}/{port.protocol}"


def expected(deployments: set[str], layout: str) -> set[tuple[str, str, str]]:
    # The public entry point: the gateway's gRPC port is open to anyone outside the namespace.
    out = {(outside.name, "gateway", "grpc") for outside in OUTSIDE}
    # The browser edge's HTTP port is public too (behind the cluster's ingress).
    for spec in registry.SERVICES:
        if spec.protocol == "http":
            out |= {(outside.name, spec.k8s_name, "http") for outside in OUTSIDE}
    for pod in deployments:
        out |= {(pod, "kube-dns", "53/UDP"), (pod, "kube-dns", "53/TCP"), (pod, "otel-collector", "4317/TCP")}
        out |= {(pod, "node-local-dns", "53/UDP"), (pod, "node-local-dns", "53/TCP")}
        out.add(("prometheus", pod, "metrics"))
    # Each hop of the registry: the caller reaches the callee's gRPC port. In the co-located layout
    # the renderer and the encoder are containers of the media pod and talk over a Unix socket.
    pod = {"renderer": "media", "encoder": "media"} if layout == "colocated" else {}
    port = {"encoder": "encoder-grpc"} if layout == "colocated" else {}
    for spec in registry.SERVICES:
        for callee in spec.calls:
            src, dst = pod.get(spec.name, spec.k8s_name), pod.get(callee, registry.spec(callee).k8s_name)
            if src != dst:
                out.add((src, dst, port.get(callee, "grpc")))
    if layout == "colocated":
        out.add(("prometheus", "media", "encoder-metrics"))
    # Live sessions: a Watch that reaches another gateway replica is forwarded to the owner.
    out.add(("gateway", "gateway", "grpc"))
    return out


VARIANTS = [(o, ()) for o in OVERLAYS] + [(o, ("mtls",)) for o in OVERLAYS if "mtls" in OPTIONAL_COMPONENTS]


@pytest.mark.parametrize(("overlay", "components"), VARIANTS)
def test_exactly_the_mesh_flows_are_allowed(overlay: str, components: tuple[str, ...]) -> None:
    docs = render(overlay, *components)
    deployments = {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    layout = "colocated" if "media" in deployments else "split"
    got = set(flows(docs))
    want = expected(deployments, layout)
    assert got - want == set(), f"allowed but not needed: {sorted(got - want)}"
    assert want - got == set(), f"needed but denied: {sorted(want - got)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_default_deny_both_ways_for_the_whole_namespace(overlay: str) -> None:
    docs = render(overlay)
    deny = [
        p
        for p in of_kind(docs, "NetworkPolicy")
        if p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") and not p["spec"].get("egress")
    ]
    assert len(deny) == 1 and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    for policy in of_kind(docs, "NetworkPolicy"):
        selected = [d for d in of_kind(docs, "Deployment") if matches(policy["spec"]["podSelector"], pod_labels(d))]
        assert selected, f"NetworkPolicy {policy['metadata']['name']} selects no pods"


def test_the_renderer_reaches_only_dns_and_the_collector() -> None:
    """The renderer decodes untrusted uploads: it may open no connection but DNS and telemetry."""
    for overlay in OVERLAYS:
        docs = render(overlay)
        renderer_pod = (
            "media" if any(d["metadata"]["name"] == "media" for d in of_kind(docs, "Deployment")) else ("renderer")
        )
        reached = {(dst, port) for src, dst, port in flows(docs) if src == renderer_pod}
        dns = {(d, f"53/{proto}") for d in ("kube-dns", "node-local-dns") for proto in ("UDP", "TCP")}
        assert reached == dns | {("otel-collector", "4317/TCP")}, overlay


def test_the_evaluation_can_fail() -> None:
    """A policy that opens the renderer to the whole cluster is caught."""
    docs = render("gpu-split")
    leak = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "leak", "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app.kubernetes.io/component": "renderer"}},
            "policyTypes": ["Egress"],
            "egress": [{}],
        },
    }
    got = set(flows([*docs, leak]))
    assert ("renderer", "kube-apiserver", "443/TCP") in got
    assert ("renderer", "kube-apiserver", "443/TCP") not in set(flows(docs))
