"""Servers for the benchmarks, each run in its own process by bench/fanout.py.

python bench/serve.py bare PORT       the baseline: a bare aiohttp server that
                                      JSON-encodes each change once and
                                      send_str()s it to every socket
python bench/serve.py backend PORT    the demo legacy backend
"""

from __future__ import annotations

import json
import resource
import sys
import weakref

from aiohttp import web


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


SOCKETS: web.AppKey[weakref.WeakSet[web.WebSocketResponse]] = web.AppKey("sockets")
SEQ: web.AppKey[list[int]] = web.AppKey("seq")


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=25.0, protocols=("bridge.v1.json",))
    await ws.prepare(request)
    request.app[SOCKETS].add(ws)
    await ws.send_str('{"type":"welcome"}')
    async for _ in ws:
        pass
    return ws


async def push(request: web.Request) -> web.Response:
    body = await request.json()
    seq = request.app[SEQ]
    seq[0] += 1
    data = json.dumps(
        {"type": "session", "seq": seq[0], "payload": body["state"]}, separators=(",", ":")
    )
    for ws in list(request.app[SOCKETS]):
        if not ws.closed:
            await ws.send_str(data)
    return web.json_response({"seq": seq[0]}, status=202)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def bare_app() -> web.Application:
    app = web.Application()
    app[SOCKETS] = weakref.WeakSet()
    app[SEQ] = [0]
    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/push", push)
    app.router.add_get("/healthz", health)
    return app


def main() -> None:
    raise_nofile()
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "bare":
        app = bare_app()
    else:
        sys.path.insert(0, ".")
        from bridge.demo.backend import make_backend_app

        app = make_backend_app(expiry=3600.0)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
