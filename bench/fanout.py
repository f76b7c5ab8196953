"""Fan-out benchmark: the bridge against a bare aiohttp loop, in the same run.

N WebSocket clients sit in one session of the bridge, which is in front of
the demo backend; the session state (a realistic 20-member planning-poker
state) changes through the push endpoint. The same load runs against a bare
aiohttp server that JSON-encodes each change once and ``send_str``s it to
every socket, so the ratio between the two survives machine drift.

Every server and the load generator (bench/loadgen.py, raw asyncio) run in
their own processes; CPU is read from /proc for each of them.

It prints, for both servers:

- delivery latency p50/p99/max at a steady change rate (default N=1000, 5/s);
- deliveries per second flat out (closed loop: at most 64 changes in flight),
  server CPU-seconds per 10,000 deliveries, and the load generator's;
- RSS per idle connection at N = 1k/5k/10k;
- idle CPU at the largest N (heartbeats on: the bridge's 25 s ping and the
  bare server's 25 s protocol ping).

    python bench/fanout.py            full run (about 3 minutes)
    python bench/fanout.py --smoke    small and short (CI)
    python bench/fanout.py --backplane redis --instances 2
                                      the bridge as two processes on one
                                      redis-server (clients split between them,
                                      changes pushed to the first); its CPU and
                                      RSS figures are the sum of both bridge
                                      processes and redis-server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
PUSH_SECRET = "bench-push-secret"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WINDOW = 64  # changes in flight in the flat-out phase


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def state(i: int, revealed: bool = False) -> dict[str, Any]:
    """A realistic 20-member session state (about 1.4 KB of JSON)."""
    names = [
        "Ada",
        "Brian",
        "Chen",
        "Dana",
        "Emeka",
        "Fatima",
        "Gustav",
        "Hana",
        "Ivan",
        "Jo",
        "Kofi",
        "Lena",
        "Mateo",
        "Nia",
        "Olga",
        "Pavel",
        "Quinn",
        "Rosa",
        "Sven",
        "Tariq",
    ]
    cards = ["1", "2", "3", "5", "8", "13"]
    return {
        "i": i,
        "t": time.monotonic(),
        "id": "bench",
        "round": 1 + i // 50,
        "revealed": revealed,
        "users": [
            {
                "id": f"u{k}",
                "name": f"{n} Example",
                "voted": (i + k) % 3 != 0,
                **({"vote": cards[(i + k) % len(cards)]} if revealed else {}),
            }
            for k, n in enumerate(names)
        ],
    }


class LoadGen:
    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.complete: asyncio.Queue[int] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "bench" / "loadgen.py"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            msg = json.loads(line)
            if "complete" in msg:
                self.complete.put_nowait(int(msg["complete"]))
            else:
                self.replies.put_nowait(msg)

    async def call(self, timeout: float = 300, **cmd: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(self.replies.get(), timeout)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            await self.call(cmd="close", timeout=10)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        await self.proc.wait()
        if self._reader is not None:
            self._reader.cancel()


@dataclass
class Server:
    kind: str  # "bridge" or "bare"
    backplane: str = "memory"
    instances: int = 1
    procs: list[asyncio.subprocess.Process] = field(default_factory=list)
    #: what the CPU and RSS figures add up: the bridge processes (and redis-server)
    measured: list[int] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def label(self) -> str:
        if self.kind == "bridge" and self.backplane == "redis":
            return f"bridge+redis x{self.instances}"
        return self.kind

    def cpu(self) -> float:
        return sum(proc_cpu(pid) for pid in self.measured)

    def rss_kib(self) -> int:
        return sum(proc_rss_kib(pid) for pid in self.measured)

    @property
    def ws_urls(self) -> list[str]:
        if self.kind == "bare":
            return [f"ws://127.0.0.1:{self.port}/ws?sessionId=bench"]
        return [f"ws://127.0.0.1:{p}/api/websocket?sessionId=bench" for p in self.ports]

    async def start(self) -> None:
        self.ports = [free_port() for _ in range(self.instances if self.kind == "bridge" else 1)]
        py = sys.executable
        if self.kind == "bare":
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    py, str(ROOT / "bench" / "serve.py"), "bare", str(self.port)
                )
            )
            self.measured.append(self.procs[-1].pid)
        else:
            backend_port = free_port()
            self.procs.append(
                await asyncio.create_subprocess_exec(
                    py, str(ROOT / "bench" / "serve.py"), "backend", str(backend_port), cwd=ROOT
                )
            )
            self.tmp = tempfile.TemporaryDirectory()
            backplane = "backplane: {kind: memory}\n"
            if self.backplane == "redis":
                redis, redis_port = await start_redis(self.tmp.name)
                self.procs.append(redis)
                self.measured.append(self.procs[-1].pid)
                backplane = f"backplane: {{kind: redis, url: 'redis://127.0.0.1:{redis_port}/0'}}\n"
            cfg = Path(self.tmp.name) / "bench.yaml"
            cfg.write_text(
                backplane + f"listen: {{host: 127.0.0.1, port: {self.port}}}\n"
                f"upstream:\n  url: http://127.0.0.1:{backend_port}\n  state: {{every: 1h}}\n"
                f"  push: {{path: /bridge/push, secret: {PUSH_SECRET}}}\n"
                "limits: {max_connections: 19000, max_clients_per_session: 19000,"
                " max_connections_per_ip: 19000}\n"
                "security: {token_secret: bench-token-secret}\n"
                "logging: {level: warning}\n"
            )
            await wait_http(f"http://127.0.0.1:{backend_port}/api/sessions/none", ok=(404,))
            for port in self.ports:
                self.procs.append(
                    await asyncio.create_subprocess_exec(
                        py, "-m", "bridge", "run", "--config", str(cfg), "--port", str(port),
                        cwd=ROOT, stdout=asyncio.subprocess.DEVNULL,
                    )
                )  # fmt: skip
                self.measured.append(self.procs[-1].pid)
        ready = "/readyz" if self.kind == "bridge" else "/healthz"
        for port in self.ports:
            await wait_http(f"http://127.0.0.1:{port}{ready}")

    async def push(self, http: aiohttp.ClientSession, i: int) -> None:
        if self.kind == "bare":
            url = f"http://127.0.0.1:{self.port}/push"
            body: dict[str, Any] = {"state": state(i, revealed=i % 2 == 1)}
            headers = {}
        else:
            url = f"http://127.0.0.1:{self.port}/bridge/push"
            body = {"sessionId": "bench", "state": state(i, revealed=i % 2 == 1)}
            headers = {"Authorization": f"Bearer {PUSH_SECRET}"}
        async with http.post(url, json=body, headers=headers) as r:
            if r.status != 202:
                raise RuntimeError(f"push answered {r.status}: {await r.text()}")

    async def stop(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
            try:
                await asyncio.wait_for(p.wait(), 20)
            except TimeoutError:
                p.kill()
                await p.wait()
        self.procs.clear()
        if self.tmp is not None:
            self.tmp.cleanup()


async def start_redis(workdir: str) -> tuple[asyncio.subprocess.Process, int]:
    """redis-server without persistence on a free loopback port."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", workdir, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return proc, port


async def wait_http(url: str, ok: tuple[int, ...] = (200,), timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as r:
                    if r.status in ok:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not come up")
            await asyncio.sleep(0.1)


async def connect(gen: LoadGen, server: Server, n: int) -> None:
    """``n`` clients, split evenly between the server's instances."""
    urls = server.ws_urls
    for k, url in enumerate(urls):
        share = n // len(urls) + (1 if k < n % len(urls) else 0)
        reply = await gen.call(cmd="connect", url=url, n=share, users=20)
        if reply["failed"]:
            raise RuntimeError(f"{server.label}: {reply['failed']} of {share} connections failed")


async def steady(
    server: Server,
    gen: LoadGen,
    rate: float,
    seconds: float,
    http: aiohttp.ClientSession,
    start_i: int,
) -> tuple[dict[str, Any], int]:
    await gen.call(cmd="reset")
    i = start_i
    interval = 1.0 / rate
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        i += 1
        await server.push(http, i)
        await asyncio.sleep(max(0.0, t0 + (i - start_i) * interval - time.monotonic()))
    await asyncio.sleep(1.0)
    return await gen.call(cmd="report"), i


async def flat_out(
    server: Server, gen: LoadGen, seconds: float, n: int, http: aiohttp.ClientSession, start_i: int
) -> tuple[dict[str, Any], int]:
    """Closed loop: at most WINDOW changes in flight, the next pushed as one completes."""
    while not gen.complete.empty():
        gen.complete.get_nowait()
    before = await gen.call(cmd="reset", timing=False)
    cpu0 = server.cpu()
    t0 = time.monotonic()
    i = start_i
    inflight = 0
    done = 0
    while True:
        while inflight < WINDOW and time.monotonic() - t0 < seconds:
            i += 1
            inflight += 1
            await server.push(http, i)
        if inflight == 0:
            break
        try:
            await asyncio.wait_for(gen.complete.get(), 30)
        except TimeoutError:
            report = await gen.call(cmd="report")
            raise RuntimeError(
                f"{server.kind}: change {i} never reached every client: {report}"
            ) from None
        inflight -= 1
        done += 1
    wall = time.monotonic() - t0
    cpu = server.cpu() - cpu0
    report = await gen.call(cmd="report")
    deliveries = report["stream"]
    report.update(
        wall=wall,
        changes=done,
        deliveries=deliveries,
        rate=deliveries / wall,
        server_cpu_per_10k=cpu / deliveries * 10_000,
        loadgen_cpu_per_10k=(report["cpu"] - before["cpu"]) / deliveries * 10_000,
        expected=done * n,
    )
    return report, i


def make_server(kind: str, args: argparse.Namespace) -> Server:
    if kind == "bridge":
        return Server(kind, backplane=args.backplane, instances=args.instances)
    return Server(kind)


async def run_latency_and_throughput(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    server = make_server(kind, args)
    gen = LoadGen()
    await server.start()
    await gen.start()
    try:
        async with aiohttp.ClientSession() as http:
            await connect(gen, server, args.clients)
            i = 0
            for _ in range(5):  # warm up
                i += 1
                await server.push(http, i)
            await asyncio.sleep(0.5)
            st, i = await steady(server, gen, args.rate, args.steady_seconds, http, i)
            fo, i = await flat_out(server, gen, args.flat_seconds, args.clients, http, i)
            if fo["deliveries"] < fo["expected"]:
                raise RuntimeError(f"{kind}: lost deliveries {fo}")
            return {"steady": st, "flat": fo}
    finally:
        await gen.stop()
        await server.stop()


async def run_memory_and_idle(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    server = make_server(kind, args)
    gen = LoadGen()
    await server.start()
    await gen.start()
    out: dict[str, Any] = {"rss": {}}
    try:
        await asyncio.sleep(0.5)
        base = server.rss_kib()
        have = 0
        for n in args.rss:
            await connect(gen, server, n - have)
            have = n
            await asyncio.sleep(1.0)
            out["rss"][n] = (server.rss_kib() - base) / n
        await asyncio.sleep(2.0)
        cpu0 = server.cpu()
        t0 = time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        out["idle_cpu_pct"] = (server.cpu() - cpu0) / (time.monotonic() - t0) * 100
        out["idle_n"] = have
        report = await gen.call(cmd="report")
        out["idle_closes"] = report["closes"]
        return out
    finally:
        await gen.stop()
        await server.stop()


def fmt(value: float, unit: str = "", digits: int = 2) -> str:
    return f"{value:.{digits}f}{unit}"


def print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    kinds = list(results)
    rows: list[tuple[str, list[str], str]] = []

    def row(label: str, get: Any, unit: str = "", digits: int = 2, ratio: bool = True) -> None:
        vals = [get(results[k]) for k in kinds]
        r = ""
        if ratio and len(vals) == 2 and vals[1]:
            r = f"{vals[0] / vals[1]:.2f}x"
        rows.append((label, [fmt(v, unit, digits) for v in vals], r))

    n = args.clients
    row(f"latency p50 ({n} clients, {args.rate:g}/s)", lambda r: r["steady"]["p50"] * 1000, " ms")
    row(f"latency p99 ({n} clients, {args.rate:g}/s)", lambda r: r["steady"]["p99"] * 1000, " ms")
    row(f"latency max ({n} clients, {args.rate:g}/s)", lambda r: r["steady"]["max"] * 1000, " ms")
    row("deliveries/s flat out", lambda r: r["flat"]["rate"], "", 0)
    row("server CPU-s per 10k deliveries", lambda r: r["flat"]["server_cpu_per_10k"], "", 3)
    row("load generator CPU-s per 10k", lambda r: r["flat"]["loadgen_cpu_per_10k"], "", 3)
    for size in args.rss:
        row(f"RSS per idle connection at {size}", lambda r, s=size: r["rss"][s], " KiB", 1)
    big = args.rss[-1]
    row(f"idle CPU at {big} connections", lambda r: r["idle_cpu_pct"], " %", 2)
    width = max(len(r[0]) for r in rows) + 2
    labels = [
        f"bridge+redis x{args.instances}" if k == "bridge" and args.backplane == "redis" else k
        for k in kinds
    ]
    head = "".join(f"{k:>16}" for k in labels) + ("       ratio" if len(kinds) == 2 else "")
    print()
    print(f"{'fan-out benchmark':<{width}}{head}")
    for label, vals, r in rows:
        print(f"{label:<{width}}" + "".join(f"{v:>16}" for v in vals) + f"{r:>12}")
    print()
    if "bridge" in results:
        b = results["bridge"]
        checks = [
            (f"p99 under 50 ms at N={n}, {args.rate:g}/s", b["steady"]["p99"] * 1000 < 50),
            (f"RSS per idle connection under 20 KiB at N={big}", b["rss"][big] < 20),
            (f"idle CPU under 3 % at N={big}", b["idle_cpu_pct"] < 3),
        ]
        if "bare" in results:
            ratio = b["flat"]["server_cpu_per_10k"] / results["bare"]["flat"]["server_cpu_per_10k"]
            checks.append(("CPU per delivery within 1.3x of the bare loop", ratio <= 1.3))
        for loadgen_ok in [b["flat"]["loadgen_cpu_per_10k"] < b["flat"]["server_cpu_per_10k"]]:
            checks.append(("load generator cheaper than the bridge", loadgen_ok))
        for label, ok in checks:
            print(f"  [{'met' if ok else 'MISSED'}] {label}")
    print()
    print("json:", json.dumps(results, default=str))


async def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--smoke", action="store_true", help="small and short, for CI")
    p.add_argument("--servers", default="bridge,bare")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rate", type=float, default=5.0)
    p.add_argument("--steady-seconds", type=float, default=15.0)
    p.add_argument("--flat-seconds", type=float, default=10.0)
    p.add_argument("--rss", default="1000,5000,10000")
    p.add_argument("--idle-seconds", type=float, default=30.0)
    p.add_argument("--backplane", choices=("memory", "redis"), default="memory")
    p.add_argument("--instances", type=int, default=1, help="bridge processes (redis only)")
    args = p.parse_args()
    if args.instances > 1 and args.backplane != "redis":
        p.error("--instances > 1 needs --backplane redis (memory instances share nothing)")
    if args.smoke:
        args.clients, args.steady_seconds, args.flat_seconds = 200, 2.0, 2.0
        args.rss, args.idle_seconds = "200", 2.0
    args.rss = [int(x) for x in str(args.rss).split(",")]
    results: dict[str, dict[str, Any]] = {}
    for kind in args.servers.split(","):
        print(f"{kind}: latency and throughput with {args.clients} clients ...", flush=True)
        results[kind] = await run_latency_and_throughput(kind, args)
        print(f"{kind}: memory and idle CPU at {args.rss} connections ...", flush=True)
        results[kind].update(await run_memory_and_idle(kind, args))
    print_table(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
