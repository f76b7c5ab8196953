"""Upstream load benchmark: what the legacy app sees while the bridge serves
100 sessions × 10 users, in front of an app that can take 4 requests at once.

The app (its own process) answers each request after 20 ms of work and
answers 503 to any request beyond 4 in flight (``--mode queue``: it queues
them instead); it forgets a user it has not heard of for 30 s (no keep-alive,
no command). The bridge (its own process: ``python -m bridge run``) keeps
users alive every 10 s and polls each session's state every second: about
200 requests a second in all, what such an app can serve (4 × 1/20 ms). The
Python client (bridge.client, WebSocket) plays the browsers. Phases:

- **mass arrival**: every client connects at once;
- **steady**: everyone connected, for a while;
- **vote burst**: every client votes within half a second;
- **restart**: the bridge is stopped (SIGTERM: it drains) and started again;
  every client must come back by itself.

It prints, per phase, the most requests the app had at once, the 503s it
answered, its requests per second, the users it forgot (expired), and how
long until every client was connected (or every vote acked).

    python bench/upstream_load.py            (about 2 minutes)
    python bench/upstream_load.py --smoke    (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from fanout import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bridge.client import BridgeClient  # noqa: E402

CAPACITY = 4
WORK = 0.02
EXPIRY = 30.0


def serve_app(port: int, mode: str) -> None:
    import logging

    # requests cut off when the bridge is stopped (the restart phase) are expected
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    sessions: dict[str, dict[str, dict[str, Any]]] = {}
    stats: dict[str, Any] = {"in_flight": 0, "most": 0, "refused": 0, "requests": 0,
                             "expired": 0, "joins": 0}  # fmt: skip
    gate = asyncio.Semaphore(CAPACITY)

    def sweep(sid: str) -> None:
        now = time.monotonic()
        users = sessions.setdefault(sid, {})
        for uid in [u for u, v in users.items() if now - v["seen"] > EXPIRY]:
            del users[uid]
            stats["expired"] += 1

    @web.middleware
    async def capacity(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_"):
            return await handler(request)
        stats["requests"] += 1
        stats["in_flight"] += 1  # what the app is asked at once, refused ones included
        stats["most"] = max(stats["most"], stats["in_flight"])
        try:
            if mode == "reject" and stats["in_flight"] > CAPACITY:
                stats["refused"] += 1
                return web.json_response({"error": "overloaded"}, status=503)
            async with gate:
                await asyncio.sleep(WORK)
                return await handler(request)
        finally:
            stats["in_flight"] -= 1

    async def join(request: web.Request) -> web.Response:
        sid, body = request.match_info["sid"], await request.json()
        sweep(sid)
        sessions[sid][str(body["userId"])] = {"seen": time.monotonic(), "vote": None}
        stats["joins"] += 1
        return web.json_response({"ok": True})

    async def touch(request: web.Request) -> web.Response:
        sid, body = request.match_info["sid"], await request.json()
        sweep(sid)
        user = sessions[sid].get(str(body["userId"]))
        if user is None:
            return web.json_response({"error": "unknown user"}, status=404)
        user["seen"] = time.monotonic()
        return web.json_response({"ok": True})

    async def vote(request: web.Request) -> web.Response:
        sid, uid = request.match_info["sid"], request.match_info["uid"]
        sweep(sid)
        user = sessions[sid].get(uid)
        if user is None:
            return web.json_response({"error": "unknown user"}, status=404)
        user["seen"], user["vote"] = time.monotonic(), (await request.json())["vote"]
        return web.json_response({"ok": True})

    async def leave(request: web.Request) -> web.Response:
        sid, body = request.match_info["sid"], await request.json()
        sessions.setdefault(sid, {}).pop(str(body["userId"]), None)
        return web.json_response({"ok": True})

    async def state(request: web.Request) -> web.Response:
        sid = request.match_info["sid"]
        sweep(sid)
        users = sessions[sid]
        voted = sum(1 for u in users.values() if u["vote"])
        return web.json_response({"id": sid, "users": sorted(users), "voted": voted})

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def reset_most(request: web.Request) -> web.Response:
        stats["most"] = stats["in_flight"]
        return web.json_response(stats)

    app = web.Application(middlewares=[capacity])
    r = app.router
    r.add_post("/api/sessions/{sid}/join", join)
    r.add_post("/api/sessions/{sid}/heartbeat", touch)
    r.add_put("/api/sessions/{sid}/votes/{uid}", vote)
    r.add_post("/api/sessions/{sid}/leave", leave)
    r.add_get("/api/sessions/{sid}", state)
    r.add_get("/_stats", get_stats)
    r.add_post("/_phase", reset_most)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None,
                backlog=4096)  # fmt: skip


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.app_port = free_port()
        self.bridge_port = free_port()
        self.tmp = tempfile.TemporaryDirectory()
        self.procs: list[asyncio.subprocess.Process] = []
        self.bridge: asyncio.subprocess.Process | None = None
        self.rows: list[dict[str, Any]] = []
        self.failed: list[str] = []

    async def start_bridge(self) -> None:
        cfg = Path(self.tmp.name) / "bench.yaml"
        cfg.write_text(
            f"listen: {{host: 127.0.0.1, port: {self.bridge_port}}}\n"
            f"upstream:\n  url: http://127.0.0.1:{self.app_port}\n"
            f"  max_in_flight: {self.args.max_in_flight}\n"
            f"  adaptive: {'true' if self.args.adaptive else 'false'}\n"
            "  timeout: 5s\n  retry: {attempts: 4, initial: 100ms, max: 2s}\n"
            "  breaker: {failures: 1000}\n"
            "  keepalive: {path: '/api/sessions/{sessionId}/heartbeat', "
            "json: {userId: '{userId}'}, every: 10s}\n"
            "  state: {every: 1s}\n"
            "presence: {grace: 10s}\nshutdown: {timeout: 2s}\n"
            "limits: {max_connections_per_ip: 20000, commands_per_second: 100}\n"
            "security: {token_secret: bench}\nlogging: {level: error}\n"
        )
        self.bridge = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "run", "--config", str(cfg), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await wait_http(f"http://127.0.0.1:{self.bridge_port}/readyz")

    async def app_stats(self, http: aiohttp.ClientSession, reset: bool = False) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.app_port}/" + ("_phase" if reset else "_stats")
        async with http.request("POST" if reset else "GET", url) as r:
            return dict(await r.json())

    async def phase(self, http: aiohttp.ClientSession, name: str, work: Any) -> None:
        before = await self.app_stats(http, reset=True)
        started = time.monotonic()
        took = await work()
        elapsed = time.monotonic() - started
        after = await self.app_stats(http)
        row = {
            "phase": name, "seconds": round(elapsed, 2), "done_in": took,
            "app_most_in_flight": after["most"],
            "app_503": after["refused"] - before["refused"],
            "app_rps": round((after["requests"] - before["requests"]) / max(elapsed, 1e-9), 1),
            "joins": after["joins"] - before["joins"],
            "expired": after["expired"] - before["expired"],
            "failed": len(self.failed),
        }  # fmt: skip
        if self.failed:
            print(f"  failed: {self.failed[:3]}")
            self.failed = []
        self.rows.append(row)
        print(f"{name}: {row}")

    async def run(self) -> None:
        port, mode = str(self.app_port), self.args.mode
        app = [sys.executable, __file__, "--serve-app", port, "--mode", mode]
        self.procs.append(await asyncio.create_subprocess_exec(*app))
        await wait_http(f"http://127.0.0.1:{self.app_port}/_stats")
        await self.start_bridge()
        n_sessions, n_users = self.args.sessions, self.args.users
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            clients = [
                BridgeClient(f"http://127.0.0.1:{self.bridge_port}", f"s{s}", f"u{u}",
                             transports=("websocket",), http=http, rng=random.random)
                for s in range(n_sessions) for u in range(n_users)
            ]  # fmt: skip

            async def arrive() -> float:
                t0 = time.monotonic()
                await asyncio.gather(*(c.connect(timeout=120) for c in clients))
                return round(time.monotonic() - t0, 2)

            async def steady() -> float:
                await asyncio.sleep(self.args.steady)
                return self.args.steady

            async def burst() -> float:
                t0 = time.monotonic()

                async def vote(c: BridgeClient) -> None:
                    await asyncio.sleep(random.uniform(0, 0.5))
                    await c.send_vote(str(random.randint(1, 13)))

                results = await asyncio.gather(*(vote(c) for c in clients), return_exceptions=True)
                self.failed = [repr(r) for r in results if isinstance(r, BaseException)]
                return round(time.monotonic() - t0, 2)

            async def restart() -> float:
                assert self.bridge is not None
                self.bridge.send_signal(signal.SIGTERM)
                await self.bridge.wait()
                t0 = time.monotonic()
                await self.start_bridge()
                while True:  # every client back by itself (a welcome after the restart)
                    back = sum(1 for c in clients if c.get_state()["isConnected"])
                    if back == len(clients) or time.monotonic() - t0 > 90:
                        break
                    await asyncio.sleep(0.1)
                await asyncio.sleep(self.args.steady)  # and they stay: no user expires
                return round(time.monotonic() - t0 - self.args.steady, 2)

            for name, work in (("mass arrival", arrive), ("steady", steady),
                               ("vote burst", burst), ("restart", restart)):  # fmt: skip
                await self.phase(http, name, work)
            back = sum(1 for c in clients if c.get_state()["isConnected"])
            print(f"clients connected at the end: {back} of {len(clients)}")
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def stop(self) -> None:
        for p in [*self.procs, *([self.bridge] if self.bridge else [])]:
            if p.returncode is None:
                p.terminate()
                await p.wait()
        self.tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small and short (CI)")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--steady", type=float, default=15.0)
    parser.add_argument("--max-in-flight", type=int, default=10)
    parser.add_argument("--adaptive", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--mode", choices=("reject", "queue"), default="reject")
    parser.add_argument("--serve-app", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_app:
        serve_app(args.serve_app, args.mode)
        return
    if args.smoke:
        args.sessions, args.users, args.steady = 5, 4, 2.0
    bench = Bench(args)

    async def go() -> None:
        try:
            await bench.run()
        finally:
            await bench.stop()

    asyncio.run(go())
    print(f"\nupstream load: {args.sessions} sessions x {args.users} users, app capacity "
          f"{CAPACITY} ({args.mode} above it), {WORK * 1000:.0f} ms a request, "
          f"max_in_flight {args.max_in_flight}, adaptive {args.adaptive}")  # fmt: skip
    print("json: " + json.dumps(bench.rows))


if __name__ == "__main__":
    main()
