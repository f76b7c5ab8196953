"""Pass-through attacked as a hostile client would: other hosts, smuggling,
forged forwarding headers, bodies cut off or over the cap, odd request targets;
and a reload that turns it off. Each test asserts what must hold."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.app import ReloadSource, make_app, reload_config
from bridge.config import config_from_dict, load_config


class Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[dict[str, Any]] = []

    def web(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.any)
        return app

    async def any(self, request: web.Request) -> web.Response:
        if request.path == "/slowread":
            # read the body slowly as it comes
            n = 0
            async for chunk in request.content.iter_any():
                n += len(chunk)
            self.seen.append(
                {"path": request.raw_path, "len": n, "headers": request.headers.copy()}
            )
            return web.Response(text=f"got {n}")
        body = await request.read()
        self.seen.append(
            {
                "path": request.raw_path,
                "headers": request.headers.copy(),
                "len": len(body),
                "host": request.host,
            }
        )
        return web.Response(text=f"{self.name}:{request.raw_path}")


@pytest.fixture
async def stack(aiohttp_server):
    app, evil = Recorder("app"), Recorder("evil")
    app_srv = await aiohttp_server(app.web())
    evil_srv = await aiohttp_server(evil.web())

    async def make(pt: dict[str, Any] | None = None, **extra: Any):
        cfg = config_from_dict(
            {
                "upstream": {
                    "url": f"http://127.0.0.1:{app_srv.port}",
                    "passthrough": {"timeout": "1s", "max_body": "1MiB", **(pt or {})},
                },
                "security": {"token_secret": "t"},
                **extra,
            }
        )
        bridge = await aiohttp_server(make_app(cfg))
        return app, evil, evil_srv, bridge

    return make


async def raw(port: int, data: bytes, read: int = 2000, wait: float = 3.0) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        out = await asyncio.wait_for(reader.read(read), wait)
    except TimeoutError:
        out = b"<timeout>"
    writer.close()
    return out.decode("latin-1")


# aiohttp's own parser refuses these with a 400, and logs each at ERROR
@pytest.mark.allow_errors("aiohttp.server")
@pytest.mark.parametrize("target", ["@127.0.0.1:{evil}/x", "@127.0.0.1:{evil}"])
async def test_userinfo_target_does_not_reach_another_host(stack, target):
    app, evil, evil_srv, bridge = await stack()
    t = target.format(evil=evil_srv.port)
    head = await raw(
        bridge.port, f"GET {t} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    print("ANSWER:", head[:300])
    assert evil.seen == [], f"the bridge sent {evil.seen} to ANOTHER host"


async def test_options_star(stack):
    app, evil, evil_srv, bridge = await stack()
    head = await raw(bridge.port, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    print("ANSWER:", head[:400])
    assert not head.startswith("HTTP/1.1 500"), head


async def test_untrusted_forwarded_headers_are_not_passed(stack):
    app, evil, evil_srv, bridge = await stack()
    hdrs = {
        "Forwarded": "for=6.6.6.6;proto=https;host=evil.example",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Prefix": "/admin",
        "X-Forwarded-Ssl": "on",
        "X-Real-IP": "6.6.6.6",
    }
    async with aiohttp.ClientSession() as http:
        async with http.get(bridge.make_url("/h"), headers=hdrs) as r:
            assert r.status == 200
    seen = app.seen[-1]["headers"]
    leaked = {k: seen[k] for k in hdrs if k in seen}
    assert leaked == {}, f"an untrusted peer's forwarding claims reached the app: {leaked}"


async def test_connection_named_headers_across_two_connection_lines(stack):
    app, evil, evil_srv, bridge = await stack()
    await raw(
        bridge.port,
        b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n"
        b"Connection: X-Secret\r\nX-Secret: 1\r\n\r\n",
        wait=1,
    )
    seen = app.seen[-1]["headers"]
    assert "X-Secret" not in seen, "a header named in the 2nd Connection line was forwarded"


async def test_slow_upload_longer_than_timeout_is_not_504(stack):
    """The app reads the body as it comes and answers at its end; the upload takes
    3 s, the pass-through timeout is 1 s of the APP being silent."""
    app, evil, evil_srv, bridge = await stack()

    async def trickle():
        for _ in range(6):
            yield b"x" * 1000
            await asyncio.sleep(0.5)

    async with aiohttp.ClientSession() as http:
        async with http.post(bridge.make_url("/slowread"), data=trickle()) as r:
            text = await r.text()
            print(r.status, text)
            assert r.status == 200, f"{r.status} {text}"


@pytest.mark.xfail(
    strict=True,
    reason="known: aiohttp answers 100 Continue before any "
    "middleware runs; pass-through would need a catch-all route with its own "
    "expect handler (the 413 still comes, after the client began sending)",
)
async def test_expect_100_continue_over_cap_refused_before_the_body(stack):
    app, evil, evil_srv, bridge = await stack()
    head = await raw(
        bridge.port,
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n",
        wait=1.5,
    )
    print("ANSWER:", head[:300])
    assert head.startswith("HTTP/1.1 413"), f"got first: {head[:60]!r}"


async def test_client_gone_mid_download_logs_no_app_fault(stack, aiohttp_server, caplog):
    big = web.Application()

    async def huge(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(400):
            await resp.write(b"y" * 65536)
        return resp

    big.router.add_get("/huge", huge)
    srv = await aiohttp_server(big)
    cfg = config_from_dict(
        {"upstream": {"url": f"http://127.0.0.1:{srv.port}"}, "security": {"token_secret": "t"}}
    )
    bridge = await aiohttp_server(make_app(cfg))
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(b"GET /huge HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.read(1000)
    writer.transport.abort()
    await asyncio.sleep(1.0)
    msgs = [
        f"{r.levelname} {r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith("bridge")
    ]
    print(msgs)
    assert not any("broke off" in m for m in msgs), msgs


async def test_over_cap_chunked_body_never_reaches_the_app_as_complete(stack):
    app, evil, evil_srv, bridge = await stack()

    async def chunks():
        for _ in range(3):
            yield b"x" * (512 * 1024)

    async with aiohttp.ClientSession() as http:
        async with http.post(bridge.make_url("/up"), data=chunks()) as r:
            print(r.status, await r.text())
            assert r.status == 413
    await asyncio.sleep(0.5)
    print("APP SAW:", [(s["path"], s["len"]) for s in app.seen])
    assert app.seen == [], "the app read a truncated body as if it were complete"


async def test_client_gone_mid_upload_app_never_sees_a_complete_truncated_body(stack):
    app, evil, evil_srv, bridge = await stack()
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(5):
        writer.write(b"400\r\n" + b"z" * 1024 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
    writer.transport.abort()  # gone, mid-body
    await asyncio.sleep(1.0)
    print("APP SAW:", [(s["path"], s["len"]) for s in app.seen])
    assert app.seen == [], "the app read a truncated body as if it were complete"


async def test_client_gone_mid_upload_with_length(stack):
    app, evil, evil_srv, bridge = await stack()
    reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
    writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(5):
        writer.write(b"z" * 1024)
        await writer.drain()
        await asyncio.sleep(0.1)
    writer.transport.abort()
    await asyncio.sleep(1.0)
    print("APP SAW:", [(s["path"], s["len"]) for s in app.seen])
    assert app.seen == []


@pytest.mark.allow_errors("aiohttp.server")  # aiohttp's parser: 400, logged at ERROR
@pytest.mark.parametrize(
    "req",
    [
        b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcdGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 0\r\n\r\n5\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
async def test_smuggling_never_reaches_the_app_as_two(stack, req):
    app, evil, evil_srv, bridge = await stack()
    head = await raw(bridge.port, req, wait=1.5)
    print("ANSWER:", head[:40].replace("\r\n", " | "), "APP SAW:", [s["path"] for s in app.seen])
    assert "/smuggled" not in [s["path"] for s in app.seen]


async def test_head_keeps_length(stack):
    app, evil, evil_srv, bridge = await stack()
    head = await raw(
        bridge.port, b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", wait=1.5
    )
    print("HEAD ANSWER:", head.replace("\r\n", " | "))
    assert "Content-Length" in head and "chunked" not in head.lower()


async def test_reload_turning_passthrough_off_is_applied_or_said(aiohttp_server, tmp_path, caplog):
    app = web.Application()

    async def h(r):
        return web.Response(text="the app")

    app.router.add_get("/{t:.*}", h)
    srv = await aiohttp_server(app)
    path = tmp_path / "bridge.yaml"
    base = f"upstream: {{url: 'http://127.0.0.1:{srv.port}', max_in_flight: 8}}\nsecurity: {{token_secret: t}}\n"
    path.write_text(base)
    bridge = await aiohttp_server(
        make_app(load_config(str(path)), reload_from=ReloadSource(str(path)))
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(bridge.make_url("/x")) as r:
            assert r.status == 200
        path.write_text(
            base.replace("max_in_flight: 8}", "max_in_flight: 2, passthrough: {enabled: false}}")
        )
        assert reload_config(bridge.app)
        from bridge.transports.common import BRIDGE

        lim = bridge.app[BRIDGE]
        print("limit after reload:", lim.upstream.limits.limiter.limit)
        async with http.get(bridge.make_url("/x")) as r:
            print("after reload with passthrough.enabled: false ->", r.status, await r.text())
            logs = [r.getMessage() for r in caplog.records if "restart" in r.getMessage()]
            print("restart warnings:", logs)
            assert r.status == 404, "pass-through still on after the reload"
        path.write_text(base)  # and on again
        assert reload_config(bridge.app)
        async with http.get(bridge.make_url("/x")) as r:
            assert r.status == 200 and await r.text() == "the app"
