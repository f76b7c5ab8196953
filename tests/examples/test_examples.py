"""The route maps of config/examples/, each in front of a test app shaped like the
real ones it stands for (tests/apps/): ten clients through join, vote, reveal,
reset and leave; every client sees every step; the app's requests counted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from bridge.app import make_app
from bridge.config import Config, config_from_dict
from bridge.transports.common import BRIDGE
from tests.apps import minted, rpc, spread
from tests.apps.common import RequestLog
from tests.conftest import WSClient, deep_merge

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "examples"
N = 10

#: what the tests change in an example (faster timers; the rest as shipped)
FAST = {
    "upstream": {"timeout": "2s", "retry": {"attempts": 2, "initial": "20ms", "max": "50ms"},
                 "state": {"every": "200ms"}},
    "presence": {"grace": "1s"},
    "security": {"token_secret": "test-secret"},
}  # fmt: skip


def example(
    name: str, app_url: str, overrides: dict[str, Any] | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> Config:  # fmt: skip
    data = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    data = deep_merge(deep_merge(data, FAST), overrides or {})
    if edit is not None:
        edit(data)
    return config_from_dict(data, {"APP_URL": app_url.rstrip("/")}, base_dir=EXAMPLES)


@dataclass
class Shape:
    """How to read one app's state as the bridge hands it to clients."""

    members: Callable[[Any], list[str]]  # names
    voted: Callable[[Any], int]
    votes: Callable[[Any], dict[str, Any] | None]  # name -> vote once revealed


def _rows(state: Any) -> list[dict[str, Any]]:
    return list(state.get("participants", [])) if isinstance(state, dict) else []


ROOM_SHAPE = Shape(
    members=lambda s: [p["name"] for p in _rows(s)],
    voted=lambda s: sum(1 for p in _rows(s) if p["voted"]),
    votes=lambda s: {p["name"]: p["vote"] for p in _rows(s)} if s.get("revealed") else None,
)
SPREAD_SHAPE = Shape(
    members=lambda s: [u["name"] for u in s.get("users") or []],
    voted=lambda s: sum(1 for u in s.get("users") or [] if u["voted"]),
    votes=lambda s: dict(s["results"]) if (s.get("issue") or {}).get("revealed") else None,
)


class Harness:
    def __init__(self, http: aiohttp.ClientSession, bridge_url: str, session: str) -> None:
        self.http = http
        self.bridge_url = bridge_url
        self.session = session
        self.clients: list[WSClient] = []

    async def connect(self, user: str, **params: Any) -> WSClient:
        query = {"sessionId": self.session, "userId": user, **params}
        ws = await self.http.ws_connect(self.bridge_url + "/api/websocket", params=query)
        client = WSClient(ws, self.session, user, params)
        self.clients.append(client)
        await client.welcome()
        return client

    async def everyone_sees(self, pred: Callable[[Any], bool], what: str) -> None:
        async def one(c: WSClient) -> None:
            try:
                await c.wait_state(pred, timeout=10)
            except TimeoutError:
                raise AssertionError(f"{c.user} never saw {what}; last: {c.last_state}") from None

        await asyncio.gather(*(one(c) for c in self.clients))


async def serve(aiohttp_server, app: web.Application) -> str:
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def play_round(h: Harness, shape: Shape, names: list[str], *, dealer_leaves: bool = True):
    """Join (the first user first: the app makes them dealer/admin), vote, reveal,
    reset, leave; each step seen by every client. Returns the acks of the leaves."""
    first = await h.connect("u0", name=names[0])
    rest = await asyncio.gather(*(h.connect(f"u{i}", name=names[i]) for i in range(1, N)))
    clients = [first, *rest]
    await h.everyone_sees(lambda s: sorted(shape.members(s)) == sorted(names), "all joined")
    acks = await asyncio.gather(*(c.command("vote", {"vote": str(i + 1)})
                                  for i, c in enumerate(clients)))  # fmt: skip
    assert all(a["status"] == "ok" for a in acks), acks
    await h.everyone_sees(lambda s: shape.voted(s) == N, "all ten votes")
    assert (await first.command("reveal"))["status"] == "ok"
    expected = {names[i]: str(i + 1) for i in range(N)}
    await h.everyone_sees(lambda s: shape.votes(s) == expected, "the revealed votes")
    assert (await first.command("reset"))["status"] == "ok"
    await h.everyone_sees(lambda s: shape.voted(s) == 0 and shape.votes(s) is None, "the reset")
    leaving = clients if dealer_leaves else clients[1:]
    leaves = await asyncio.gather(*(c.command("leave") for c in leaving))
    assert all(a["status"] == "ok" for a in leaves), leaves
    stays = [names[0]] if not dealer_leaves else []
    if not dealer_leaves:
        await first.wait_state(lambda s: shape.members(s) == stays, timeout=10)
    return clients


def counts(log: RequestLog, *names: str) -> dict[str, int]:
    return {n: log.count(n) for n in names}


async def test_minted_ids_member_reads_and_lost_updates_prevented(aiohttp_server):
    app = minted.make_app()
    app_url = await serve(aiohttp_server, app)
    log = app[minted.STATE]
    bridge = await aiohttp_server(make_app(example("minted", app_url)))
    async with aiohttp.ClientSession() as http:
        async with http.post(app_url + "/api/v1/rooms", json={"name": "Sprint 7"}) as r:
            room = (await r.json())["room_id"]  # an id the app mints
        h = Harness(http, str(bridge.make_url("")).rstrip("/"), room)
        started = time.monotonic()
        names = [f"Player {i}" for i in range(N)]
        clients = await play_round(h, ROOM_SHAPE, names)
        elapsed = time.monotonic() - started
        # the user's minted id reached the welcome (so a page can show "you")
        assert all(len(c.welcome_msg["context"]["appId"]) == 32 for c in clients)
        ids = {c.welcome_msg["context"]["appId"] for c in clients}
        assert len(ids) == N
        for c in clients:
            await c.close()
    seen = counts(log, "join", "vote", "reveal", "reset", "leave", "room")
    print(f"\nminted app requests over {elapsed:.1f}s: {seen}")
    assert {k: v for k, v in seen.items() if k != "room"} == {
        "join": N, "vote": N, "reveal": 1, "reset": 1, "leave": N,
    }  # fmt: skip
    # one poller for the room, never one per client (every 200 ms, plus one after each ack)
    assert seen["room"] <= elapsed / 0.2 + 2 * (3 * N + 2) + 5, seen


@pytest.mark.parametrize("concurrency", [1, N])
async def test_ten_concurrent_votes_are_all_kept_only_one_at_a_time(aiohttp_server, concurrency):
    app = minted.make_app()
    app_url = await serve(aiohttp_server, app)
    store = app[minted.STATE]
    cfg = example("minted", app_url, {"upstream": {"session_concurrency": concurrency}})
    bridge = await aiohttp_server(make_app(cfg))
    async with aiohttp.ClientSession() as http:
        async with http.post(app_url + "/api/v1/rooms", json={"name": "r"}) as r:
            room = (await r.json())["room_id"]
        h = Harness(http, str(bridge.make_url("")).rstrip("/"), room)
        clients = [await h.connect(f"u{i}", name=f"n{i}") for i in range(N)]
        acks = await asyncio.gather(
            *(c.command("vote", {"vote": i}) for i, c in enumerate(clients))
        )
        assert all(a["status"] == "ok" for a in acks)  # the app says ok to every one
        kept = len(store.room(room)["votes"])
        print(f"\n{kept} of {N} concurrent votes kept with session_concurrency {concurrency}")
        for c in clients:
            await c.close()
    if concurrency == 1:
        assert kept == N, f"{kept} of {N} votes kept through the gate"
    else:
        assert kept < N, "without the gate the app loses concurrent votes (the test's premise)"


async def test_state_spread_over_four_gets_forms_and_a_dealer_who_cannot_leave(aiohttp_server):
    app = spread.make_app()
    app_url = await serve(aiohttp_server, app)
    log = app[spread.STATE]
    bridge = await aiohttp_server(make_app(example("spread", app_url)))
    async with aiohttp.ClientSession() as http:
        h = Harness(http, str(bridge.make_url("")).rstrip("/"), "main")
        names = [f"u{i}" for i in range(N)]  # the userId is the name the app keys on
        started = time.monotonic()
        clients = await play_round(h, SPREAD_SHAPE, names, dealer_leaves=False)
        elapsed = time.monotonic() - started
        dealer = clients[0]
        assert dealer.last_state["dealer"] == "u0"
        ack = await dealer.command("leave")
        assert ack["status"] == "error" and ack["error"]["code"] == "upstream_rejected", ack
        for c in clients:
            await c.close()
    state = app[spread.STATE]
    assert state.users == ["u0"] and state.dealer == "u0"
    seen = counts(log, "join", "vote", "reveal", "reset", "leave")
    print(f"\nspread app requests over {elapsed:.1f}s: {seen}, "
          f"GETs {counts(log, 'current', 'show_all', 'show_results', 'dealer')}")  # fmt: skip
    assert seen == {"join": N, "vote": N, "reveal": 1, "reset": 1, "leave": N}
    gets = counts(log, "current", "show_all", "show_results", "dealer")
    assert len(set(gets.values())) == 1, gets  # every part polled each round, one poller
    assert gets["current"] <= elapsed / 0.2 + 2 * (3 * N + 2) + 5, gets


async def test_rpc_actions_chosen_by_header_decoded_by_a_hook(aiohttp_server):
    app = rpc.make_app()
    app_url = await serve(aiohttp_server, app)
    log = app[rpc.STATE]
    bridge = await aiohttp_server(make_app(example("rpc", app_url)))
    async with aiohttp.ClientSession() as http:
        headers = {"Next-Action": rpc.ACTIONS["createRoom"]}
        async with http.post(app_url + "/room/new", json=["Room"], headers=headers) as r:
            room = rpc.parse(await r.text())[1][1]["roomId"]
        h = Harness(http, str(bridge.make_url("")).rstrip("/"), room)
        started = time.monotonic()
        names = [f"P{i}" for i in range(N)]
        first = await h.connect("u0", name=names[0])
        other = await h.connect("u1", name=names[1])
        # an error inside a 200 is a rejection with the app's own words, not "ok"
        ack = await other.command("reveal", id="pre-1")
        assert ack["status"] == "error", ack
        assert ack["error"] == {"code": "upstream_rejected", "message": "not admin"}
        # a null vote keeps its place in the positional arguments
        assert (await other.command("vote", {}, id="pre-2"))["status"] == "ok"
        await first.close()
        await other.close()
        h.clients.clear()
        await asyncio.sleep(1.3)  # both gone (grace 1 s, their leaves sent)
        assert log.count("leave") == 2
        clients = await play_round(h, ROOM_SHAPE, names)
        elapsed = time.monotonic() - started
        assert all(c.welcome_msg["context"]["pid"].startswith("p-") for c in clients)
        for c in clients:
            await c.close()
    seen = counts(log, "join", "vote", "reveal", "reset", "leave", "getRoom", "page")
    print(f"\nrpc app requests over {elapsed:.1f}s: {seen}")
    assert seen["page"] == 0  # every action had its header
    assert {k: seen[k] for k in ("join", "vote", "reveal", "reset", "leave")} == {
        "join": N + 2, "vote": N + 1, "reveal": 2, "reset": 1, "leave": N + 2,
    }  # fmt: skip
    assert seen["getRoom"] <= elapsed / 0.2 + 2 * (3 * N + 6) + 5, seen


async def test_a_wrong_action_id_gets_html_and_that_is_an_error_not_ok(aiohttp_server):
    app = rpc.make_app()
    app_url = await serve(aiohttp_server, app)
    cfg = example("rpc", app_url, {"upstream": {"commands": {"reset": {"headers": {
        "Next-Action": "0" * 40}}}}})  # fmt: skip
    bridge = await aiohttp_server(make_app(cfg))
    async with aiohttp.ClientSession() as http:
        headers = {"Next-Action": rpc.ACTIONS["createRoom"]}
        async with http.post(app_url + "/room/new", json=["Room"], headers=headers) as r:
            room = rpc.parse(await r.text())[1][1]["roomId"]
        h = Harness(http, str(bridge.make_url("")).rstrip("/"), room)
        c = await h.connect("u0", name="A")
        ack = await c.command("reset")
        assert ack["status"] == "error" and ack["error"]["code"] == "upstream_error", ack
        assert "text/x-component" in ack["error"]["message"]
        assert "text/html" in ack["error"]["message"]
        await c.close()
    assert app[rpc.STATE].count("page") == 1


async def test_an_unknown_session_is_refused_4404_and_nothing_is_kept(aiohttp_server):
    app = minted.make_app()
    app_url = await serve(aiohttp_server, app)
    log = app[minted.STATE]

    def no_join(data: dict[str, Any]) -> None:
        # no join mapped: the first state fetch is what finds the room missing
        del data["upstream"]["commands"]["join"]
        data["upstream"]["state"].update({"as": "none", "query": {"user_id": "nobody"}})

    cfg = example("minted", app_url, {"upstream": {"timeout": "4s"}}, edit=no_join)
    server = await aiohttp_server(make_app(cfg))
    async with aiohttp.ClientSession() as http:
        url = str(server.make_url("/api/websocket"))
        ws = await http.ws_connect(url, params={"sessionId": "r-madeup", "userId": "u1"})
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4404
        async with http.get(str(server.make_url("/api/poll")),
                            params={"sessionId": "r-madeup", "userId": "u1"}) as r:  # fmt: skip
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "not_found"
        await asyncio.sleep(0.5)
    bridge = server.app

    assert "r-madeup" not in bridge[BRIDGE].sessions  # no poller, nothing kept
    assert log.count("room") == 2  # one fetch per refused connect, then nothing
    assert log.count("leave") == 0
    # an app slow to say so: the connect waits for the answer (nobody is let in first)
    log.slow["room"] = 2.5
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url, params={"sessionId": "r-slow", "userId": "u1"})
        msg = await ws.receive(timeout=8)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), msg
        assert ws.close_code == 4404
    await asyncio.sleep(0.5)
    assert "r-slow" not in bridge[BRIDGE].sessions and log.count("room") == 3


async def probe(app_url: str, example_name: str, *args: str) -> tuple[int, str]:
    """``session-bridge check-config EXAMPLE --probe …`` as an operator runs it."""
    import os
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "check-config", str(EXAMPLES / f"{example_name}.yaml"),
        "--probe", *args, env={**os.environ, "APP_URL": app_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


async def test_probe_shows_what_the_bridge_would_see(aiohttp_server):
    app = minted.make_app()
    app_url = await serve(aiohttp_server, app)
    async with aiohttp.ClientSession() as http:
        async with http.post(app_url + "/api/v1/rooms", json={"name": "Sprint 7"}) as r:
            room = (await r.json())["room_id"]
    rc, out = await probe(app_url, "minted", "--session", room, "--user", "alice",
                          "--param", "name=Alice", "--leave")  # fmt: skip
    assert rc == 0, out
    assert f"join: POST {app_url}/api/v1/rooms/{room}/participants" in out
    assert "captured for the user" in out and '"appId"' in out
    assert f"GET {app_url}/api/v1/rooms/{room}?user_id=" in out
    assert "decoded after select 'room'" in out and '"name": "Alice"' in out
    assert "probe: ok" in out
    assert app[minted.STATE].room(room)["participants"] == []  # --leave left
    # a room the app does not know: refused, and why
    rc, out = await probe(app_url, "minted", "--session", "r-nope", "--user", "bob",
                          "--param", "name=Bob")  # fmt: skip
    assert rc == 1
    assert "REFUSED: the app answered 404" in out and "4404" in out
    # as: present_user without --user says what is missing
    rc, out = await probe(app_url, "minted", "--session", room)
    assert rc == 1 and "needs --user" in out


async def test_probe_of_parts_and_of_a_hook(aiohttp_server):
    app = spread.make_app()
    app_url = await serve(aiohttp_server, app)
    rc, out = await probe(app_url, "spread", "--session", "main", "--user", "ann")
    assert rc == 0, out
    assert "GET " + app_url + "/issue/current" in out and "state.dealer" in out
    assert "state clients would get (the parts merged):" in out
    assert '"dealer": "ann"' in out  # after select 'name' of /dealer
    rpc_app = rpc.make_app()
    rpc_url = await serve(aiohttp_server, rpc_app)
    async with aiohttp.ClientSession() as http:
        headers = {"Next-Action": rpc.ACTIONS["createRoom"]}
        async with http.post(rpc_url + "/room/new", json=["Room"], headers=headers) as r:
            room = rpc.parse(await r.text())[1][1]["roomId"]
    rc, out = await probe(rpc_url, "rpc", "--session", room, "--user", "u1", "--param", "name=Zed")
    assert rc == 0, out
    assert "> Next-Action: 0e94e09fbecf8e3d521f9c7b8875a4a3d91d4cea" in out
    assert '"pid": "p-' in out and '"name": "Zed"' in out


async def test_on_redis_the_gate_and_the_captures_span_every_instance(aiohttp_server, redis_server):
    app = minted.make_app()
    app_url = await serve(aiohttp_server, app)
    store = app[minted.STATE]
    over = {"backplane": {"kind": "redis", "url": redis_server.url, "lease": "1500ms"}}
    a = await aiohttp_server(make_app(example("minted", app_url, over)))
    b = await aiohttp_server(make_app(example("minted", app_url, over)))
    async with aiohttp.ClientSession() as http:
        async with http.post(app_url + "/api/v1/rooms", json={"name": "r"}) as r:
            room = (await r.json())["room_id"]
        ha = Harness(http, str(a.make_url("")).rstrip("/"), room)
        hb = Harness(http, str(b.make_url("")).rstrip("/"), room)
        on_a = [await ha.connect(f"u{i}", name=f"n{i}") for i in range(0, N, 2)]
        on_b = [await hb.connect(f"u{i}", name=f"n{i}") for i in range(1, N, 2)]
        # a second client of u0 on the other instance: no second join, and the id the
        # app minted for u0 (captured on a) is known on b
        twin = await hb.connect("u0", name="n0")
        assert twin.welcome_msg["context"] == on_a[0].welcome_msg["context"]
        assert store.count("join") == N
        clients = [*on_a, *on_b]
        acks = await asyncio.gather(
            *(c.command("vote", {"vote": i}) for i, c in enumerate(clients))
        )
        assert all(x["status"] == "ok" for x in acks), acks
        assert len(store.room(room)["votes"]) == N, "ten votes through two instances, all kept"
        ack = await twin.command("vote", {"vote": "twin"}, id="twin-1")
        assert ack["status"] == "ok", ack
        assert store.room(room)["votes"][on_a[0].welcome_msg["context"]["appId"]] == "twin"
        for c in [*clients, twin]:
            await c.close()


async def test_a_failing_part_keeps_its_last_value_and_backs_off_alone(aiohttp_server):
    app = spread.make_app()
    app_url = await serve(aiohttp_server, app)
    log = app[spread.STATE]
    bridge = await aiohttp_server(make_app(example("spread", app_url)))
    async with aiohttp.ClientSession() as http:
        h = Harness(http, str(bridge.make_url("")).rstrip("/"), "main")
        first = await h.connect("ann")
        await first.wait_state(lambda s: s.get("dealer") == "ann", timeout=5)
        log.failing.add("dealer")
        before = counts(log, "dealer", "show_all")
        second = await h.connect("bob")
        # the other parts go on: bob appears; the failing part keeps its last value
        await second.wait_state(lambda s: len(s.get("users") or []) == 2)
        await first.wait_state(lambda s: [u["name"] for u in s["users"]] == ["ann", "bob"])
        assert first.last_state["dealer"] == "ann"
        await asyncio.sleep(2.0)
        during = {k: v - before[k] for k, v in counts(log, "dealer", "show_all").items()}
        # show_all every 200 ms (and after each ack); dealer backing off (400, 800, 1600 ms …)
        assert during["show_all"] >= 8 and during["dealer"] <= 5, during
        log.failing.clear()
        assert (await second.command("vote", {"vote": "3"}))["status"] == "ok"
        await first.wait_state(lambda s: [u["voted"] for u in s["users"]] == [False, True])
        for c in h.clients:
            await c.close()


async def test_as_present_user_moves_on_when_that_user_leaves(aiohttp_server):
    app = minted.make_app()
    app_url = await serve(aiohttp_server, app)
    log = app[minted.STATE]
    bridge = await aiohttp_server(make_app(example("minted", app_url)))

    def polled_as() -> str:
        return next(q["user_id"] for (m, n), q in zip(reversed(log.requests),
                    reversed(log.queries), strict=True) if n == "room")  # fmt: skip

    async with aiohttp.ClientSession() as http:
        async with http.post(app_url + "/api/v1/rooms", json={"name": "r"}) as r:
            room = (await r.json())["room_id"]
        h = Harness(http, str(bridge.make_url("")).rstrip("/"), room)
        a = await h.connect("a", name="A")
        b = await h.connect("b", name="B")
        a_id, b_id = a.welcome_msg["context"]["appId"], b.welcome_msg["context"]["appId"]
        await b.wait_state(lambda s: len(s["participants"]) == 2)
        assert polled_as() == a_id  # polled as a ("a" < "b")
        assert (await a.command("leave"))["status"] == "ok"
        await a.close()
        assert (await b.command("vote", {"vote": "8"}))["status"] == "ok"
        await b.wait_state(lambda s: [p["voted"] for p in s["participants"]] == [True])
        assert polled_as() == b_id
        await b.close()
