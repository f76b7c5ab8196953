"""A cookie the app sets in one user's answer never goes with another's request."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from bridge.app import make_app
from bridge.config import config_from_dict
from tests.conftest import WSClient


async def test_the_apps_cookies_are_not_kept_between_users(aiohttp_server):
    seen: list[str | None] = []

    async def join(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        user = (await request.json())["u"]
        resp = web.json_response({"ok": True})
        resp.set_cookie("sid", f"session-of-{user}", path="/")
        return resp

    async def state(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        return web.json_response({"n": 1})

    app = web.Application()
    app.router.add_post("/r/{room}/join", join)
    app.router.add_get("/r/{room}", state)
    up = await aiohttp_server(app)
    # a host name, not an IP: a cookie jar keeps cookies for it
    cfg = config_from_dict({
        "upstream": {"url": f"http://localhost:{up.port}", "keepalive": None,
                     "commands": {"join": {"path": "/r/{sessionId}/join", "json": {"u": "{userId}"}}},
                     "state": {"path": "/r/{sessionId}", "every": "100ms"}},
        "security": {"token_secret": "t"},
    })  # fmt: skip
    bridge = await aiohttp_server(make_app(cfg))
    async with aiohttp.ClientSession() as http:
        clients = []
        for user in ("alice", "bob", "carol"):
            ws = await http.ws_connect(bridge.make_url("/api/websocket"),
                                       params={"sessionId": "s1", "userId": user})  # fmt: skip
            client = WSClient(ws, "s1", user, {})
            await client.welcome()
            clients.append(client)
        await clients[0].wait_state(lambda s: True)
        for c in clients:
            await c.close()
    assert len(seen) >= 4
    assert seen == [None] * len(seen), seen
