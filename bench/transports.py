"""Transport and codec benchmark: the same session stream over every way in.

The bridge runs in its own process in front of the demo backend, as in
bench/fanout.py; the session state is the same realistic 20-member
planning-poker state, changed through the push endpoint. For each variant —

    ws-json, ws-msgpack, ws-json+deflate, sse, poll-json, poll-msgpack, poll-json+gzip

— N clients connect through a byte-counting TCP relay on loopback, and it
prints delivery latency p50/p99 at a steady rate, deliveries per second with
a few changes in flight, and the bytes on the wire (bridge → client, all
framing and HTTP headers included) per state update per client.

    python bench/transports.py            (about a minute)
    python bench/transports.py --smoke    (CI)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgpack
from fanout import Server

VARIANTS = [
    "ws-json",
    "ws-msgpack",
    "ws-json+deflate",
    "sse",
    "poll-json",
    "poll-msgpack",
    "poll-json+gzip",
]


class Relay:
    """A TCP relay that counts the bytes flowing from the server to the clients."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.down = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, count: bool) -> None:
        try:
            while data := await r.read(65536):
                if count:
                    self.down += len(data)
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                w.close()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(cr, sw, False), self._pipe(sr, cw, True))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    deliveries: int = 0
    per_change: dict[int, int] = field(default_factory=dict)
    complete: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    n: int = 0

    def seen(self, payload: dict[str, Any]) -> None:
        self.deliveries += 1
        if "t" in payload:
            self.latencies.append(time.monotonic() - payload["t"])
        i = payload.get("i")
        if isinstance(i, int):
            c = self.per_change[i] = self.per_change.get(i, 0) + 1
            if c == self.n:
                self.complete.put_nowait(i)


async def ws_client(http: aiohttp.ClientSession, base: str, user: str, variant: str,
                    stats: Stats, ready: asyncio.Event) -> None:  # fmt: skip
    codec = "msgpack" if "msgpack" in variant else "json"
    async with http.ws_connect(
        f"{base}/api/websocket", params={"sessionId": "bench", "userId": user},
        protocols=(f"bridge.v1.{codec}",), compress=15 if "deflate" in variant else 0,
    ) as ws:  # fmt: skip
        async for msg in ws:
            data = msgpack.unpackb(msg.data) if codec == "msgpack" else json.loads(msg.data)
            if data["type"] == "welcome":
                ready.set()
            elif data["type"] == "session":
                stats.seen(data["payload"])
            elif data["type"] == "ping":
                await ws.send_str(json.dumps({"type": "pong", "ts": data["ts"]}))


async def sse_client(http: aiohttp.ClientSession, base: str, user: str, variant: str,
                     stats: Stats, ready: asyncio.Event) -> None:  # fmt: skip
    async with http.get(
        f"{base}/api/events", params={"sessionId": "bench", "userId": user},
        headers={"Accept-Encoding": "identity"},
    ) as r:  # fmt: skip
        async for line in r.content:
            if line.startswith(b"data: "):
                data = json.loads(line[6:])
                if data["type"] == "welcome":
                    ready.set()
                elif data["type"] == "session":
                    stats.seen(data["payload"])


async def poll_client(http: aiohttp.ClientSession, base: str, user: str, variant: str,
                      stats: Stats, ready: asyncio.Event) -> None:  # fmt: skip
    msgpack_codec = "msgpack" in variant
    headers = {
        "Accept": "application/msgpack" if msgpack_codec else "application/json",
        "Accept-Encoding": "gzip" if "gzip" in variant else "identity",
    }
    params: dict[str, str] = {"sessionId": "bench", "userId": user}
    while True:
        async with http.get(f"{base}/api/poll", params=params, headers=headers) as r:
            raw = await r.read()
        body = msgpack.unpackb(raw) if msgpack_codec else json.loads(raw)
        for data in body["messages"]:
            if data["type"] == "welcome":
                params.update(resumeToken=data["resumeToken"], epoch=data["epoch"], wait="20")
                ready.set()
            elif data["type"] == "session":
                stats.seen(data["payload"])
        params["cursor"] = str(body["cursor"])


CLIENTS: dict[str, Callable[..., Awaitable[None]]] = {
    "ws": ws_client,
    "sse": sse_client,
    "poll": poll_client,
}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def run_variant(server: Server, variant: str, args: argparse.Namespace,
                      start_i: int) -> tuple[dict[str, float], int]:  # fmt: skip
    relay = Relay(server.port)
    await relay.start()
    base = f"http://127.0.0.1:{relay.port}"
    stats = Stats(n=args.clients)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=True) as http:
        kind = variant.split("-")[0]
        readies = [asyncio.Event() for _ in range(args.clients)]
        tasks = [
            asyncio.create_task(CLIENTS[kind](http, base, f"u{k % 20}", variant, stats, ev))
            for k, ev in enumerate(readies)
        ]
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in readies)), 30)
        i = start_i
        async with aiohttp.ClientSession() as pusher:
            for _ in range(3):  # warm up
                i += 1
                await server.push(pusher, i)
            await asyncio.sleep(1.0)
            stats.latencies.clear()
            stats.deliveries = 0
            relay.down = 0
            updates = 0
            t0 = time.monotonic()
            while time.monotonic() - t0 < args.seconds:
                i += 1
                updates += 1
                await server.push(pusher, i)
                await asyncio.sleep(max(0.0, t0 + updates / args.rate - time.monotonic()))
            await asyncio.sleep(1.0)
            wire = relay.down / max(1, updates * args.clients)
            latencies = list(stats.latencies)
            # flat out: a closed loop with 4 changes in flight
            while not stats.complete.empty():
                stats.complete.get_nowait()
            before = stats.deliveries
            t0 = time.monotonic()
            inflight = 0
            while time.monotonic() - t0 < args.seconds or inflight:
                while inflight < 4 and time.monotonic() - t0 < args.seconds:
                    i += 1
                    inflight += 1
                    await server.push(pusher, i)
                await asyncio.wait_for(stats.complete.get(), 30)
                inflight -= 1
            rate = (stats.deliveries - before) / (time.monotonic() - t0)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await relay.stop()
    return {
        "p50_ms": pct(latencies, 0.5) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "deliveries_per_s": rate,
        "wire_bytes_per_update": wire,
    }, i


async def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    if args.smoke:
        args.clients, args.seconds = 5, 1.0
    server = Server("bridge")
    await server.start()
    results: dict[str, dict[str, float]] = {}
    i = 0
    try:
        for variant in args.variants.split(","):
            print(f"{variant}: {args.clients} clients ...", flush=True)
            results[variant], i = await run_variant(server, variant, args, i)
    finally:
        await server.stop()
    state_json = len(json.dumps(__import__("fanout").state(1), separators=(",", ":")))
    print()
    print(f"transports benchmark: {args.clients} clients, {args.rate:g} changes/s, "
          f"a 20-member state of {state_json} bytes as JSON")  # fmt: skip
    print(f"{'variant':<18}{'p50':>10}{'p99':>10}{'deliveries/s':>15}{'bytes/update':>15}")
    for variant, r in results.items():
        print(
            f"{variant:<18}{r['p50_ms']:>8.2f}ms{r['p99_ms']:>8.2f}ms"
            f"{r['deliveries_per_s']:>15.0f}{r['wire_bytes_per_update']:>15.0f}"
        )
    print()
    print("json:", json.dumps(results))
    bad = [v for v, r in results.items() if not r["deliveries_per_s"] > 0]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
