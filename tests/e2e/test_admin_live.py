"""The admin overview and its live feed (bridge/admin.py): what it shows, that it
needs the token, that nothing runs while nobody watches, and that a shutdown
ends the streams; the page shell for browsers."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from bridge.admin import FEED
from bridge.protocol.sse import EventParser
from bridge.runtime.history import WAVE, History

ADMIN = {"admin": {"token": "sesame"}}
AUTH = {"Authorization": "Bearer sesame"}


async def read_events(resp: aiohttp.ClientResponse, n: int) -> list[dict]:
    parser = getattr(resp, "sse_parser", None)  # one per stream: an event may span reads
    if parser is None:
        parser = resp.sse_parser = EventParser()  # type: ignore[attr-defined]
    out: list[dict] = []
    while len(out) < n:
        chunk = await asyncio.wait_for(resp.content.readany(), 5)
        out += [json.loads(e.data) for e in parser.feed(chunk) if e.type == "overview"]
    return out


def feed_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if "admin page's feed" in t.get_name()]


async def test_the_overview_shows_transports_sessions_upstream_and_backplane(make_stack):
    stack = await make_stack(ADMIN)
    a = await stack.connect("ov", "alice")
    b = await stack.connect("ov", "bob", transport="sse")
    await a.command("vote", {"vote": "3"})
    async with stack.http.get(stack.url("/bridge/admin/overview")) as r:
        assert r.status == 401  # the token, always
    async with stack.http.get(stack.url("/bridge/admin/overview"), headers=AUTH) as r:
        o = await r.json()
    assert o["connections"] == {"websocket": 1, "sse": 1, "poll": 0}
    assert o["sessionCount"] == 1
    (s,) = o["sessions"]
    assert s["sessionId"] == "ov" and s["clients"] == 2
    assert sorted(s["users"]) == ["alice", "bob"] and s["transports"] == {"websocket": 1, "sse": 1}
    up = o["upstream"]
    assert up["breaker"] == "closed" and up["limit"] == 10 and up["queued"] == 0
    assert o["backplane"] == {"kind": "memory", "healthy": True}
    assert o["history"] == [] and o["draining"] is False
    assert c_token_absent(o, a) and c_token_absent(o, b)
    await a.close()
    await b.close()


def c_token_absent(o: dict, client) -> bool:
    return client.welcome_msg["resumeToken"] not in json.dumps(o)


async def test_the_feed_runs_only_while_someone_watches_and_numbers_move(make_stack):
    stack = await make_stack(ADMIN)
    assert feed_tasks() == []  # nobody watches: nothing runs
    async with stack.http.get(stack.url("/bridge/admin/events")) as r:
        assert r.status == 401
    async with stack.http.get(stack.url("/bridge/admin/events"), headers=AUTH) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        async with stack.http.get(stack.url("/bridge/admin/events"), headers=AUTH) as r2:
            (first,) = await read_events(r, 1)
            assert len(feed_tasks()) == 1  # one feed for both watchers
            assert first["connections"]["websocket"] == 0
            c = await stack.connect("live", "u1")
            await c.command("vote", {"vote": "1"})
            moved = None
            for _ in range(5):
                (o,) = await read_events(r2, 1)
                if o["connections"]["websocket"] == 1 and o["upstream"]["requestsPerSecond"]:
                    moved = o
                    break
            assert moved is not None, "the feed never showed the new client"
            assert moved["upstream"]["meanMs"] is not None
            await c.close()
    for _ in range(50):
        if not feed_tasks():
            break
        await asyncio.sleep(0.05)
    assert feed_tasks() == [], "the feed kept running with nobody watching"


async def test_a_shutdown_ends_the_streams(make_stack):
    stack = await make_stack(ADMIN)
    async with stack.http.get(stack.url("/bridge/admin/events"), headers=AUTH) as r:
        await read_events(r, 1)
        started = time.monotonic()
        await stack.bridge_server.app.shutdown()  # what the runner does first on SIGTERM
        while await asyncio.wait_for(r.content.readany(), 5):
            pass  # the stream ends
        assert time.monotonic() - started < 3
    assert stack.bridge_server.app[FEED].feed.watchers == set()


async def test_a_browser_gets_the_page_and_no_data_without_the_token(make_stack):
    stack = await make_stack(ADMIN)
    html = {"Accept": "text/html,application/xhtml+xml"}
    async with stack.http.get(stack.url("/bridge/admin/"), headers=html) as r:
        assert r.status == 200 and r.content_type == "text/html"
        page = await r.text()
        assert "/bridge/admin.js" in page and "sesame" not in page
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
        assert r.headers["Cache-Control"] == "no-store"
    async with stack.http.get(stack.url("/bridge/admin.js")) as r:
        assert r.status == 200 and "parseEvents" in await r.text()
    async with stack.http.get(stack.url("/bridge/admin/")) as r:  # not a browser: as before
        assert r.status == 401
    async with stack.http.get(stack.url("/bridge/admin/"), headers={**html, **AUTH}) as r:
        assert [e["path"] for e in (await r.json())["endpoints"]][:3] == [
            "/bridge/admin/",
            "/bridge/admin/overview",
            "/bridge/admin/events",
        ]
    off = await make_stack()
    async with off.http.get(off.url("/bridge/admin/"), headers=html) as r:
        assert r.status == 404  # admin off: no page either


def test_history_of_drains_and_waves():
    h = History()
    entry = h.drain_started(12)
    assert h.recent(now=entry.at)[0]["kind"] == "drain"
    History.drain_ended(entry, 1)
    assert (entry.count, entry.other, entry.done) == (12, 1, True)
    t = 1_000.0
    for _ in range(WAVE - 1):  # not quite a wave
        h.connected(False, now=t + 0.5)
    for i in range(WAVE):  # a wave, two seconds long, half of it resumes
        h.connected(i % 2 == 0, now=t + 1.2)
    for _ in range(WAVE):
        h.connected(True, now=t + 2.7)
    open_wave = h.recent(now=t + 2.9)[0]
    assert (open_wave["kind"], open_wave["count"], open_wave["seconds"]) == ("wave", 2 * WAVE, 2.0)
    assert open_wave["done"] is False
    h.connected(False, now=t + 9.0)  # quiet again: the wave is settled
    wave = h.recent(now=t + 9.5)[0]
    assert (wave["count"], wave["other"], wave["seconds"], wave["at"]) == (
        2 * WAVE,
        WAVE // 2 + WAVE,
        2.0,
        t + 1,
    )
    assert [e["kind"] for e in h.recent(now=t + 9.5)] == ["wave", "drain"]


async def test_a_changed_token_ends_the_open_streams(aiohttp_server, tmp_path):
    from bridge.app import ReloadSource, make_app, reload_config
    from bridge.config import load_config
    from bridge.demo.backend import make_backend_app

    up = await aiohttp_server(make_backend_app())
    path = tmp_path / "bridge.yaml"
    base = f"upstream: {{url: '{up.make_url('')}'}}\nadmin: {{token: sesame}}\n"
    path.write_text(base)
    server = await aiohttp_server(make_app(load_config(str(path)),
                                           reload_from=ReloadSource(str(path))))  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/bridge/admin/events"), headers=AUTH) as r:
            await read_events(r, 1)
            path.write_text(base.replace("sesame", "rotated"))
            assert reload_config(server.app)
            started = time.monotonic()
            while await asyncio.wait_for(r.content.readany(), 5):
                pass  # the old token's stream ends at its next tick
            assert time.monotonic() - started < 3
        async with http.get(server.make_url("/bridge/admin/overview"), headers=AUTH) as r:
            assert r.status == 401


async def test_json_answers_are_not_cached_and_rates_come_from_the_last_call(make_stack):
    stack = await make_stack(ADMIN)
    c = await stack.connect("r", "u1")
    url = stack.url("/bridge/admin/overview")
    async with stack.http.get(url, headers=AUTH) as r:
        assert r.headers["Cache-Control"] == "no-store" and "Accept" in r.headers["Vary"]
        assert (await r.json())["upstream"]["requestsPerSecond"] is None  # the first: none yet
    await c.command("vote", {"vote": "1"})
    await asyncio.sleep(0.2)
    async with stack.http.get(url, headers=AUTH) as r:
        up = (await r.json())["upstream"]
    assert up["requestsPerSecond"] > 0 and up["meanMs"] is not None
    async with stack.http.get(stack.url("/bridge/admin"), headers={"Accept": "text/html"},
                              allow_redirects=False) as r:  # fmt: skip
        assert r.status == 302 and r.headers["Location"] == "/bridge/admin/"
    await c.close()


async def test_a_session_with_many_users_lists_the_first_twenty(make_stack):
    from bridge.admin import USERS_SHOWN

    stack = await make_stack(ADMIN)
    clients = [await stack.connect("big", f"u{i:02}") for i in range(USERS_SHOWN + 5)]
    async with stack.http.get(stack.url("/bridge/admin/overview"), headers=AUTH) as r:
        (s,) = (await r.json())["sessions"]
    assert len(s["users"]) == USERS_SHOWN and s["usersTotal"] == USERS_SHOWN + 5
    for c in clients:
        await c.close()
