"""docs/examples/live-minimal.html, the minimal client of docs/WEB.md, in Chromium: served by a
site of its own (another origin, listed in web.allowed_origins) against the real edge and mesh, it
plays the live stream, speaks a turn with its caption, and skips to the cut on interrupt; from an
origin that is not listed it says so, and an edge that is down is told apart from that; it
reconnects once a restarted edge is back, and watches a session a backend drives."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from talkmesh.bench.web import wait_js
from tests.mesh import inprocess_mesh
from tests.web.browser import browser_page, site_of

pytestmark = pytest.mark.timeout(120)

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "live-minimal.html"
LONG = "This answer goes on for a while, so that there is time to interrupt it in the middle. " * 3

#: JS: the video's frame as pixels (a canvas), its media time and what is buffered.
FRAME = """() => {
  const v = document.getElementById('video');
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext('2d');
  g.drawImage(v, 0, 0);
  return {pixels: Array.from(g.getImageData(0, 0, c.width, c.height).data.filter((_, i) => i % 16 === 0)),
          t: v.currentTime, start: v.buffered.length ? v.buffered.start(0) : null};
}"""


def log_with(text: str) -> str:
    """JS: the page's log once it holds ``text`` (else false)."""
    return f"(() => {{ const t = document.getElementById('log').textContent; return t.includes({text!r}) && t; }})()"


def example_site() -> contextlib.AbstractAsyncContextManager[int]:
    """The example file on a port of its own: http://127.0.0.1:<port>/ is another origin than the edge's."""

    async def page(_: web.Request) -> web.FileResponse:
        return web.FileResponse(EXAMPLE)

    return site_of("/live-minimal.html", page)


async def test_the_minimal_example_plays_speaks_with_captions_and_interrupts(tmp_path: Path) -> None:
    async with example_site() as port, example_site() as unlisted:
        env = {"TALKMESH_WEB__WEB__ALLOWED_ORIGINS": f"http://127.0.0.1:{port}"}
        async with inprocess_mesh(tmp_path, web=True, env=env) as mesh, browser_page() as (page, console):
            edge = mesh.web_url.rstrip("/")
            await page.goto(f"http://127.0.0.1:{port}/live-minimal.html?edge={edge}")
            await wait_js(page, "document.getElementById('video').currentTime > 0.5", timeout=30)
            idle = await page.evaluate(FRAME)
            assert idle["start"] is not None and abs(idle["start"]) < 0.05, "frame 0 at media time 0"

            await page.fill("#text", LONG)
            await page.click("#speak")
            await wait_js(page, "document.getElementById('caption').textContent.length > 0", timeout=20)
            caption = await page.text_content("#caption")
            assert caption and caption.strip() in LONG, caption
            speaking = [await page.evaluate(FRAME) for _ in range(5)]
            assert speaking[-1]["t"] > idle["t"] + 0.2 and speaking[-1]["t"] > speaking[0]["t"], "it plays"
            frames = [np.array(f["pixels"], dtype=np.int16) for f in [idle, *speaking]]
            assert max(np.abs(a - b).mean() for a, b in itertools.pairwise(frames)) > 0.5, "frames change"

            await page.click("#interrupt")
            log = await wait_js(page, log_with("interrupt acknowledged"), timeout=15)
            assert "t1 speaking" in log and "t1 stopped: STOP_REASON_INTERRUPTED" in log, log
            fps = float(log.split(" fps")[0].split()[-1])  # ("started 512x512, 25 fps")
            cut = int(log.split("cut at frame ")[1].split()[0]) / fps
            after = await page.evaluate(FRAME)
            assert after["t"] >= cut - 0.1, ("the playhead skipped to the cut", after["t"], cut)
            assert await page.text_content("#caption") == "", "the cut turn's caption is gone"
            assert not console.errors, console.errors

            # from an origin the edge does not list: refused, and the page says where to look
            await page.goto(f"http://127.0.0.1:{unlisted}/live-minimal.html?edge={edge}")
            log = await wait_js(page, log_with("refused"))
            assert "web.allowed_origins" in log, log


async def test_the_minimal_example_reconnects_after_the_edge_restarts(tmp_path: Path) -> None:
    """The edge is stopped (a rollout's SIGTERM) and started again on its address a few seconds
    later: the example says the edge is unreachable (not that its origin is refused) while it is
    down, and opens a new session once it is back."""
    from services.web.server import WebHost
    from talkmesh.common.telemetry import Telemetry

    async with example_site() as port:
        env = {"TALKMESH_WEB__WEB__ALLOWED_ORIGINS": f"http://127.0.0.1:{port}"}
        async with inprocess_mesh(tmp_path, web=True, env=env) as mesh, browser_page() as (page, console):
            old = mesh.hosts["web"]
            edge = mesh.web_url.rstrip("/")
            await page.goto(f"http://127.0.0.1:{port}/live-minimal.html?edge={edge}")
            await wait_js(page, log_with("started"), timeout=30)
            await old.stop(5.0)
            log = await wait_js(page, log_with("unreachable"), timeout=20)
            assert "END_REASON_DRAINING" in log and "closed 1000" in log, log
            assert "allowed_origins" not in log, log
            edge_port = int(edge.rsplit(":", 1)[1])
            config = dataclasses.replace(old.config, server=dataclasses.replace(old.config.server, port=edge_port))
            again = WebHost(config, Telemetry("web"))
            await again.start()
            try:
                log = await wait_js(page, "(() => { const t = document.getElementById('log').textContent; "
                                          "return t.split('started ').length > 2 && t; })()", timeout=40)
                await wait_js(page, "document.getElementById('video').currentTime > 0.5", timeout=20)
            finally:
                await again.stop(2.0)
            console.errors[:] = [e for e in console.errors if "ERR_CONNECTION_REFUSED" not in e]
            assert not console.errors, console.errors


async def test_the_minimal_example_watches_a_session_a_backend_drives(tmp_path: Path) -> None:
    """A backend opens the session over gRPC (the Python client) and speaks in it; the page only
    watches it (``&watch=<session id>``). A watch joins at a keyframe, frame n > 0: the example
    starts its playhead at n / fps, and the picture plays."""
    from talkmesh.client import TalkmeshClient

    async with example_site() as port:
        env = {"TALKMESH_WEB__WEB__ALLOWED_ORIGINS": f"http://127.0.0.1:{port}"}
        async with (
            inprocess_mesh(tmp_path, web=True, env=env) as mesh,
            TalkmeshClient(mesh.gateway) as client,
            client.live() as live,
            browser_page() as (page, console),
        ):

            async def read() -> None:
                async for _ in live:
                    pass

            reader = asyncio.create_task(read())
            await asyncio.sleep(3.0)  # (the session has run for a while: the watch joins past frame 0)
            edge = mesh.web_url.rstrip("/")
            await page.goto(f"http://127.0.0.1:{port}/live-minimal.html?edge={edge}&watch={live.session_id}")
            log = await wait_js(page, log_with("started"), timeout=30)
            assert f"session {live.session_id}" in log, log
            start = await wait_js(page, "(() => { const v = document.getElementById('video'); "
                                        "return v.buffered.length && v.buffered.start(0); })()", timeout=20)
            assert start > 2.0, start
            t0 = await wait_js(page, f"(() => {{ const t = document.getElementById('video').currentTime; "
                                     f"return t > {start} && t; }})()", timeout=20)
            await live.say("Hello from the backend.")
            await wait_js(page, log_with("speaking"), timeout=20)
            t1 = await page.evaluate("document.getElementById('video').currentTime")
            assert t1 > t0, (t0, t1)
            assert not console.errors, console.errors
            reader.cancel()
