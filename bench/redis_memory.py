"""Redis memory per session with the Redis backplane.

Starts redis-server, the demo backend and one bridge (backplane: redis), puts
20 users (WebSocket clients) in one session, then pushes state changes (the
20-member planning-poker state of bench/fanout.py, ~1.2 KB of JSON) and
prints ``MEMORY USAGE`` of each of the session's keys after 1, 100 and
``replay.max_messages`` (1000) changes.

    python bench/redis_memory.py [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fanout import PUSH_SECRET, ROOT, free_port, start_redis, state, wait_http  # noqa: E402


async def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--smoke", action="store_true", help="up to 100 changes only")
    args = p.parse_args()
    marks = [1, 100] if args.smoke else [1, 100, 1000]
    procs: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory() as tmp:
        bport, port = free_port(), free_port()
        try:
            redis, rport = await start_redis(tmp)
            procs.append(redis)
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, str(ROOT / "bench" / "serve.py"), "backend", str(bport), cwd=ROOT,
            ))  # fmt: skip
            cfg = Path(tmp) / "bridge.yaml"
            cfg.write_text(
                f"listen: {{host: 127.0.0.1, port: {port}}}\n"
                f"upstream:\n  url: http://127.0.0.1:{bport}\n  state: {{every: 1h}}\n"
                f"  push: {{path: /bridge/push, secret: {PUSH_SECRET}}}\n"
                f"backplane: {{kind: redis, url: 'redis://127.0.0.1:{rport}/0'}}\n"
                "security: {token_secret: bench}\nlogging: {level: error}\n"
            )
            await wait_http(f"http://127.0.0.1:{bport}/api/sessions/none", ok=(404,))
            procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(cfg), cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
            ))  # fmt: skip
            await wait_http(f"http://127.0.0.1:{port}/readyz")
            r = aioredis.Redis.from_url(f"redis://127.0.0.1:{rport}/0")
            async with aiohttp.ClientSession() as http:
                sockets = [
                    await http.ws_connect(
                        f"http://127.0.0.1:{port}/api/websocket",
                        params={"sessionId": "mem", "userId": f"user{i:02d}", "name": f"U {i}"},
                    )
                    for i in range(20)
                ]
                await asyncio.sleep(1.5)  # presence published, leases taken
                done = 0
                print(f"{'changes':>8} {'key':<22} {'bytes':>10}")
                for mark in marks:
                    while done < mark:
                        done += 1
                        async with http.post(
                            f"http://127.0.0.1:{port}/bridge/push",
                            json={"sessionId": "mem", "state": state(done, done % 2 == 1)},
                            headers={"Authorization": f"Bearer {PUSH_SECRET}"},
                        ) as resp:
                            assert resp.status == 202, await resp.text()
                    total = 0
                    for key in sorted(await r.keys("bridge:{mem}:*")):
                        size = await r.memory_usage(key) or 0
                        total += size
                        print(f"{mark:>8} {key.decode()[len('bridge:{mem}:') :]:<22} {size:>10}")
                    print(f"{mark:>8} {'total':<22} {total:>10}  ({total / 1024:.0f} KiB)")
                for ws in sockets:
                    await ws.close()
            await r.aclose()
        finally:
            for proc in reversed(procs):
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
                await proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
