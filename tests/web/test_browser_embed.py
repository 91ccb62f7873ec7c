"""Another site's page in Chromium uses the edge (docs/WEB.md "Embedding"): a listed origin
(web.allowed_origins) reads the API through CORS, renders and opens the live WebSocket; an origin
not listed can do none of it, and the edge's own page framed by it still works."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from talkmesh.bench.web import wait_js
from tests.mesh import inprocess_mesh
from tests.web.browser import browser_page, site_of

pytestmark = pytest.mark.timeout(120)

#: The other site's script: what it could do with the edge at ``base``.
PROBE = """async (base) => {
  const out = {};
  try {
    const r = await fetch(base + "/v1/voices");
    out.voices = r.ok ? (await r.json()).voices.length : "status " + r.status;
  } catch (e) { out.voices = "failed"; }
  try {
    const r = await fetch(base + "/v1/speak", {method: "POST", headers: {"Content-Type": "application/json"},
                                               body: JSON.stringify({text: "Hi."})});
    const body = await r.arrayBuffer();
    out.speak = {status: r.status, bytes: body.byteLength,
                 firstFragmentMs: r.headers.get("X-Talkmesh-First-Fragment-Ms"),
                 stages: r.headers.get("X-Talkmesh-Stages")};
  } catch (e) { out.speak = "failed"; }
  try {  // a "simple" request (no preflight): the CSRF a page could try without CORS
    const r = await fetch(base + "/v1/speak", {method: "POST", mode: "no-cors",
                                               headers: {"Content-Type": "text/plain"}, body: '{"text": "Hi."}'});
    out.simple = r.type;
  } catch (e) { out.simple = "failed"; }
  out.ws = await new Promise((resolve) => {
    const ws = new WebSocket(base.replace("http", "ws") + "/v1/live");
    ws.onopen = () => ws.send(JSON.stringify({config: {}}));
    ws.onmessage = (e) => {
      if (typeof e.data === "string" && e.data.includes("started")) { ws.close(); resolve("started"); }
    };
    ws.onclose = (e) => resolve("closed " + e.code);
  });
  return out;
}"""


def site() -> contextlib.AbstractAsyncContextManager[int]:
    """A blank page on a port of its own: http://localhost:<port>/ is another origin than the edge's."""

    async def index(_: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>shop</title>", content_type="text/html")

    return site_of("/", index)


async def test_a_listed_origin_embeds_and_another_cannot(tmp_path: Path) -> None:
    async with site() as listed, site() as other:
        env = {"TALKMESH_WEB__WEB__ALLOWED_ORIGINS": f"http://localhost:{listed}"}
        async with inprocess_mesh(tmp_path, web=True, env=env) as mesh, browser_page() as (page, _):
            base = mesh.web_url.rstrip("/")
            await page.goto(f"http://localhost:{listed}/")
            ok: dict[str, Any] = await page.evaluate(PROBE, base)
            assert ok["voices"] > 0 and ok["ws"] == "started", ok
            assert ok["speak"]["status"] == 200 and ok["speak"]["bytes"] > 1000, ok
            assert float(ok["speak"]["firstFragmentMs"]) > 0 and "gateway.total=" in ok["speak"]["stages"], ok

            await page.goto(f"http://localhost:{other}/")
            refused: dict[str, Any] = await page.evaluate(PROBE, base)
            assert refused["voices"] == "failed" and refused["speak"] == "failed", refused
            assert refused["ws"] == "closed 1006", refused
            assert mesh.active_streams()["gateway"] == 0

            # the edge's own page in the other site's iframe runs in the edge's origin
            await page.set_content(f'<iframe id="f" src="{base}/" allow="autoplay; microphone" width=900 height=700>')
            handle = await page.query_selector("#f")
            assert handle is not None
            inner = await handle.content_frame()
            assert inner is not None
            await wait_js(inner, "window.talkmesh && window.talkmesh.painted > 0", timeout=30)
            assert await inner.evaluate("window.talkmesh.connected") is True

            # the no-cors text/plain POSTs reached the edge and were refused there (415
            # INVALID_ARGUMENT from the listed origin, 403 PERMISSION_DENIED from the other), so
            # neither made the mesh render
            registry = mesh.telemetry["web"].metrics.registry
            for code in ("INVALID_ARGUMENT", "PERMISSION_DENIED"):
                labels = {"service": "web", "method": "POST /v1/speak", "code": code}
                assert (registry.get_sample_value("talkmesh_streams_total", labels) or 0) >= 1, code
