"""The Ingress example for the web edge validates and routes to the web Service's HTTP port."""

from __future__ import annotations

import kubernetes_validate
import yaml

from tests.deploy.manifests import K8S, named, render


def test_the_web_ingress_example_validates_and_reaches_the_web_service() -> None:
    (ingress,) = [d for d in yaml.safe_load_all((K8S / "examples" / "web-ingress.yaml").read_text()) if d]
    for version in ("1.29.0", "1.34.0"):
        kubernetes_validate.validate(ingress, version, strict=True)
    svc = named(render("cpu"), "Service", "web")
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends == [{"name": "web", "port": {"name": "http"}}]
    assert "http" in {p["name"] for p in svc["spec"]["ports"]}
    assert ingress["metadata"]["namespace"] == svc["metadata"]["namespace"]
