"""Upstream contract v2 under the conditions a review found it failing in
(each test failed on the first version): captured values used by the next
request on another instance, a session value captured elsewhere reaching the
polling instance, a state in parts whose publish failed, a join waiting in the
gate longer than the grace, and the context of a user who left explicitly."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp
import pytest
from aiohttp import web

from bridge.app import make_app
from bridge.config import config_from_dict
from bridge.exceptions import BackplaneUnavailable
from bridge.transports.common import BRIDGE
from tests.conftest import WSClient


class App:
    def __init__(self):
        self.round = 1
        self.votes = []
        self.active = 0
        self.most = 0

    def web(self):
        app = web.Application()

        async def join(r):
            return web.json_response({"round": self.round})

        async def reset(r):
            self.active += 1
            self.most = max(self.most, self.active)
            await asyncio.sleep(0.5)
            self.round += 1
            self.active -= 1
            return web.json_response({"round": self.round})

        async def vote(r):
            self.active += 1
            self.most = max(self.most, self.active)
            body = await r.json()
            await asyncio.sleep(0.05)
            self.votes.append(body)
            self.active -= 1
            return web.json_response({"ok": True})

        async def state(r):
            return web.json_response({"round": self.round, "votes": len(self.votes)})

        app.router.add_post("/r/{room}/join", join)
        app.router.add_post("/r/{room}/reset", reset)
        app.router.add_post("/r/{room}/vote", vote)
        app.router.add_get("/r/{room}", state)
        return app


def cfg(url, backplane):
    data = {
        "upstream": {
            "url": url,
            "timeout": "3s",
            "keepalive": None,
            "retry": {"attempts": 1},
            "commands": {
                "join": {"path": "/r/{sessionId}/join", "capture": {"session": {"round": "round"}}},
                "reset": {
                    "path": "/r/{sessionId}/reset",
                    "capture": {"session": {"round": "round"}},
                },
                "vote": {
                    "path": "/r/{sessionId}/vote",
                    "json": {"round": "{session.round}", "v": "{payload.v}"},
                },
            },
            "state": {"path": "/r/{sessionId}", "every": "200ms"},
        },
        "presence": {"grace": "1s"},
        "security": {"token_secret": "test-secret"},
    }
    if backplane:
        data["backplane"] = backplane
    return config_from_dict(data)


async def connect(http, srv, user):
    ws = await http.ws_connect(
        srv.make_url("/api/websocket"), params={"sessionId": "s1", "userId": user}
    )
    c = WSClient(ws, "s1", user, {})
    await c.welcome()
    return c


@pytest.mark.parametrize("two", [False, True])
async def test_a_vote_queued_behind_a_reset_uses_the_round_reset_captured(
    aiohttp_server, redis_server, two
):
    app = App()
    up = await aiohttp_server(app.web())
    bp = {"kind": "redis", "url": redis_server.url, "lease": "1500ms"} if two else None
    a = await aiohttp_server(make_app(cfg(str(up.make_url("")), bp)))
    b = await aiohttp_server(make_app(cfg(str(up.make_url("")), bp))) if two else a
    async with aiohttp.ClientSession() as http:
        ca = await connect(http, a, "alice")
        cb = await connect(http, b, "bob")
        await asyncio.sleep(0.3)
        reset = asyncio.create_task(ca.command("reset"))
        await asyncio.sleep(0.15)  # reset is at the app
        vote = asyncio.create_task(cb.command("vote", {"v": 3}))
        ra, rb = await reset, await vote
        _log("acks:", ra, rb, "votes at the app:", app.votes, "most at once:", app.most)
        assert ra["status"] == rb["status"] == "ok"
        assert app.most == 1
        assert app.votes == [{"round": 2, "v": 3}]
        await ca.ws.close()
        await cb.ws.close()


async def test_the_polling_instance_uses_a_round_captured_elsewhere(aiohttp_server, redis_server):
    rnd = {"n": 1}
    polled = []
    app = web.Application()

    async def join(r):
        return web.json_response({"round": rnd["n"]})

    async def reset(r):
        rnd["n"] += 1
        return web.json_response({"round": rnd["n"]})

    async def state(r):
        polled.append(r.query.get("round"))
        return web.json_response({"round": rnd["n"]})

    app.router.add_post("/r/{room}/join", join)
    app.router.add_post("/r/{room}/reset", reset)
    app.router.add_get("/r/{room}", state)
    up = await aiohttp_server(app)

    def cfg():
        return config_from_dict(
            {
                "upstream": {
                    "url": str(up.make_url("")),
                    "keepalive": None,
                    "commands": {
                        "join": {
                            "path": "/r/{sessionId}/join",
                            "capture": {"session": {"round": "round"}},
                        },
                        "reset": {
                            "path": "/r/{sessionId}/reset",
                            "capture": {"session": {"round": "round"}},
                        },
                    },
                    "state": {
                        "path": "/r/{sessionId}",
                        "query": {"round": "{session.round?}"},
                        "every": "100ms",
                    },
                },
                "backplane": {"kind": "redis", "url": redis_server.url, "lease": "1500ms"},
                "presence": {"grace": "1s"},
                "security": {"token_secret": "test-secret"},
            }
        )

    a = await aiohttp_server(make_app(cfg()))
    b = await aiohttp_server(make_app(cfg()))
    async with aiohttp.ClientSession() as http:

        async def connect(srv, user):
            ws = await http.ws_connect(
                srv.make_url("/api/websocket"), params={"sessionId": "s1", "userId": user}
            )
            c = WSClient(ws, "s1", user, {})
            await c.welcome()
            return c

        ca = await connect(a, "alice")
        await asyncio.sleep(0.5)
        cb = await connect(b, "bob")
        owner_a = a.app[BRIDGE].backplane.owns(a.app[BRIDGE].registry.get("s1"))
        resetter = cb if owner_a else ca
        assert (await resetter.command("reset"))["status"] == "ok"
        await asyncio.sleep(1.0)
        _log(
            "owner is",
            "a" if owner_a else "b",
            "rounds the polls carried (last 5):",
            polled[-5:],
            "app round:",
            rnd["n"],
        )
        assert polled[-1] == str(rnd["n"])
        await ca.ws.close()
        await cb.ws.close()


def parts_app() -> web.Application:
    app = web.Application()

    async def issue(r):
        return web.json_response({"title": "story 1"})

    async def users(r):
        return web.json_response(["ann"])

    app.router.add_get("/issue", issue)
    app.router.add_get("/users", users)
    return app


@pytest.mark.parametrize("fail_first", [False, True])
async def test_a_state_whose_publish_failed_is_published_later(aiohttp_server, fail_first):
    up = await aiohttp_server(parts_app())
    cfg = config_from_dict(
        {
            "upstream": {
                "url": str(up.make_url("")),
                "timeout": "1s",
                "commands": {},
                "keepalive": None,
                "state": {
                    "every": "100ms",
                    "parts": {"issue": {"path": "/issue"}, "users": {"path": "/users"}},
                },
            },
            "security": {"token_secret": "test-secret"},
        }
    )
    srv = await aiohttp_server(make_app(cfg))
    bridge = srv.app[BRIDGE]
    real = bridge.poller.publish_state
    calls = {"n": 0}

    async def flaky(*a, **kw):
        calls["n"] += 1
        if fail_first and calls["n"] == 1:
            raise BackplaneUnavailable("redis: blip")
        return await real(*a, **kw)

    bridge.poller.publish_state = flaky
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            srv.make_url("/api/websocket"), params={"sessionId": "s1", "userId": "u1"}
        )
        c = WSClient(ws, "s1", "u1", {})
        await c.welcome()
        try:
            await c.wait_state(lambda s: True, timeout=2.0)
        finally:
            _log(
                "publish attempts:",
                calls["n"],
                "polls:",
                {
                    result: bridge.metrics.registry.get_sample_value(
                        "bridge_state_polls_total", {"result": result}
                    )
                    for result in ("changed", "not_modified", "error", "unchanged")
                },
            )
            await ws.close()


async def test_parts_without_304s_are_not_counted_not_modified(aiohttp_server):
    up = await aiohttp_server(parts_app())  # no ETag, no 304 ever
    cfg = config_from_dict(
        {
            "upstream": {
                "url": str(up.make_url("")),
                "timeout": "1s",
                "commands": {},
                "keepalive": None,
                "state": {
                    "every": "100ms",
                    "parts": {"issue": {"path": "/issue"}, "users": {"path": "/users"}},
                },
            },
            "security": {"token_secret": "test-secret"},
        }
    )
    srv = await aiohttp_server(make_app(cfg))
    bridge = srv.app[BRIDGE]
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            srv.make_url("/api/websocket"), params={"sessionId": "s1", "userId": "u1"}
        )
        await asyncio.sleep(0.8)
        await ws.close()

    def get(result: str) -> float:
        value = bridge.metrics.registry.get_sample_value(
            "bridge_state_polls_total", {"result": result}
        )
        return value or 0.0

    _log("not_modified", get("not_modified"), "unchanged", get("unchanged"))
    assert get("not_modified") == 0 and get("unchanged") > 0


async def test_queued_joins_are_not_followed_by_a_leave(aiohttp_server, redis_server):
    seen = []
    app = web.Application()

    async def join(r):
        u = (await r.json())["u"]
        await asyncio.sleep(0.5)
        seen.append(("join", u))
        return web.json_response({"ok": True})

    async def leave(r):
        seen.append(("leave", (await r.json())["u"]))
        return web.json_response({"ok": True})

    async def state(r):
        return web.json_response({"room": 1})

    app.router.add_post("/r/{room}/join", join)
    app.router.add_post("/r/{room}/leave", leave)
    app.router.add_get("/r/{room}", state)
    up = await aiohttp_server(app)
    cfg = config_from_dict(
        {
            "upstream": {
                "url": str(up.make_url("")),
                "keepalive": None,
                "timeout": "3s",
                "commands": {
                    "join": {"path": "/r/{sessionId}/join", "json": {"u": "{userId}"}},
                    "leave": {"path": "/r/{sessionId}/leave", "json": {"u": "{userId}"}},
                },
                "state": {"path": "/r/{sessionId}", "every": "200ms"},
            },
            "backplane": {"kind": "redis", "url": redis_server.url, "lease": "1500ms"},
            "presence": {"grace": "1s"},
            "security": {"token_secret": "test-secret"},
        }
    )
    srv = await aiohttp_server(make_app(cfg))
    async with aiohttp.ClientSession() as http:

        async def connect(user):
            ws = await http.ws_connect(
                srv.make_url("/api/websocket"), params={"sessionId": "q1", "userId": user}
            )
            c = WSClient(ws, "q1", user, {})
            await c.welcome()
            return c

        host = await connect("host")
        clients = await asyncio.gather(*(connect(f"u{i}") for i in range(4)))
        await asyncio.sleep(2.0)
        _log(seen)
        for c in [host, *clients]:
            await c.ws.close()
    assert [s for s in seen if s[0] == "leave"] == []


async def test_explicit_leave_drops_the_users_context(aiohttp_server):
    ids = itertools.count(1)
    app = web.Application()

    async def join(r):
        return web.json_response({"user_id": f"minted-{next(ids)}"})

    async def ok(r):
        return web.json_response({"ok": True})

    async def state(r):
        return web.json_response({"room": 1})

    app.router.add_post("/r/{room}/join", join)
    app.router.add_post("/r/{room}/leave", ok)
    app.router.add_get("/r/{room}", state)
    up = await aiohttp_server(app)
    cfg = config_from_dict(
        {
            "upstream": {
                "url": str(up.make_url("")),
                "keepalive": None,
                "commands": {
                    "join": {
                        "path": "/r/{sessionId}/join",
                        "capture": {"user": {"appId": "user_id"}},
                    },
                    "leave": {"path": "/r/{sessionId}/leave", "json": {"id": "{user.appId}"}},
                },
                "state": {"path": "/r/{sessionId}", "every": "200ms"},
            },
            "presence": {"grace": "200ms"},
            "security": {"token_secret": "test-secret"},
        }
    )
    srv = await aiohttp_server(make_app(cfg))
    bridge = srv.app[BRIDGE]
    async with aiohttp.ClientSession() as http:

        async def connect(user):
            ws = await http.ws_connect(
                srv.make_url("/api/websocket"), params={"sessionId": "s1", "userId": user}
            )
            c = WSClient(ws, "s1", user, {})
            await c.welcome()
            return c

        stay = await connect("host")  # keeps the room open
        for i in range(20):
            c = await connect(f"guest{i}")
            assert (await c.command("leave"))["status"] == "ok"
            await c.ws.close()
        await asyncio.sleep(0.6)  # past the grace
        session = bridge.registry.get("s1")
        _log("values kept:", len(session.values), "users kept:", len(session.users))
        assert set(session.values) == {"host"}
        await stay.ws.close()


def _log(*args: object) -> None:
    """What a run saw, for the output of a failing test."""
    print(*args)
