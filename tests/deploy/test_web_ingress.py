"""The Ingress example for the web edge validates and routes to the web Service's HTTP port."""

from __future__ import annotations

import re

import kubernetes_validate
import yaml

from tests.deploy.manifests import K8S, OVERLAYS, config_of, named, render, runs


def test_the_web_ingress_example_validates_and_reaches_the_web_service() -> None:
    (ingress,) = [d for d in yaml.safe_load_all((K8S / "examples" / "web-ingress.yaml").read_text()) if d]
    for version in ("1.29.0", "1.34.0"):
        kubernetes_validate.validate(ingress, version, strict=True)
    svc = named(render("cpu"), "Service", "web")
    paths = [p for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert {p["backend"]["service"]["name"] for p in paths} == {"web"}
    assert {p["backend"]["service"]["port"]["name"] for p in paths} == {"http"}

    def routed(url: str) -> bool:  # Exact: the path itself; Prefix: whole path elements
        return any(
            url == p["path"] if p["pathType"] == "Exact" else url == p["path"] or url.startswith(p["path"] + "/")
            for p in paths
        )

    for public in ("/", "/static/app.js", "/v1/voices", "/v1/live", "/v1/avatars/x"):
        assert routed(public), public
    for internal in ("/metrics", "/healthz", "/readyz", "/v1x"):
        assert not routed(internal), internal
    assert "http" in {p["name"] for p in svc["spec"]["ports"]}
    assert ingress["metadata"]["namespace"] == svc["metadata"]["namespace"]


def nginx_size(value: str) -> int:
    """An nginx size ("33m", "512k", "1g", bytes): k, m and g are powers of 1024."""
    m = re.fullmatch(r"(\d+)([kmg]?)", value.strip().lower())
    assert m, value
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2)]


def test_the_ingress_body_limit_follows_the_renderers_upload_limit() -> None:
    """An avatar upload the renderer accepts (avatars.max_upload_bytes, plus the multipart form
    around it) passes the ingress; one it refuses does not travel to the renderer first."""
    (ingress,) = [d for d in yaml.safe_load_all((K8S / "examples" / "web-ingress.yaml").read_text()) if d]
    body = nginx_size(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"])
    for overlay in OVERLAYS:
        docs = render(overlay)
        dep, container = runs(docs, "renderer")
        max_upload = config_of(docs, dep, container)["avatars"]["max_upload_bytes"]
        assert max_upload < body <= max_upload + (1 << 20), (overlay, max_upload, body)
