"""The queue in front of the app (bridge/upstream/limits.py) and the adaptive
limit through the upstream client, against a real app that answers 503 above 4
requests in flight."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from bridge.config import config_from_dict
from bridge.exceptions import UpstreamBusy, UpstreamUnavailable
from bridge.metrics import Metrics
from bridge.upstream.client import UpstreamClient
from bridge.upstream.limits import UpstreamLimits, kind_of


def limits(max_in_flight: int = 2, max_queue: int = 100, adaptive: bool = False) -> UpstreamLimits:
    cfg = config_from_dict({"upstream": {"url": "http://x", "max_in_flight": max_in_flight,
                                         "max_queue": max_queue, "adaptive": adaptive}})  # fmt: skip
    return UpstreamLimits(cfg.upstream, Metrics())


def test_kinds_by_route_name():
    assert [kind_of(n) for n in ("join", "vote", "leave", "keepalive", "state", "state.users")] == [
        "command", "command", "command", "keepalive", "poll", "poll",
    ]  # fmt: skip


async def test_commands_before_keepalives_before_polls():
    lim = limits(max_in_flight=1)
    first = await lim.acquire("poll", "s1")
    order: list[str] = []

    async def one(kind, scope, label):
        ticket = await lim.acquire(kind, scope)
        order.append(label)
        lim.release(ticket, "ok", 0.01)

    tasks = [asyncio.ensure_future(one(k, s, label)) for k, s, label in (
        ("poll", "a", "poll-a"), ("keepalive", "b", "ka-b"), ("command", "c", "cmd-c"),
        ("poll", "d", "poll-d"), ("command", "e", "cmd-e"))]  # fmt: skip
    await asyncio.sleep(0)
    assert lim.waiting == 5
    lim.release(first, "ok", 0.01)
    await asyncio.gather(*tasks)
    assert order == ["cmd-c", "cmd-e", "ka-b", "poll-a", "poll-d"]
    assert lim.waiting == 0 and lim.limiter.in_flight == 0


async def test_sessions_take_turns():
    lim = limits(max_in_flight=1)
    first = await lim.acquire("command", "x")
    order: list[str] = []

    async def one(scope, n):
        ticket = await lim.acquire("command", scope)
        order.append(f"{scope}{n}")
        await asyncio.sleep(0)
        lim.release(ticket, "ok", 0.01)

    tasks = [asyncio.ensure_future(one("busy", n)) for n in range(4)]
    await asyncio.sleep(0)
    tasks += [asyncio.ensure_future(one("quiet", n)) for n in range(2)]
    await asyncio.sleep(0)
    lim.release(first, "ok", 0.01)
    await asyncio.gather(*tasks)
    assert order == ["busy0", "quiet0", "busy1", "quiet1", "busy2", "busy3"]


async def test_a_full_queue_refuses_at_once():
    lim = limits(max_in_flight=1, max_queue=2)
    held = await lim.acquire("command", "s")
    waiting = [asyncio.ensure_future(lim.acquire("command", "s")) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(UpstreamBusy) as info:
        await lim.acquire("command", "s")
    assert info.value.code == "upstream_busy"
    lim.release(held, "ok", 0.0)
    for w in waiting:
        lim.release(await w, "ok", 0.0)
    assert lim.waiting == 0


async def test_a_full_queue_of_polls_never_keeps_a_command_out():
    # a flood of polls (say, made-up sessions of an intercepted frontend) fills the
    # queue: a command, then a keep-alive, take the places of the newest polls
    lim = limits(max_in_flight=1, max_queue=3)
    held = await lim.acquire("poll", "s0")
    polls = [asyncio.ensure_future(lim.acquire("poll", f"p{i}")) for i in range(3)]
    await asyncio.sleep(0)
    cmd = asyncio.ensure_future(lim.acquire("command", "real"))
    ka = asyncio.ensure_future(lim.acquire("keepalive", "real"))
    await asyncio.sleep(0)
    for newest in (polls[2], polls[1]):
        with pytest.raises(UpstreamBusy, match="more urgent"):
            await newest
    assert lim.waiting == 3
    with pytest.raises(UpstreamBusy):  # a poll now: nothing below it to take the place of
        await lim.acquire("poll", "late")
    lim.release(held, "ok", 0.0)
    order = []
    for label, fut in (("command", cmd), ("keepalive", ka), ("poll", polls[0])):
        lim.release(await fut, "ok", 0.0)
        order.append(label)
    assert order == ["command", "keepalive", "poll"]
    assert lim.waiting == 0 and lim.limiter.in_flight == 0
    full = limits(max_in_flight=1, max_queue=1)
    first = await full.acquire("command", "a")
    queued = asyncio.ensure_future(full.acquire("command", "a"))
    await asyncio.sleep(0)
    with pytest.raises(UpstreamBusy):  # commands never push out commands
        await full.acquire("command", "b")
    full.release(first, "ok", 0.0)
    full.release(await queued, "ok", 0.0)


async def test_cancelled_waiters_leave_and_a_cancelled_turn_is_given_back():
    lim = limits(max_in_flight=1)
    held = await lim.acquire("command", "s")
    gone = asyncio.ensure_future(lim.acquire("command", "s"))
    turn = asyncio.ensure_future(lim.acquire("command", "s"))
    last = asyncio.ensure_future(lim.acquire("command", "t"))
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert lim.waiting == 2
    lim.release(held, "ok", 0.0)  # turn's future is set ...
    turn.cancel()  # ... and it is cancelled before it runs: the slot goes on to `last`
    with pytest.raises(asyncio.CancelledError):
        await turn
    lim.release(await asyncio.wait_for(last, 1), "ok", 0.0)
    assert lim.limiter.in_flight == 0 and lim.waiting == 0


async def test_closed_nothing_starts_and_every_waiter_is_refused():
    # the bridge stopping: a request cut short gives its slot back, and the next
    # waiter must not get it (the app would get that request too, then lose it)
    lim = limits(max_in_flight=1)
    held = await lim.acquire("poll", "s")
    lim.pause(5.0)  # a Retry-After: its timer (armed by the waiters) goes too
    waiting = [asyncio.ensure_future(lim.acquire(k, s)) for k, s in
               (("poll", "a"), ("command", "b"), ("keepalive", "c"))]  # fmt: skip
    await asyncio.sleep(0)
    assert lim.waiting == 3 and lim._timer is not None
    lim.close()
    lim.release(held, "other", 0.0)
    for w in waiting:
        with pytest.raises(UpstreamUnavailable, match="stopping"):
            await w
    with pytest.raises(UpstreamUnavailable, match="stopping"):
        await lim.acquire("command", "d")
    assert lim.waiting == 0 and lim.limiter.in_flight == 0 and lim._timer is None


async def test_retry_after_pauses_everyone():
    lim = limits(max_in_flight=4)
    lim.pause(0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    ticket = await asyncio.wait_for(lim.acquire("command", "other-session"), 2)
    assert loop.time() - started >= 0.28
    lim.release(ticket, "ok", 0.0)


class Capacity:
    """An app that can take 4 requests at once and answers 503 above that."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self.refused = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.now += 1
        try:
            self.most = max(self.most, self.now)
            if self.now > 4:
                self.refused += 1
                return web.json_response({"error": "busy"}, status=503)
            await asyncio.sleep(0.02)
            return web.json_response({"ok": True})
        finally:
            self.now -= 1


async def test_the_limit_finds_the_apps_capacity(aiohttp_server):
    app = Capacity()
    web_app = web.Application()
    web_app.router.add_route("*", "/{tail:.*}", app.handle)
    server = await aiohttp_server(web_app)
    cfg = config_from_dict({"upstream": {
        "url": str(server.make_url("")), "max_in_flight": 16, "timeout": "2s",
        "retry": {"attempts": 8, "initial": "10ms", "max": "50ms"},
        "breaker": {"failures": 1000},
    }})  # fmt: skip
    metrics = Metrics()
    async with aiohttp.ClientSession() as http:
        client = UpstreamClient(cfg.upstream, http, metrics)
        vote = cfg.upstream.commands["reveal"]

        async def command(i: int) -> int:
            ctx = {"sessionId": f"s{i % 20}", "userId": "u", "params": {}, "payload": {},
                   "user": {}, "session": {}}  # fmt: skip
            return (await client.request("reveal", vote, ctx)).status

        first = await asyncio.gather(*(command(i) for i in range(200)))
        refused_early = app.refused
        second = await asyncio.gather(*(command(i) for i in range(200)))
    assert first == second == [200] * 200  # every one done (503s are retried)
    limit = client.limits.limiter.limit
    print(
        f"\nlimit {limit:.2f}; 503s {refused_early} in the first 200, "
        f"{app.refused - refused_early} in the next 200; most at once {app.most}"
    )
    assert app.most <= 16  # never more than the limit's top
    assert 1.0 <= limit <= 8.0  # it came down towards the app's 4
    assert app.refused - refused_early < refused_early  # and it learned: fewer refusals
    assert metrics.registry.get_sample_value("bridge_upstream_limit") == limit
    assert metrics.registry.get_sample_value("bridge_upstream_in_flight") == 0


def test_retry_after_in_seconds_or_an_http_date_and_nonsense_ignored():
    from bridge.upstream.client import _retry_after

    now = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert _retry_after({"Retry-After": "7"}, now) == 7.0
    assert _retry_after({"Retry-After": "-3"}, now) == 0.0
    assert _retry_after({"Retry-After": "Fri, 15 Jan 2027 08:00:30 GMT"}, now) == 30.0
    assert _retry_after({"Retry-After": "Fri, 15 Jan 2027 07:59:00 GMT"}, now) == 0.0  # past
    for nonsense in ("nan", "inf", "soon", ""):
        assert _retry_after({"Retry-After": nonsense}, now) is None, nonsense
    assert _retry_after({}, now) is None
