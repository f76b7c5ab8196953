"""Real nginx, with the shipped deploy/nginx/bridge.conf (ports templated), in
front of the bridge: WebSocket, SSE without buffering delay, long-poll, and the
legacy app's own routes passed through."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.cluster import free_port, start_nginx
from tests.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def nginx(make_stack, tmp_path: Path):
    stack = await make_stack()
    port = free_port()
    site = (ROOT / "deploy" / "nginx" / "bridge.conf").read_text()
    site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{stack.bridge_server.port};")
    site = site.replace("server 127.0.0.1:3000;", f"server 127.0.0.1:{stack.backend_server.port};")
    assert "listen 80;" in site
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    proc = await start_nginx(tmp_path, site, port)
    yield stack, f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


async def test_a_websocket_session_through_nginx(nginx):
    stack, base = nginx
    async with stack.http.ws_connect(
        base + "/api/websocket", params={"sessionId": "ng", "userId": "u1"}
    ) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "welcome"
        await ws.send_json({"type": "vote", "id": "n1", "payload": {"vote": "3"}})
        while True:
            msg = await ws.receive_json(timeout=5)
            if msg["type"] == "ack":
                assert msg == {"type": "ack", "id": "n1", "status": "ok"}
                break


async def test_sse_through_nginx_delivers_each_event_at_once(nginx):
    stack, base = nginx
    async with stack.http.get(
        base + "/api/events", params={"sessionId": "ng", "userId": "u2"}
    ) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        while b"event: session" not in await r.content.readline():
            pass
        loop = asyncio.get_running_loop()
        for i in range(3):
            sent = loop.time()
            async with stack.http.post(
                stack.url("/bridge/push"), json={"sessionId": "ng", "state": {"i": i}},
                headers={"Authorization": "Bearer push-secret"},
            ) as p:  # fmt: skip
                assert p.status == 202
            while True:
                line = await asyncio.wait_for(r.content.readline(), 5)
                if line.startswith(b"data: ") and b'"i":%d' % i in line:
                    break
            assert loop.time() - sent < 0.5, "nginx buffered the event"


async def test_long_poll_through_nginx(nginx):
    stack, base = nginx
    async with stack.http.get(base + "/api/poll", params={"sessionId": "ng", "userId": "u3"}) as r:
        first = await r.json()
    w = first["messages"][0]
    params = {"sessionId": "ng", "userId": "u3", "resumeToken": w["resumeToken"],
              "epoch": w["epoch"], "cursor": str(first["cursor"]), "wait": "10"}  # fmt: skip
    async with stack.http.get(base + "/api/poll", params=params) as r:
        body = await r.json()  # the session state arrives after the first poll
    params["cursor"] = str(body["cursor"])
    held = asyncio.create_task(stack.http.get(base + "/api/poll", params=params))
    await asyncio.sleep(0.3)
    assert not held.done(), "the poll is held through nginx"
    other = await stack.connect("ng", "voter")
    await other.command("vote", {"vote": "8"})
    resp = await asyncio.wait_for(held, 5)
    assert (await resp.json())["messages"]
    answer = await (await stack.http.post(
        base + "/api/messages", params={"resumeToken": w["resumeToken"]},
        json={"type": "vote", "id": "p1", "payload": {"vote": "2"}},
    )).json()  # fmt: skip
    assert answer["acks"][0]["status"] == "ok"


async def test_the_legacy_app_routes_pass_through_and_private_ones_stay_private(nginx):
    stack: Stack
    stack, base = nginx
    await stack.connect("ng", "u4")
    async with stack.http.get(base + "/api/sessions/ng") as r:
        assert r.status == 200 and (await r.json())["id"] == "ng"
    async with stack.http.get(base + "/bridge/client.js") as r:
        assert r.status == 200
    async with stack.http.post(base + "/bridge/push", json={}) as r:
        assert r.status == 403
    async with stack.http.get(base + "/metrics") as r:
        assert r.status == 200  # allowed from 127.0.0.1 only


async def test_the_app_sees_the_real_client_and_host_through_nginx_and_the_bridge(
    aiohttp_server, tmp_path: Path
):
    # what deploy/nginx/bridge.conf tells the bridge (trusted_proxies 127.0.0.1, as
    # its header says), and what the bridge then tells the app, in every location
    from aiohttp import web

    from bridge.app import make_app
    from bridge.config import config_from_dict

    seen: list[dict[str, str]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    up = await aiohttp_server(app)
    cfg = config_from_dict({"upstream": {"url": str(up.make_url(""))},
                            "security": {"trusted_proxies": ["127.0.0.1"]}})  # fmt: skip
    bridge = await aiohttp_server(make_app(cfg))
    port = free_port()
    site = (ROOT / "deploy" / "nginx" / "bridge.conf").read_text()
    site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{bridge.port};")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{port};")
    proc = await start_nginx(tmp_path, site, port)
    try:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(f"http://127.0.0.1:{port}/app/page", headers={
                        "Host": "poker.example.com", "X-Forwarded-For": "203.0.113.9",
                        "X-Forwarded-Proto": "https"}) as r:  # fmt: skip
                    assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    for h in seen:
        # the client as nginx saw it, then nginx as the bridge saw it; not the forged one
        assert h["X-Forwarded-For"] == "127.0.0.1, 127.0.0.1", h
        assert h["X-Forwarded-Host"] == "poker.example.com", h
        assert h["X-Forwarded-Proto"] == "http", h  # nginx's own scheme, not the client's claim
        assert "203.0.113.9" not in str(h)
