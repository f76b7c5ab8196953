"""Requests to the app spread over their interval: state polls on a grid with a
phase of each session's own (not moved by commands), keep-alives of a mass
arrival spread, and a keep-alive skipped after a command when commands count."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

import aiohttp
from aiohttp import web

from bridge.app import make_app
from bridge.config import config_from_dict
from tests.conftest import WSClient

EVERY = 0.4


class Recorder:
    def __init__(self) -> None:
        self.polls: dict[str, list[float]] = defaultdict(list)
        self.keepalives: dict[str, list[float]] = defaultdict(list)
        self.commands = 0

    def web(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/r/{room}", self.state)
        app.router.add_post("/r/{room}/ka", self.keepalive)
        app.router.add_post("/r/{room}/vote", self.vote)
        return app

    async def state(self, request: web.Request) -> web.Response:
        self.polls[request.match_info["room"]].append(time.monotonic())
        return web.json_response({"room": request.match_info["room"]})

    async def keepalive(self, request: web.Request) -> web.Response:
        self.keepalives[(await request.json())["u"]].append(time.monotonic())
        return web.json_response({"ok": True})

    async def vote(self, request: web.Request) -> web.Response:
        self.commands += 1
        return web.json_response({"ok": True})


async def start(aiohttp_server, commands_count: bool = False):
    app = Recorder()
    up = await aiohttp_server(app.web())
    cfg = config_from_dict({
        "upstream": {
            "url": str(up.make_url("")),
            "commands": {"vote": {"path": "/r/{sessionId}/vote"}},
            "keepalive": {"path": "/r/{sessionId}/ka", "json": {"u": "{userId}"},
                          "every": f"{EVERY}s", "commands_count": commands_count},
            "state": {"path": "/r/{sessionId}", "every": f"{EVERY}s"},
        },
        "security": {"token_secret": "t"},
    })  # fmt: skip
    bridge = await aiohttp_server(make_app(cfg))
    return app, bridge


async def connect(http, bridge, session: str, user: str) -> WSClient:
    ws = await http.ws_connect(bridge.make_url("/api/websocket"),
                               params={"sessionId": session, "userId": user})  # fmt: skip
    client = WSClient(ws, session, user, {})
    await client.welcome()
    return client


def phases(times: list[float], origin: float) -> list[float]:
    return [((t - origin) % EVERY) / EVERY for t in times]


async def test_sessions_poll_at_phases_of_their_own_and_commands_do_not_move_them(aiohttp_server):
    app, bridge = await start(aiohttp_server)
    async with aiohttp.ClientSession() as http:
        origin = time.monotonic()
        clients = await asyncio.gather(*(connect(http, bridge, f"s{i}", "u") for i in range(16)))
        await asyncio.sleep(4 * EVERY)
        # all at once: a command in every session (each asks for a poll at once)
        await asyncio.gather(*(c.command("vote") for c in clients))
        await asyncio.sleep(4 * EVERY)
        for c in clients:
            await c.close()
    late = {s: [t for t in ts if t > origin + 2 * EVERY] for s, ts in app.polls.items()}
    # each session's regular rounds keep one phase (within scheduling noise) ...
    firsts = []
    for session, times in late.items():
        regular = sorted(times)
        gaps = [b - a for a, b in zip(regular, regular[1:], strict=False)]
        assert sum(1 for g in gaps if abs(g - EVERY) < 0.08) >= len(gaps) - 2, (session, gaps)
        firsts.append(phases(regular[:1], origin)[0])
    # ... and the sessions' phases spread over the interval (not in step)
    firsts.sort()
    widest_gap = max([b - a for a, b in zip(firsts, firsts[1:], strict=False)]
                     + [1 - firsts[-1] + firsts[0]])  # fmt: skip
    assert widest_gap < 0.5, firsts


async def test_keepalives_of_a_mass_arrival_are_spread(aiohttp_server):
    app, bridge = await start(aiohttp_server)
    async with aiohttp.ClientSession() as http:
        clients = await asyncio.gather(*(connect(http, bridge, "big", f"u{i}") for i in range(30)))
        await asyncio.sleep(3 * EVERY)
        for c in clients:
            await c.close()
    firsts = sorted(times[0] for times in app.keepalives.values())
    assert len(firsts) == 30
    # all joined within a few ms; their first keep-alives reach the app over
    # (most of) half an interval, not at once
    assert firsts[-1] - firsts[0] > 0.3 * EVERY, [round(t - firsts[0], 3) for t in firsts]


async def test_a_command_counts_as_a_keepalive_when_so_configured(aiohttp_server):
    for counts in (False, True):
        app, bridge = await start(aiohttp_server, commands_count=counts)
        async with aiohttp.ClientSession() as http:
            busy = await connect(http, bridge, "k", "busy")
            idle = await connect(http, bridge, "k", "idle")
            stop = time.monotonic() + 4 * EVERY
            while time.monotonic() < stop:
                assert (await busy.command("vote"))["status"] == "ok"
                await asyncio.sleep(EVERY / 4)
            await busy.close()
            await idle.close()
        assert len(app.keepalives["idle"]) >= 2
        if counts:
            assert app.keepalives["busy"] == []  # its votes kept it alive
        else:
            assert len(app.keepalives["busy"]) >= 2
