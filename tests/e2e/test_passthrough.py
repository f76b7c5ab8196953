"""Pass-through: every request the bridge does not serve goes to the app and back,
against a real app on loopback (upstream.md, "Pass-through")."""

from __future__ import annotations

import asyncio
import gzip
import io
import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from bridge.app import make_app
from bridge.config import config_from_dict
from bridge.transports.common import METRICS

BIG = bytes(range(256)) * 4096  # 1 MiB


class App:
    """The legacy app's own pages, login, API, a stream, a file and a WebSocket."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def web(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        r = app.router
        r.add_get("/", self.page)
        r.add_post("/login", self.login)
        r.add_route("*", "/echo/{tail:.*}", self.echo)
        r.add_get("/stream", self.stream)
        r.add_get("/big.bin", self.big)
        r.add_get("/slow", self.slow)
        r.add_get("/moved", self.moved)
        r.add_get("/zipped", self.zipped)
        r.add_get("/app/ws", self.ws)
        return app

    def note(self, request: web.Request, body: bytes = b"") -> None:
        self.seen.append({"method": request.method, "path": request.raw_path,
                          "headers": request.headers.copy(), "length": len(body),
                          "host": request.host})  # fmt: skip

    async def page(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.Response(text="<!DOCTYPE html><title>poker</title>", content_type="text/html")

    async def login(self, request: web.Request) -> web.Response:
        self.note(request)
        resp = web.json_response({"ok": True})
        resp.set_cookie("sid", "s3cr3t", httponly=True, path="/")
        return resp

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.note(request, body)
        return web.json_response({"length": len(body), "cookie": request.cookies.get("sid")})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        self.note(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: one\n\n")
        await asyncio.sleep(0.5)
        await resp.write(b"data: two\n\n")
        await resp.write_eof()
        return resp

    async def big(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.Response(body=BIG, content_type="application/octet-stream")

    async def slow(self, request: web.Request) -> web.Response:
        self.note(request)
        await asyncio.sleep(3)
        return web.Response(text="late")

    async def moved(self, request: web.Request) -> web.Response:
        self.note(request)
        raise web.HTTPFound("/elsewhere")

    async def zipped(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.Response(body=gzip.compress(b"x" * 1000), headers={
            "Content-Encoding": "gzip", "Content-Type": "text/plain"})  # fmt: skip

    async def ws(self, request: web.Request) -> web.WebSocketResponse:
        self.note(request)
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data == "bye":
                    await ws.close(code=4321, message=b"bye")
                    break
                await ws.send_str("echo:" + msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws


@pytest.fixture
async def front(aiohttp_server):
    app = App()
    server = await aiohttp_server(app.web())
    made: list[Any] = []

    async def make(passthrough: dict[str, Any] | None = None, **extra: Any) -> tuple[App, Any]:
        pt = {"timeout": "1s", "max_body": "4MiB", **(passthrough or {})}
        cfg = config_from_dict({
            "upstream": {"url": str(server.make_url("")), "passthrough": pt},
            "security": {"token_secret": "t"}, **extra,
        })  # fmt: skip
        bridge = await aiohttp_server(make_app(cfg))
        made.append(bridge)
        return app, bridge

    yield make


async def test_pages_cookies_and_bodies_pass_through(front):
    app, bridge = await front()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(bridge.make_url("/")) as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert await r.text() == "<!DOCTYPE html><title>poker</title>"
        async with http.post(bridge.make_url("/login")) as r:
            assert r.status == 200
            assert "sid=s3cr3t" in r.headers["Set-Cookie"] and "HttpOnly" in r.headers["Set-Cookie"]
        async with http.post(bridge.make_url("/echo/x?a=1&b=%20"), data=io.BytesIO(BIG * 2)) as r:
            assert await r.json() == {"length": 2 * len(BIG), "cookie": "s3cr3t"}
        assert app.seen[-1]["path"] == "/echo/x?a=1&b=%20"
        async with http.get(bridge.make_url("/big.bin")) as r:
            assert await r.read() == BIG
        async with http.get(bridge.make_url("/moved"), allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/elsewhere"
        async with http.get(bridge.make_url("/zipped"), auto_decompress=False) as r:
            assert r.headers["Content-Encoding"] == "gzip"
            assert gzip.decompress(await r.read()) == b"x" * 1000  # the app's bytes, as they were
    registry = bridge.app[METRICS].registry
    assert registry.get_sample_value(
        "bridge_passthrough_requests_total", {"method": "GET", "code": "2xx"}) == 3  # fmt: skip
    assert registry.get_sample_value(
        "bridge_passthrough_requests_total", {"method": "GET", "code": "3xx"}) == 1  # fmt: skip


async def test_the_answer_streams_as_it_comes(front):
    _, bridge = await front()
    async with aiohttp.ClientSession() as http:
        async with http.get(bridge.make_url("/stream")) as r:
            loop = asyncio.get_running_loop()
            started = loop.time()
            first = await r.content.readuntil(b"\n\n")
            assert first == b"data: one\n\n" and loop.time() - started < 0.4
            assert await r.content.readuntil(b"\n\n") == b"data: two\n\n"


async def test_an_http_1_0_client_gets_a_stream_without_chunks(front):
    _, bridge = await front()
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(b"GET /stream HTTP/1.0\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)  # to the end: the bridge closes
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    assert b"chunked" not in head.lower()
    assert body == b"data: one\n\ndata: two\n\n"


async def test_hop_by_hop_headers_and_forwarded_ones(front):
    app, bridge = await front()
    async with aiohttp.ClientSession() as http:
        headers = {"Connection": "keep-alive, X-Secret", "X-Secret": "1",
                   "Proxy-Authorization": "Basic x", "X-Forwarded-For": "6.6.6.6",
                   "X-Forwarded-Host": "evil.example", "X-Kept": "yes"}  # fmt: skip
        async with http.get(bridge.make_url("/echo/h"), headers=headers) as r:
            assert r.status == 200
    seen = app.seen[-1]["headers"]
    assert "X-Secret" not in seen and "Proxy-Authorization" not in seen
    assert seen["X-Kept"] == "yes"
    assert seen["X-Forwarded-For"] == "127.0.0.1"  # an untrusted peer's claim is not believed
    assert seen["X-Forwarded-Host"] == f"127.0.0.1:{bridge.port}"
    assert seen["X-Forwarded-Proto"] == "http"
    assert app.seen[-1]["host"] != "evil.example"
    # behind a trusted proxy its X-Forwarded-* are kept (and the proxy is added)
    app2, bridge2 = await front(security={"token_secret": "t", "trusted_proxies": ["127.0.0.1"]})
    async with aiohttp.ClientSession() as http:
        async with http.get(bridge2.make_url("/echo/h"), headers=headers) as r:
            assert r.status == 200
    seen = app2.seen[-1]["headers"]
    assert seen["X-Forwarded-For"] == "6.6.6.6, 127.0.0.1"
    assert seen["X-Forwarded-Host"] == "evil.example"


async def test_caps_and_failures_have_json_bodies(front, aiohttp_server):
    app, bridge = await front()
    async with aiohttp.ClientSession() as http:
        async with http.post(
            bridge.make_url("/echo/big"), data=io.BytesIO(b"x" * (5 * 1024 * 1024))
        ) as r:
            assert r.status == 413 and (await r.json())["error"]["code"] == "too_big"

        async def chunks():
            for _ in range(5):
                yield b"x" * (1024 * 1024)

        async with http.post(bridge.make_url("/echo/big"), data=chunks()) as r:
            assert r.status == 413  # no Content-Length: cut at the cap while streaming
        async with http.get(bridge.make_url("/slow")) as r:
            assert r.status == 504 and (await r.json())["error"]["code"] == "upstream_timeout"
    # the app down: 502
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    cfg = config_from_dict({"upstream": {"url": f"http://127.0.0.1:{dead}"},
                            "security": {"token_secret": "t"}})  # fmt: skip
    lone = await aiohttp_server(make_app(cfg))
    async with aiohttp.ClientSession() as http:
        async with http.get(lone.make_url("/anything")) as r:
            assert r.status == 502
            assert (await r.json())["error"]["code"] == "upstream_unavailable"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/bridge/admin/", 404), ("/BRIDGE/client.js.map", 404), ("/%62ridge/x", 404),
        ("/Bridge", 404), ("/API/WEBSOCKET", 404), ("/metrics/", 404), ("/a/../../etc/passwd", 400),
        ("/%2e%2e/x", 400),
    ],
)  # fmt: skip
async def test_the_bridges_own_paths_never_pass(front, path, status):
    app, bridge = await front()
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    head = (await reader.read(200)).decode("latin-1")
    writer.close()
    assert head.startswith(f"HTTP/1.1 {status}"), head
    assert app.seen == []


async def test_never_an_open_proxy(front):
    app, bridge = await front()
    for request in (
        "GET http://evil.example/echo/abs HTTP/1.1\r\nHost: evil.example\r\n",
        "GET /echo/host HTTP/1.1\r\nHost: evil.example\r\n",
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        writer.write((request + "Connection: close\r\n\r\n").encode())
        await writer.drain()
        head = (await reader.read(300)).decode("latin-1")
        writer.close()
        if request.startswith("CONNECT"):
            assert head.startswith("HTTP/1.1 405") or head.startswith("HTTP/1.1 400"), head
        else:
            assert head.startswith("HTTP/1.1 200"), head
    # the app (and nothing else) got them, with its own host
    assert [s["path"] for s in app.seen] == ["/echo/abs", "/echo/host"]
    assert all(s["host"].startswith("127.0.0.1:") for s in app.seen)


async def test_the_apps_own_websocket_frame_by_frame(front):
    app, bridge = await front()
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(bridge.make_url("/app/ws"), protocols=("chat",))
        assert ws.protocol == "chat"
        await ws.send_str("hi")
        assert (await ws.receive(timeout=2)).data == "echo:hi"
        await ws.send_bytes(b"\x01\x02\x03")
        assert (await ws.receive(timeout=2)).data == b"\x03\x02\x01"
        await ws.send_str("bye")
        msg = await ws.receive(timeout=2)
        assert msg.type is WSMsgType.CLOSE and ws.close_code == 4321
    assert app.seen[-1]["path"] == "/app/ws"
    # the bridge's own WebSocket is still the bridge's
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(bridge.make_url("/api/websocket"),
                                   params={"sessionId": "s1", "userId": "u1"})  # fmt: skip
        await ws.close()
    assert app.seen[-1]["path"] != "/api/websocket"


async def test_off_means_the_bridge_answers_404_itself(front):
    app, bridge = await front(passthrough={"enabled": False})
    async with aiohttp.ClientSession() as http:
        async with http.get(bridge.make_url("/")) as r:
            assert r.status == 404
    assert app.seen == []
