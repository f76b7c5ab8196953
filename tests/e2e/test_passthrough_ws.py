"""The app's own WebSockets through pass-through, as hostile or careless peers use
them: close codes both ways, peers that vanish, malformed upgrades, a silent
app, a flood to a client that reads nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from bridge.app import make_app
from bridge.config import config_from_dict


class WsApp:
    def __init__(self) -> None:
        self.closes: list[Any] = []
        self.opened = 0

    def web(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ws", self.ws)
        app.router.add_get("/flood", self.flood)
        return app

    async def ws(self, request):
        self.opened += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and msg.data.startswith("close:"):
                await ws.close(code=int(msg.data[6:]), message=b"app")
        self.closes.append((ws.close_code, getattr(ws, "_close_message", None)))
        return ws

    async def flood(self, request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        try:
            for _ in range(2000):
                await ws.send_bytes(b"f" * 65536)
        except Exception as exc:  # noqa: BLE001
            self.closes.append(("flood-stopped", type(exc).__name__))
        self.closes.append(("flood-done", ws.closed))
        return ws


@pytest.fixture
async def ws_stack(aiohttp_server):
    app = WsApp()
    srv = await aiohttp_server(app.web())
    cfg = config_from_dict(
        {"upstream": {"url": f"http://127.0.0.1:{srv.port}"}, "security": {"token_secret": "t"}}
    )
    bridge = await aiohttp_server(make_app(cfg))
    return app, bridge


async def test_client_close_code_reaches_app(ws_stack):
    app, bridge = ws_stack
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(bridge.make_url("/ws"))
        await ws.close(code=4001, message=b"bye")
    await asyncio.sleep(0.5)
    print(app.closes)
    assert app.closes and app.closes[-1][0] == 4001


async def test_app_close_code_reaches_client(ws_stack):
    app, bridge = ws_stack
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(bridge.make_url("/ws"))
        await ws.send_str("close:4002")
        msg = await ws.receive(timeout=2)
        print(msg, ws.close_code)
        assert msg.type is WSMsgType.CLOSE and ws.close_code == 4002


async def test_client_tcp_drop_app_gets_a_legal_close_code(ws_stack):
    app, bridge = ws_stack
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(bridge.make_url("/ws"))
        await ws.send_str("hi")
        await asyncio.sleep(0.2)
        ws._conn.transport.abort() if getattr(
            ws, "_conn", None
        ) else ws._response.connection.transport.abort()
        await asyncio.sleep(1.0)
    print(app.closes)
    # 1005/1006/1015 must never be sent in a close frame (RFC 6455 7.4.1)
    assert app.closes and app.closes[-1][0] not in (1005, 1006, 1015), app.closes


async def test_client_close_without_code(ws_stack):
    app, bridge = ws_stack
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"101" in head
    writer.write(b"\x88\x80\x00\x00\x00\x00")  # masked close, no payload
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.close()
    await asyncio.sleep(0.3)
    print(app.closes)
    assert app.closes and app.closes[-1][0] not in (1005, 1006), app.closes


async def test_slow_reader_backpressure(ws_stack):
    """The app floods 128 MiB; the client reads nothing for 2 s. The bridge must not
    hold it all."""
    import resource

    app, bridge = ws_stack
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(bridge.make_url("/flood"), max_msg_size=0)
        await asyncio.sleep(2.0)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        await ws.close()
    print("maxrss grew by", (rss1 - rss0) // 1024, "MiB", app.closes)
    assert (rss1 - rss0) < 100 * 1024


async def test_handshake_without_key_opens_no_upstream_ws(ws_stack):
    app, bridge = ws_stack
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(300), 3)
    writer.close()
    print(head[:80], app.opened)
    assert app.opened == 0, "a bad client handshake opened a WebSocket at the app first"


async def test_a_silent_app_ws_handshake_is_504_within_the_timeout(aiohttp_server):
    import time

    app = web.Application()

    async def mute(request):
        await asyncio.sleep(6)
        return web.Response(text="late")

    app.router.add_get("/mute", mute)
    srv = await aiohttp_server(app)
    cfg = config_from_dict(
        {
            "upstream": {"url": f"http://127.0.0.1:{srv.port}", "passthrough": {"timeout": "1s"}},
            "security": {"token_secret": "t"},
        }
    )
    bridge = await aiohttp_server(make_app(cfg))
    t = time.monotonic()
    async with aiohttp.ClientSession() as http:
        try:
            await http.ws_connect(
                bridge.make_url("/mute"), timeout=aiohttp.ClientWSTimeout(ws_close=10)
            )
            status = 101
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status
    took = time.monotonic() - t
    print(f"WS handshake to a silent app: {status} after {took:.1f}s (passthrough.timeout 1s)")
    assert took < 2.5 and status == 504
