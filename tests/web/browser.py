"""Driving the page in the system's Chromium (Playwright for Python, no browser download).

Shared by the browser tests and `talkmesh bench web` lives in talkmesh/bench/web.py (the same
launch flags, kept there because the bench is not a test).
"""

from __future__ import annotations

import base64
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import pytest

#: JS: the frame on screen as a JPEG data URL, with its media time and the page's state.
GRAB = """() => {
  const v = document.getElementById('avatar');
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  c.getContext('2d').drawImage(v, 0, 0);
  return {url: c.toDataURL('image/jpeg', 0.95), t: v.currentTime, speaking: window.talkmesh.speakingVisible};
}"""


def chromium_path() -> str:
    from talkmesh.bench.web import find_chromium

    exe = find_chromium()
    if exe is None:
        pytest.skip("no Chromium: run scripts/ci_system_deps.sh (apt-get install chromium)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e .[dev])")
    return exe


@dataclass
class Grab:
    frame: np.ndarray
    t: float
    speaking: bool


@dataclass
class Console:
    """Console errors and uncaught page errors."""

    errors: list[str] = field(default_factory=list)

    def attach(self, page) -> None:  # type: ignore[no-untyped-def]
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


#: The window the page tests use (the README screenshot's size).
VIEWPORT = {"width": 1280, "height": 860}


@contextlib.asynccontextmanager
async def browser_page(
    extra_args: tuple[str, ...] = (),
    viewport: dict[str, int] | None = None,
    reduced_motion: str | None = None,
    phone: bool = False,
    scale: float | None = None,
) -> AsyncIterator[tuple[Any, Console]]:
    """A page in the system's headless Chromium (launched with talkmesh.bench.web's flags and
    ``extra_args``) and the console errors it collects; the browser is closed on the way out.
    ``reduced_motion``: the ``prefers-reduced-motion`` the page sees ("reduce", "no-preference");
    ``phone``: a touch screen without a mouse (``hover: none``, ``pointer: coarse``); ``scale``: the
    device pixels per CSS pixel (browser zoom is a smaller ``viewport`` at a larger ``scale``)."""
    from playwright.async_api import async_playwright

    from talkmesh.bench.web import launch

    exe = chromium_path()
    console = Console()
    async with async_playwright() as pw:
        browser = await launch(pw, exe, extra_args)
        try:
            options: dict[str, Any] = {"viewport": viewport} if viewport else {}
            if reduced_motion:
                options["reduced_motion"] = reduced_motion
            if phone:
                options.update(is_mobile=True, has_touch=True)
            if scale:
                options["device_scale_factor"] = scale
            page = await browser.new_page(**options)
            console.attach(page)
            yield page, console
        finally:
            await browser.close()


async def grab(page) -> Grab:  # type: ignore[no-untyped-def]
    got = await page.evaluate(GRAB)
    raw = base64.b64decode(got["url"].split(",", 1)[1])
    frame = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    return Grab(frame, float(got["t"]), bool(got["speaking"]))


@contextlib.asynccontextmanager
async def site_of(path: str, handler: Any) -> AsyncIterator[int]:
    """A web site of one page (``path`` answered by the aiohttp ``handler``) on a port of its own:
    http://127.0.0.1:<port>/ (or localhost) is another origin than the edge's. Yields the port."""
    from aiohttp import web

    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    try:
        yield tcp._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def has_chromium() -> bool:
    return shutil.which("chromium") is not None


async def upload_on_page(page: Any, url: str, name: str, mime: str, data: bytes) -> None:
    """Opens the page at ``url``, waits for its connection, and gives its avatar input a file
    called ``name`` holding ``data`` (as a drop or a pick would)."""
    from talkmesh.bench.web import wait_js

    await page.goto(url)
    await wait_js(page, "window.talkmesh.connected", timeout=15)
    await page.set_input_files("#avatar-file", files=[{"name": name, "mimeType": mime, "buffer": data}])
