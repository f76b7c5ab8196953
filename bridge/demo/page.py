"""Serve the planning-poker demo page through the bridge (``session-bridge demo``)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

PAGE = Path(__file__).parent / "index.html"


async def _index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(PAGE, headers={"Cache-Control": "no-cache"})


def add_demo_page(app: web.Application) -> None:
    app.router.add_get("/", _index)
    app.router.add_get("/demo", _index)
