"""Pass-through benchmark: the app's own requests through the bridge against the
app directly, in the same run.

A small aiohttp app (its own process) answers ``GET /small`` (a 200-byte JSON
body) and ``GET /big`` (1 MiB); the bridge (its own process, started with
``python -m bridge run``) passes them through. A closed-loop load (C clients,
each sending its next request when the last one is answered) runs for D seconds
against each of: the app directly, and the bridge. It prints requests per second
and latency p50/p99 for both, and the ratio.

    python bench/passthrough.py            (about 40 s)
    python bench/passthrough.py --smoke    (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from fanout import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]
SMALL = json.dumps({"id": "s1", "users": [{"id": f"u{i}", "voted": True} for i in range(5)]})
BIG = bytes(range(256)) * 4096  # 1 MiB


def serve_app(port: int) -> None:
    async def small(request: web.Request) -> web.Response:
        return web.Response(text=SMALL, content_type="application/json")

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG, content_type="application/octet-stream")

    async def state(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/big", big)
    app.router.add_get("/api/sessions/{sid}", state)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def load(url: str, clients: int, seconds: float) -> dict[str, float]:
    """Closed loop: requests/s and latency percentiles (ms)."""
    latencies: list[float] = []
    size = 0
    stop = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one() -> None:
            nonlocal size
            while time.monotonic() < stop:
                started = time.monotonic()
                async with http.get(url) as r:
                    body = await r.read()
                    assert r.status == 200, r.status
                latencies.append(time.monotonic() - started)
                size = len(body)

        began = time.monotonic()
        await asyncio.gather(*(one() for _ in range(clients)))
        wall = time.monotonic() - began
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"rps": len(latencies) / wall, "p50": pct(0.50), "p99": pct(0.99), "bytes": size}


async def main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    app_port, bridge_port = free_port(), free_port()
    py = sys.executable
    procs = [await asyncio.create_subprocess_exec(py, __file__, "--serve-app", str(app_port))]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(
            f"listen: {{host: 127.0.0.1, port: {bridge_port}}}\n"
            f"upstream:\n  url: http://127.0.0.1:{app_port}\n  commands: {{}}\n"
            "  keepalive: null\n  state: {path: '/api/sessions/{sessionId}'}\n"
            "security: {token_secret: bench}\nlogging: {level: warning}\n"
        )
        procs.append(
            await asyncio.create_subprocess_exec(
                py, "-m", "bridge", "run", "--config", str(cfg), cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
            )
        )  # fmt: skip
        try:
            await wait_http(f"http://127.0.0.1:{app_port}/small")
            await wait_http(f"http://127.0.0.1:{bridge_port}/readyz")
            results: dict[str, dict[str, float]] = {}
            for name in ("small", "big"):
                for kind, port in (("direct", app_port), ("bridge", bridge_port)):
                    print(f"{name} {kind}: {args.clients} clients for {args.seconds:g}s ...")
                    url = f"http://127.0.0.1:{port}/{name}"
                    await load(url, 2, 0.3)  # warm up the connections
                    results[f"{name}-{kind}"] = await load(url, args.clients, args.seconds)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                await p.wait()
    return results


def report(results: dict[str, dict[str, float]], clients: int) -> None:
    print(f"\npass-through benchmark: {clients} clients, closed loop")
    print(f"{'request':<22}{'direct':>14}{'bridge':>14}{'ratio':>9}")
    for name, label in (("small", "200 B JSON"), ("big", "1 MiB file")):
        d, b = results[f"{name}-direct"], results[f"{name}-bridge"]
        ratio = b["rps"] / d["rps"]
        print(f"{label + ' req/s':<22}{d['rps']:>14.0f}{b['rps']:>14.0f}{ratio:>8.2f}x")
        for p in ("p50", "p99"):
            print(f"{label + ' ' + p:<22}{d[p]:>11.2f} ms{b[p]:>11.2f} ms{b[p] / d[p]:>8.2f}x")
    print("\njson: " + json.dumps(results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small and short (CI)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--serve-app", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_app:
        serve_app(args.serve_app)
        sys.exit(0)
    if args.smoke:
        args.clients, args.seconds = 4, 1.0
    report(asyncio.run(main(args)), args.clients)
