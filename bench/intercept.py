"""Intercept benchmark: the seed's scenario with an *unchanged* frontend.

S sessions × B browsers of the app's own page poll its state route
(``GET /api/sessions/{id}``, with ``If-None-Match``) every second. They go
through the bridge (pass-through on), once with ``state.intercept: true`` and
once without; the demo backend (its own process) counts the state requests it
serves. Meanwhile one vote a second changes a random session (sent to the app
directly, as the old frontend does), and each poller notes how long after the
change it first saw it.

It prints, for both runs, the app's state requests per second and the
staleness (p50/p99/max, in seconds) of the changes the pollers saw: the
time from a change to a browser's first poll that shows it, which includes
the browser's own second between polls; with intercept, at most one
``state.every`` more (the bridge's copy is that old at most).

    python bench/intercept.py            (about 1 minute)
    python bench/intercept.py --smoke    (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from fanout import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]


async def run(args: argparse.Namespace, intercept: bool) -> dict[str, Any]:
    backend_port, bridge_port = free_port(), free_port()
    py = sys.executable
    procs = [await asyncio.create_subprocess_exec(
        py, str(ROOT / "bench" / "serve.py"), "backend", str(backend_port), cwd=ROOT)]  # fmt: skip
    tmp = tempfile.TemporaryDirectory()
    cfg = Path(tmp.name) / "bench.yaml"
    cfg.write_text(
        f"listen: {{host: 127.0.0.1, port: {bridge_port}}}\n"
        f"upstream:\n  url: http://127.0.0.1:{backend_port}\n"
        f"  state: {{every: 1s, intercept: {'true' if intercept else 'false'}}}\n"
        "  keepalive: null\n  commands: {}\n"
        "limits: {max_connections_per_ip: 20000}\n"
        "security: {token_secret: bench}\nlogging: {level: error}\n"
    )
    procs.append(await asyncio.create_subprocess_exec(
        py, "-m", "bridge", "run", "--config", str(cfg), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL))  # fmt: skip
    backend = f"http://127.0.0.1:{backend_port}"
    bridge = f"http://127.0.0.1:{bridge_port}"
    try:
        await wait_http(f"{backend}/_demo/stats")
        await wait_http(f"{bridge}/readyz")
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            for s in range(args.sessions):  # the app's own frontend joins everyone
                for b in range(args.browsers):
                    body = {"userId": f"u{b}", "name": f"u{b}"}
                    async with http.post(f"{backend}/api/sessions/s{s}/join", json=body) as r:
                        assert r.status == 200
            changed: dict[str, float] = {}  # session -> when its last change was made
            staleness: list[float] = []
            stop = time.monotonic() + args.seconds

            async def browser(session: str) -> None:
                await asyncio.sleep(random.uniform(0, 1))
                etag, seen = None, 0.0
                while time.monotonic() < stop:
                    headers = {"If-None-Match": etag} if etag else {}
                    async with http.get(f"{bridge}/api/sessions/{session}", headers=headers) as r:
                        if r.status == 200:
                            etag = r.headers.get("ETag")
                            await r.read()
                            when = changed.get(session)
                            if when is not None and when > seen:
                                staleness.append(time.monotonic() - when)
                                seen = when
                    await asyncio.sleep(1.0)

            async def changes() -> None:
                n = 0
                while time.monotonic() < stop - 2:
                    n += 1
                    session = f"s{random.randrange(args.sessions)}"
                    url = f"{backend}/api/sessions/{session}/votes/u0"
                    async with http.put(url, json={"vote": str(n)}) as r:
                        assert r.status == 200
                    changed[session] = time.monotonic()
                    await asyncio.sleep(1.0)

            async with http.get(f"{backend}/_demo/stats") as r:
                before = sum((await r.json())["stateRequests"].values())
            started = time.monotonic()
            await asyncio.gather(changes(), *(browser(f"s{s}") for s in range(args.sessions)
                                              for _ in range(args.browsers)))  # fmt: skip
            elapsed = time.monotonic() - started
            async with http.get(f"{backend}/_demo/stats") as r:
                after = sum((await r.json())["stateRequests"].values())
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            await p.wait()
        tmp.cleanup()
    staleness.sort()

    def pct(p: float) -> float:
        return staleness[min(len(staleness) - 1, int(p * len(staleness)))] if staleness else 0.0

    return {"app_state_rps": round((after - before) / elapsed, 1), "changes_seen": len(staleness),
            "stale_p50": round(pct(0.5), 3), "stale_p99": round(pct(0.99), 3),
            "stale_max": round(staleness[-1], 3) if staleness else 0.0}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="small and short (CI)")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--browsers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    if args.smoke:
        args.sessions, args.browsers, args.seconds = 5, 3, 4.0
    results = {}
    for intercept in (False, True):
        label = "intercept" if intercept else "pass-through"
        print(f"{label}: {args.sessions} sessions x {args.browsers} browsers polling every 1 s ...")
        results[label] = asyncio.run(run(args, intercept))
    print(f"\nintercept benchmark: {args.sessions} sessions x {args.browsers} unchanged browsers")
    print(f"{'':<28}{'pass-through':>14}{'intercept':>14}")
    rows = (("app_state_rps", "app state requests/s"), ("stale_p50", "staleness p50 (s)"),
            ("stale_p99", "staleness p99 (s)"), ("stale_max", "staleness max (s)"))  # fmt: skip
    for key, label in rows:
        print(f"{label:<28}{results['pass-through'][key]:>14}{results['intercept'][key]:>14}")
    print("\njson: " + json.dumps(results))


if __name__ == "__main__":
    main()
