"""Soak for leaks, bounded: thousands of connect / resume / disconnect cycles over
all transports, sessions created and abandoned, against a bridge process. After
it: RSS back within 10 % of its post-warm-up level, asyncio tasks and sessions
back to baseline, idle sessions reclaimed. `make soak` runs it long
(SOAK_CYCLES); CI runs it short."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys
from pathlib import Path

import aiohttp

from bridge.demo.backend import make_backend_app

CYCLES = int(os.environ.get("SOAK_CYCLES", "1500"))
WARMUP = 1000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def cycle(http: aiohttp.ClientSession, base: str, rng: random.Random, n: int) -> None:
    session = f"soak{n // 7}"  # a new session every few cycles; old ones are abandoned
    user = f"u{rng.randrange(5)}"
    transport = ("websocket", "sse", "poll")[n % 3]
    params = {"sessionId": session, "userId": user}
    if transport == "websocket":
        async with http.ws_connect(base + "/api/websocket", params=params) as ws:
            welcome = await ws.receive_json(timeout=10)
        if rng.random() < 0.5:  # resume once
            resume = {**params, "resumeToken": welcome["resumeToken"], "epoch": welcome["epoch"],
                      "lastSeq": str(welcome["seq"])}  # fmt: skip
            async with http.ws_connect(base + "/api/websocket", params=resume) as ws:
                await ws.receive_json(timeout=10)
    elif transport == "sse":
        async with http.get(base + "/api/events", params=params) as r:
            while b"event: welcome" not in await r.content.readline():
                pass
    else:
        async with http.get(base + "/api/poll", params=params) as r:
            body = await r.json()
        token = body["messages"][0]["resumeToken"]
        async with http.post(base + "/api/messages", params={"resumeToken": token},
                             json={"type": "vote", "id": f"s{n}", "payload": {"vote": "1"}}) as r:  # fmt: skip
            assert r.status == 200


async def test_soak_leaves_no_leaks(tmp_path: Path, aiohttp_server, unused_tcp_port_factory):
    backend = await aiohttp_server(make_backend_app())
    port = unused_tcp_port_factory()
    config = tmp_path / "soak.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"upstream: {{url: '{backend.make_url('')}', state: {{every: 1s}}}}\n"
        "presence: {grace: 200ms}\nheartbeat: {interval: 500ms, timeout: 1s}\n"
        "admin: {token: soak}\nlogging: {level: warning}\n"
        "limits: {commands_per_second: 1000, max_connections_per_ip: 20000}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while b"listening on" not in await proc.stdout.readline():
            pass
    base = f"http://127.0.0.1:{port}"
    rng = random.Random(7)
    admin = {"Authorization": "Bearer soak"}

    async def run(first: int, count: int) -> None:
        # its own client session, closed at the end: the server's tasks for idle
        # keep-alive connections of the load would otherwise count as tasks left
        sem = asyncio.Semaphore(20)
        async with aiohttp.ClientSession() as load:

            async def one(n: int) -> None:
                async with sem:
                    await cycle(load, base, rng, n)

            await asyncio.gather(*(one(n) for n in range(first, first + count)))

    async def settled() -> dict:
        # idle sessions are reclaimed once their users' grace ran out
        for _ in range(100):
            async with http.get(base + "/bridge/admin/sessions", headers=admin) as r:
                state = await r.json()
            if not state["sessions"] and not state["connections"]:
                return state
            await asyncio.sleep(0.1)
        raise AssertionError(f"not settled: {state}")

    try:
        # one connection per look, closed after it
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            await run(0, WARMUP)
            baseline = await settled()
            rss0 = rss_kib(proc.pid)
            await run(WARMUP, CYCLES)
            after = await settled()
            # handlers of connections just closed may still be ending: a leak stays
            for _ in range(50):
                if after["tasks"] <= baseline["tasks"] + 2:
                    break
                await asyncio.sleep(0.1)
                after = await settled()
            await asyncio.sleep(0.5)
            rss1 = rss_kib(proc.pid)
        print(f"\nsoak: {CYCLES} cycles; RSS {rss0} → {rss1} KiB ({(rss1 - rss0) / rss0:+.1%}); "
              f"tasks {baseline['tasks']} → {after['tasks']}")  # fmt: skip
        assert after["tasks"] <= baseline["tasks"] + 2, (baseline, after, after.get("taskKinds"))
        assert rss1 <= rss0 * 1.10, f"RSS grew from {rss0} to {rss1} KiB"
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await proc.wait()
