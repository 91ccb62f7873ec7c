"""The page's upload result says what the renderer reported: the avatar's other names, and a
video's frames without a face (shown as they are, without lip-sync)."""

from __future__ import annotations

from aiohttp import web

from services.web.server import STATIC
from tests.web.browser import browser_page


async def _index(_: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def test_the_upload_result_names_rejected_frames_and_other_names() -> None:
    app = web.Application()
    app.router.add_get("/", _index)
    app.router.add_static("/static", STATIC)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with browser_page() as (page, _):
            await page.goto(f"http://127.0.0.1:{port}/")
            message = "avatar => window.talkmesh.uploadMessage(avatar)"
            video = {
                "id": "0123456789abcdef0123",
                "name": "clip",
                "names": ["clip"],
                "frame_count": 120,
                "face": {"frames_kept": 100, "frames_rejected": 20},
            }
            text = await page.evaluate(message, video)
            assert text.startswith("avatar “clip” is ready. The face was found on 100 of 120 frames")
            assert "the 20 frame(s) without a face are shown as they are, without lip-sync" in text
            whole = {**video, "face": {"frames_kept": 120}}  # (zero values are absent in JSON)
            assert await page.evaluate(message, whole) == "avatar “clip” is ready"
            again = {"id": "0123456789abcdef0123", "name": "b", "names": ["b", "a"], "frame_count": 1}
            assert await page.evaluate(message, again) == "avatar “b” is ready (also named “a”)"
    finally:
        await runner.cleanup()
