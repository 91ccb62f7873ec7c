"""Stream limits agree across the gateway, the stages and the autoscalers (issue 19, defect 4).

The limits are written once (``ServiceSpec.max_streams`` in the registry); each service's config
default derives from it, and the rules of ``registry.HPA_TARGET_FRACTION`` hold in every overlay.
"""

from __future__ import annotations

import importlib

import pytest

from talkmesh.common import registry
from talkmesh.common.registry import HPA_TARGET_FRACTION, NAMES, SERVICES, spec
from tests.deploy.manifests import OVERLAYS, config_of, env_of, named, of_kind, render, service_containers


@pytest.mark.parametrize("service", NAMES)
def test_each_service_default_limit_is_the_registry_one(service: str) -> None:
    config = importlib.import_module(f"services.{service}.main").load_config(None, env={})
    assert config.server.max_concurrent_streams == spec(service).max_streams


def test_every_stage_admits_at_least_what_a_gateway_admits() -> None:
    gateway = spec("gateway").max_streams
    for s in SERVICES:
        assert s.max_streams >= gateway, f"{s.name} admits {s.max_streams} streams, a gateway {gateway}"


def _limit(docs, dep, container, service: str) -> int:  # type: ignore[no-untyped-def]
    env = env_of(container).get(f"{spec(service).env_prefix}__SERVER__MAX_CONCURRENT_STREAMS")
    if env is not None:
        return int(env)
    return int(
        config_of(docs, dep, container).get("server", {}).get("max_concurrent_streams", spec(service).max_streams)
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_targets_are_below_the_stream_limits_of_their_pods(overlay: str) -> None:
    docs = render(overlay)
    limits: dict[str, list[int]] = {}
    for service, dep, c in service_containers(docs):
        limits.setdefault(dep["metadata"]["name"], []).append(_limit(docs, dep, c, service))
    gateway_limits = [_limit(docs, d, c, s) for s, d, c in service_containers(docs) if s == "gateway"]
    for s, d, c in service_containers(docs):
        assert _limit(docs, d, c, s) >= max(gateway_limits), f"{overlay}: {s} admits fewer streams than a gateway"
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    assert hpas
    for hpa in hpas:
        target = hpa["spec"]["scaleTargetRef"]["name"]
        named(docs, "Deployment", target)
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods" and m["pods"]["metric"]["name"] == "talkmesh_streams_active":
                value = float(m["pods"]["target"]["averageValue"])
                bound = HPA_TARGET_FRACTION * min(limits[target])
                assert value <= bound, f"{overlay}: HPA {target} targets {value:g} streams per pod, over {bound:g}"


def test_the_rule_can_fail() -> None:
    assert registry.HPA_TARGET_FRACTION * spec("gateway").max_streams < 16  # the old gateway target
