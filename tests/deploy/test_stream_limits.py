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
        if s.name in spec("gateway").calls or s.name == "gateway":
            assert s.max_streams >= gateway, f"{s.name} admits {s.max_streams} streams, a gateway {gateway}"


def test_a_default_web_edge_fits_in_a_default_gateway() -> None:
    """The web edge is the gateway's client: its live sessions and speaks (and its lists) must fit
    in what a gateway replica admits, or one visitor's sessions fill the gateway for everyone."""
    from services.web.config import WebSettings
    from talkmesh.devcerts import EDGE_KEY_LIMITS

    speaks = WebSettings().max_concurrent_speaks
    assert speaks == registry.WEB_MAX_SPEAKS
    edge_calls = spec("web").max_streams + speaks + registry.WEB_OTHER_CALLS
    assert edge_calls == EDGE_KEY_LIMITS["concurrent_streams"], "the edge key allows what the edge makes"
    assert edge_calls + registry.WEB_GATEWAY_SPARE <= spec("gateway").max_streams
    # no site-wide rates: the key's counters are every visitor's together (600 calls a minute was
    # ~200 page loads, then everyone got 429); per-visitor shares are the edge's
    assert EDGE_KEY_LIMITS == {"concurrent_streams": edge_calls, "requests_per_minute": 0, "uploads_per_hour": 0}


def _limit(docs, dep, container, service: str) -> int:  # type: ignore[no-untyped-def]
    env = env_of(container).get(f"{spec(service).env_prefix}__SERVER__MAX_CONCURRENT_STREAMS")
    if env is not None:
        return int(env)
    return int(
        config_of(docs, dep, container).get("server", {}).get("max_concurrent_streams", spec(service).max_streams)
    )


def hpas_of(docs):  # type: ignore[no-untyped-def]
    return of_kind(docs, "HorizontalPodAutoscaler")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_targets_are_below_the_stream_limits_of_their_pods(overlay: str) -> None:
    docs = render(overlay)
    limits: dict[str, list[int]] = {}
    for service, dep, c in service_containers(docs):
        limits.setdefault(dep["metadata"]["name"], []).append(_limit(docs, dep, c, service))
    gateway_limits = [_limit(docs, d, c, s) for s, d, c in service_containers(docs) if s == "gateway"]
    for s, d, c in service_containers(docs):
        if s != "web":  # (the gateway's client: the reverse, below)
            assert _limit(docs, d, c, s) >= max(gateway_limits), f"{overlay}: {s} admits fewer streams than a gateway"
    # every web pod at its limit (live sessions + speaks) fits in the gateway pods at theirs
    hpa_max = {h["spec"]["scaleTargetRef"]["name"]: h["spec"]["maxReplicas"] for h in hpas_of(docs)}
    web = max(limits["web"]) + registry.WEB_MAX_SPEAKS
    assert web * hpa_max["web"] <= min(gateway_limits) * hpa_max["gateway"], f"{overlay}: web pods outgrow the gateways"
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
