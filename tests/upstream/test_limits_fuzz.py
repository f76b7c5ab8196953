"""The queue to the app under random cancellations, pauses and overloads: every
slot comes back, and never more than the limit are out at once."""

from __future__ import annotations

import asyncio
import random

from bridge.config import config_from_dict
from bridge.exceptions import UpstreamBusy
from bridge.metrics import Metrics
from bridge.upstream.limits import UpstreamLimits


async def test_random_cancellation_leaks_no_slot():
    cfg = config_from_dict(
        {
            "upstream": {"url": "http://x", "max_in_flight": 3, "max_queue": 50},
            "security": {"token_secret": "t"},
        }
    ).upstream
    lim = UpstreamLimits(cfg, Metrics())
    rnd = random.Random(7)
    peak = 0

    async def one(i):
        nonlocal peak
        kind = rnd.choice(["command", "keepalive", "poll"])
        try:
            t = await lim.acquire(kind, f"s{i % 7}")
        except UpstreamBusy:
            return
        try:
            peak = max(peak, lim.limiter.in_flight)
            await asyncio.sleep(rnd.random() * 0.01)
            outcome = rnd.choice(["ok", "ok", "overload", "other"])
        except BaseException:
            lim.release(t, "other", 0.0)
            raise
        lim.release(t, outcome, rnd.random() * 0.05)
        if rnd.random() < 0.05:
            lim.pause(0.005)

    for _ in range(20):
        tasks = [asyncio.ensure_future(one(i)) for i in range(80)]
        for _ in range(30):
            await asyncio.sleep(rnd.random() * 0.003)
            rnd.choice(tasks).cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0.05)
    print(
        "in_flight",
        lim.limiter.in_flight,
        "waiting",
        lim.waiting,
        "limit",
        lim.limiter.limit,
        "peak",
        peak,
    )
    assert lim.limiter.in_flight == 0 and lim.waiting == 0
    assert peak <= 3
