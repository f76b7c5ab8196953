"""Issue 11: every task, session and request ends cleanly.

Each test here reproduces one way the bridge used to fail silently (a dead
task, a stuck breaker, a ghost user, a 500) against real servers on loopback;
the autouse ``no_silent_failures`` fixture (tests/conftest.py) also fails any
of them that logs an ERROR it did not expect.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import msgpack
import pytest
from aiohttp import WSMsgType, web
from aiohttp_sse import EventSourceResponse

from tests.conftest import Stack


async def faults(stack: Stack, **body) -> None:
    async with stack.http.post(stack.backend_server.make_url("/_demo/faults"), json=body) as r:
        assert r.status == 200


async def eventually(pred, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"{what} not met in {timeout}s"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------ 2. poisoned values


@pytest.mark.parametrize("number", ["1e999", "-1e999", "NaN", "Infinity", str(2**70)])
async def test_a_vote_no_codec_can_carry_is_refused_and_the_session_goes_on(stack: Stack, number):
    c = await stack.connect("poison", "u1")
    await c.wait_state(lambda s: True)
    await c.ws.send_str('{"type":"vote","id":"bad","payload":{"vote":' + number + "}}")
    ack = await c.wait_for(lambda m: m.get("type") == "ack" and m.get("id") == "bad")
    assert ack["status"] == "error" and ack["error"]["code"] == "bad_message", ack
    assert stack.commands("/votes/") == [], "never forwarded"
    assert (await c.command("vote", {"vote": "5"}))["status"] == "ok"
    await c.wait_state(lambda s: any(u.get("voted") for u in s["users"]), timeout=3)


async def read_msgpack(ws, pred, timeout: float = 5.0):
    while True:
        msg = await ws.receive(timeout=timeout)
        assert msg.type is WSMsgType.BINARY, msg
        data = msgpack.unpackb(msg.data)
        if data.get("type") == "ping":
            await ws.send_bytes(msgpack.packb({"type": "pong", "ts": data["ts"]}))
        if pred(data):
            return data


async def test_a_poisoned_msgpack_message_is_refused(stack: Stack):
    c = await stack.connect("poison", "u1", protocols=("bridge.v1.msgpack",), expect_welcome=False)
    await c.ws.send_bytes(
        msgpack.packb({"type": "vote", "id": "m1", "payload": {"vote": float("inf")}})
    )
    while True:
        msg = await c.ws.receive(timeout=5)
        data = msgpack.unpackb(msg.data)
        if data.get("type") == "ack":
            break
    assert data["id"] == "m1" and data["error"]["code"] == "bad_message", data
    await c.ws.send_bytes(msgpack.packb({"type": "vote", "id": "m2", "payload": {"vote": b"raw"}}))
    while True:
        data = msgpack.unpackb((await c.ws.receive(timeout=5)).data)
        if data.get("type") == "ack":
            break
    assert data["id"] == "m2" and data["error"]["code"] == "bad_message", data


@pytest.mark.parametrize("poison", [float("inf"), 2**70])
async def test_a_state_no_codec_can_carry_is_a_failed_poll_not_a_dead_poller(stack: Stack, poison):
    """The app itself returns a value the encoders refuse (a JSON client and a
    msgpack client in the session): polls fail, clients keep the last state, and
    the first good state after it reaches both."""
    c = await stack.connect("app-poison", "u1")
    m = await stack.connect(
        "app-poison", "u2", protocols=("bridge.v1.msgpack",), expect_welcome=False
    )
    await read_msgpack(m.ws, lambda d: d["type"] == "welcome")
    await c.wait_state(lambda s: len(s["users"]) == 2)
    errors = stack.bridge.metrics.state_polls.labels("error")
    before = errors._value.get()
    stack.backend.sessions["app-poison"].votes["u1"] = poison
    stack.backend.sessions["app-poison"].revealed = True  # the votes are in the state now
    await eventually(lambda: errors._value.get() >= before + 2, 5, "failed polls")
    assert not stack.bridge.sessions["app-poison"].poller.done(), "the poller is alive"
    stack.backend.sessions["app-poison"].votes["u1"] = "8"
    await c.wait_state(lambda s: any(u.get("voted") for u in s["users"]), timeout=8)
    await read_msgpack(  # the msgpack client gets it too
        m.ws,
        lambda d: d["type"] == "session" and any(u.get("voted") for u in d["payload"]["users"]),
    )


async def test_a_pushed_state_no_codec_can_carry_is_a_400(stack: Stack):
    await stack.connect("pushed", "u1")
    async with stack.http.post(
        stack.url("/bridge/push"), headers={"Authorization": "Bearer push-secret"},
        data='{"sessionId": "pushed", "state": {"x": 1e999}}',
    ) as r:  # fmt: skip
        body = await r.json()
    assert r.status == 400 and body["error"]["code"] == "bad_message", body


# ------------------------------------------------------------------ 3. de-dupe race on Redis


async def test_a_repeat_arriving_while_the_first_registers_waits_for_its_ack(
    make_stack, redis_server
):
    stack: Stack = await make_stack({"backplane": {"kind": "redis", "url": redis_server.url}})
    c = await stack.connect("race", "u1")
    token = c.welcome_msg["resumeToken"]
    body = {"type": "vote", "id": "same", "payload": {"vote": "3"}}

    async def post():
        async with stack.http.post(
            stack.url("/api/messages"), params={"resumeToken": token}, json=body
        ) as r:
            return r.status, await r.json()

    answers = await asyncio.gather(*(post() for _ in range(6)))
    assert [status for status, _ in answers] == [200] * 6, answers
    acks = [a["acks"][0] for _, a in answers]
    assert all(a == acks[0] for a in acks) and acks[0]["status"] == "ok", acks
    assert len(stack.commands("/votes/u1")) == 1


# ------------------------------------------------------------------ 4. ghost users


@pytest.mark.allow_errors(r"Error handling request.*the client went away")
@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_a_client_gone_before_its_transport_started_leaves_no_ghost(
    make_stack, monkeypatch, transport
):
    stack: Stack = await make_stack()
    original = {"ws": web.WebSocketResponse.prepare, "sse": EventSourceResponse.prepare}

    async def ws_prepare(self, request):
        if request.query.get("userId") == "ghost":
            raise ConnectionResetError("the client went away")
        return await original["ws"](self, request)

    async def sse_prepare(self, request):
        if request.query.get("userId") == "ghost":
            raise ConnectionResetError("the client went away")
        return await original["sse"](self, request)

    monkeypatch.setattr(web.WebSocketResponse, "prepare", ws_prepare)
    monkeypatch.setattr(EventSourceResponse, "prepare", sse_prepare)
    query = {"sessionId": "ghosts", "userId": "ghost"}
    if transport == "websocket":
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await stack.http.ws_connect(stack.url("/api/websocket"), params=query)
    else:
        async with stack.http.get(stack.url("/api/events"), params=query) as r:
            assert r.status == 500  # what aiohttp answers for a handler that raised
    assert len(stack.commands("/join")) == 1, "the join went through"
    # the user is present, in grace (1 s), then gets their one leave; the session goes
    await eventually(lambda: len(stack.commands("/leave")) == 1, 4, "the ghost's leave")
    await eventually(lambda: "ghosts" not in stack.bridge.sessions, 2, "the session dropped")
    assert stack.bridge.registry.reserved == 0 and stack.bridge.per_ip == {}


async def test_a_handshake_cancelled_during_the_join_releases_everything(make_stack):
    stack: Stack = await make_stack({"limits": {"handshake_timeout": "300ms"}})
    await faults(stack, stall=1.0)
    c = await stack.connect("cut", "u1", expect_welcome=False)
    assert await c.closed() == 1013
    await faults(stack)
    # the join may have reached the app: it is undone with a leave, and nothing stays
    await eventually(lambda: "cut" not in stack.bridge.sessions, 4, "the session dropped")
    assert len(stack.commands("/leave")) == 1
    assert stack.bridge.registry.reserved == 0 and stack.bridge.per_ip == {}
    again = await stack.connect("cut", "u1")  # and the user can come back
    assert again.welcome_msg["resumed"] is False


# ------------------------------------------------------------------ 5. header values


@pytest.mark.parametrize(
    "value",
    ["gzip;q=high", "gzip;q=", "gzip;q=1.5", "gzip;q=0.1234", "*;q=x", "gzip;q"],
)
async def test_a_malformed_accept_encoding_is_answered_without_gzip(make_stack, value):
    stack: Stack = await make_stack({"codecs": {"gzip_min_bytes": 0}})  # every answer may be
    c = await stack.connect("ae", "u1")
    await c.wait_state(lambda s: True)
    async with stack.http.get(
        stack.url("/api/poll"), params={"sessionId": "ae", "userId": "u2"},
        headers={"Accept-Encoding": value}, auto_decompress=False,
    ) as r:  # fmt: skip
        assert r.status == 200, await r.text()
        assert "Content-Encoding" not in r.headers
        body = json.loads(await r.read())
    assert body["messages"][0]["type"] == "welcome"


async def test_a_cursor_of_non_ascii_digits_is_a_400(stack: Stack):
    async with stack.http.get(
        stack.url("/api/poll"), params={"sessionId": "d", "userId": "u", "cursor": "²"}
    ) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "bad_request"


# ------------------------------------------------------------------ 6. failure isolation


async def test_one_sessions_failing_state_route_refuses_no_other_session(make_stack):
    # no keep-alives: nothing else reaches the app between the bad session's polls
    stack: Stack = await make_stack({"upstream": {"breaker": {"failures": 3}, "keepalive": None}})
    bad = await stack.connect("bad", "u1")
    await bad.wait_state(lambda s: True)
    await faults(stack, failPaths=["/api/sessions/bad"])
    errors = stack.bridge.metrics.state_polls.labels("error")
    await eventually(lambda: errors._value.get() >= 4, 5, "the bad session's polls failing")
    assert stack.bridge.upstream.breaker_state() == "closed"
    good = await stack.connect("good", "u2")  # a join in another session
    assert good.welcome_msg["resumed"] is False
    await good.wait_state(lambda s: s["users"][0]["id"] == "u2")
    assert (await good.command("vote", {"vote": "1"}))["status"] == "ok"
    # and the failing session's poller backs off instead of hammering the app
    polls = stack.backend.state_requests["bad"]
    await asyncio.sleep(1.0)
    assert stack.backend.state_requests["bad"] - polls <= 3


# ------------------------------------------------------------------ 8. limits under parallel handshakes


async def test_parallel_handshakes_never_overshoot_the_limits(make_stack):
    stack: Stack = await make_stack(
        {"limits": {"max_connections": 3, "max_clients_per_session": 2}}
    )
    await faults(stack, stall=0.4)  # every join takes a while: all handshakes overlap
    first = [stack.connect("par", f"u{i}", expect_welcome=False) for i in range(6)]
    other = [stack.connect(f"par{i}", "x", expect_welcome=False) for i in range(6)]
    clients = await asyncio.gather(*first, *other)
    welcomed = 0
    for c in clients:
        msg = await c.next(timeout=5)
        if msg is not None and msg["type"] == "welcome":
            welcomed += 1
        else:
            assert c.close_code == 1013, c.close_code
    assert welcomed == 3, "max_connections"
    assert all(len(s.conns) <= 2 for s in stack.bridge.sessions.values()), "per session"
    assert len(stack.bridge.connections) == 3 and stack.bridge.registry.reserved == 0


async def test_rate_limit_buckets_of_gone_clients_are_forgotten(stack: Stack):
    c = await stack.connect("buckets", "keeper")
    await c.wait_state(lambda s: True)
    session = stack.bridge.sessions["buckets"]
    for i in range(60):  # sixty clients that only POST (no stream), one command each
        token = stack.bridge.tokens.issue(f"tab{i}", "buckets", "keeper")
        async with stack.http.post(
            stack.url("/api/messages"), params={"resumeToken": token},
            json={"type": "vote", "id": f"t{i}", "payload": {"vote": "1"}},
        ) as r:  # fmt: skip
            assert r.status == 200
        await asyncio.sleep(0.06)  # past a refill of the one token it took
    assert len(session.buckets) <= 2 * len(session.conns) + 16, len(session.buckets)


@pytest.mark.allow_errors(r"a backplane round failed", r"handling a backplane message failed")
async def test_a_bug_in_a_backplane_handler_is_not_a_redis_outage(
    make_stack, redis_server, monkeypatch
):
    stack: Stack = await make_stack({"backplane": {"kind": "redis", "url": redis_server.url}})
    c = await stack.connect("bug", "u1")
    await c.wait_state(lambda s: True)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the runtime")

    backplane = stack.bridge.backplane
    monkeypatch.setattr(backplane, "_round", broken)
    monkeypatch.setattr(backplane, "_on_pubsub", broken)
    await asyncio.sleep(2.5)  # a few rounds and messages
    async with stack.http.get(stack.url("/readyz")) as r:
        assert r.status == 200, await r.text()
    assert stack.bridge.metrics.backplane_up._value.get() == 1
    assert stack.bridge.metrics.backplane_errors.labels("bug")._value.get() >= 1


# ------------------------------------------------------------------ 9. no ping storm


async def test_a_slow_command_does_not_stop_the_connection_from_reading(make_stack):
    stack: Stack = await make_stack({"heartbeat": {"interval": "200ms", "timeout": "500ms"}})
    c = await stack.connect("slow", "u1")
    await c.wait_state(lambda s: True)
    await faults(stack, stall=1.5)  # the vote stays upstream 3 x heartbeat.timeout
    started = len([m for m in c.received if m["type"] == "ping"])
    ack = await c.command("vote", {"vote": "1"}, timeout=6)  # answering every ping meanwhile
    assert ack["status"] == "ok"
    pings = len([m for m in c.received if m["type"] == "ping"]) - started
    assert 4 <= pings <= 11, f"{pings} pings in 1.5 s at a 200 ms interval"
    assert c.close_code is None
    await c.send({"type": "heartbeat"})  # and it still reads
    await c.wait_for(lambda m: m.get("type") == "heartbeat")


async def test_commands_of_one_connection_stay_in_order_behind_a_slow_one(make_stack):
    stack: Stack = await make_stack()
    c = await stack.connect("order", "u1")
    await c.wait_state(lambda s: True)
    stack.backend.stall = 0.3
    for i in range(5):
        await c.send({"type": "vote", "id": f"o{i}", "payload": {"vote": str(i)}})
    await c.send({"type": "heartbeat"})
    hb = await c.wait_for(lambda m: m.get("type") == "heartbeat", timeout=1)
    assert hb, "answered while the votes are upstream"
    for i in range(5):
        await c.wait_for(lambda m, i=i: m.get("type") == "ack" and m.get("id") == f"o{i}", 5)
    votes = [x["body"]["vote"] for x in stack.commands("/votes/u1")]
    assert votes == ["0", "1", "2", "3", "4"]


# ------------------------------------------------------------------ 10. the admin index


async def test_the_admin_index_and_unknown_admin_paths(make_stack):
    stack: Stack = await make_stack({"admin": {"token": "adm"}})
    auth = {"Authorization": "Bearer adm"}
    for path in ("/bridge/admin/", "/bridge/admin", "/bridge/admin/nope", "/bridge/admin/a/b"):
        async with stack.http.get(stack.url(path)) as r:
            assert r.status == 401, path
            assert (await r.json())["error"]["code"] == "unauthorized"
    async with stack.http.get(stack.url("/bridge/admin/"), headers=auth) as r:
        assert r.status == 200
        paths = [e["path"] for e in (await r.json())["endpoints"]]
    assert "/bridge/admin/sessions" in paths and "/bridge/admin/sessions/{sessionId}" in paths
    async with stack.http.get(stack.url("/bridge/admin/nope"), headers=auth) as r:
        assert r.status == 404 and (await r.json())["error"]["code"] == "not_found"


async def test_admin_is_off_without_a_token(stack: Stack):
    async with stack.http.get(stack.url("/bridge/admin/")) as r:
        assert r.status == 404


# ------------------------------------------------------------------ a bug reaches its owner


@pytest.mark.allow_errors(r"delivering seq \d+ of session fan to a websocket client failed")
async def test_a_connection_that_fails_to_take_an_entry_is_closed_and_others_get_it(
    stack: Stack, monkeypatch
):
    broken = await stack.connect("fan", "broken")
    fine = await stack.connect("fan", "fine")
    await fine.wait_state(lambda s: len(s["users"]) == 2)
    conn = stack.bridge.sessions["fan"].conns[broken.welcome_msg["clientId"]]
    original = type(conn).deliver

    def deliver(self, entry):
        if self is conn:
            raise RuntimeError("a bug in this adapter")
        return original(self, entry)

    monkeypatch.setattr(type(conn), "deliver", deliver)
    assert (await fine.command("vote", {"vote": "2"}))["status"] == "ok"
    await fine.wait_state(lambda s: any(u.get("voted") for u in s["users"]))
    assert await broken.closed() == 1011


# ------------------------------------------------------------------ found in review


async def test_commands_sent_just_before_a_close_are_forwarded(stack: Stack):
    c = await stack.connect("bye", "u1")
    await c.wait_state(lambda s: True)
    stack.backend.stall = 0.2  # the vote is still upstream when the close is read
    await c.send({"type": "vote", "id": "v", "payload": {"vote": "3"}})
    await c.send({"type": "leave", "id": "l"})
    await c.ws.close()
    await eventually(lambda: len(stack.commands("/leave")) == 1, 3, "the leave, at once")
    assert len(stack.commands("/votes/u1")) == 1
    await asyncio.sleep(1.5)  # past the grace: no second leave
    assert len(stack.commands("/leave")) == 1


async def test_the_leave_undoing_an_uncertain_join_never_overtakes_it(make_stack):
    stack: Stack = await make_stack({"limits": {"handshake_timeout": "300ms"}})
    await faults(stack, stall=1.0, stallPaths=["/api/sessions/slow/join"])
    c = await stack.connect("slow", "u1", expect_welcome=False)
    assert await c.closed() == 1013
    await eventually(lambda: len(stack.commands("/leave")) == 1, 5, "the undoing leave")
    order = [x["path"].rsplit("/", 1)[-1] for x in stack.commands("/api/sessions/slow/")]
    assert order == ["join", "leave"], order  # the app finished the join first
    assert stack.backend.sessions["slow"].users == {}, "nobody left joined at the app"


async def test_a_lone_surrogate_is_refused_at_the_edge(stack: Stack):
    c = await stack.connect("surrogate", "u1")
    await c.wait_state(lambda s: True)
    await c.ws.send_str('{"type":"vote","id":"s1","payload":{"vote":"\\ud800"}}')
    ack = await c.wait_for(lambda m: m.get("type") == "ack" and m.get("id") == "s1")
    assert ack["error"]["code"] == "bad_message"
    await c.ws.send_str('{"type":"vote","id":"\\ud801","payload":{"vote":"1"}}')
    err = await c.wait_for(lambda m: m.get("type") == "error")
    assert err["code"] == "bad_message" and "id" not in err  # the id cannot be echoed
    assert stack.commands("/votes/") == []
    assert (await c.command("vote", {"vote": "5"}))["status"] == "ok"


@pytest.mark.allow_errors(r"starting a websocket client of session crash failed", r"Error handling")
async def test_a_transport_that_fails_to_start_leaves_nothing_behind(stack: Stack, monkeypatch):
    from bridge.transports.websocket import WebSocketConnection

    original = WebSocketConnection.start

    def start(self, welcome, backlog):
        if self.user_id == "crash":
            raise RuntimeError("a bug in start()")
        return original(self, welcome, backlog)

    monkeypatch.setattr(WebSocketConnection, "start", start)
    with pytest.raises((aiohttp.ClientError, AssertionError)):
        await stack.connect("crash", "crash")
    await eventually(lambda: len(stack.commands("/leave")) == 1, 4, "the user's one leave")
    await eventually(lambda: "crash" not in stack.bridge.sessions, 2, "the session dropped")
    assert stack.bridge.connections == {} and stack.bridge.per_ip == {}


async def test_an_explicit_join_after_an_explicit_leave_gets_its_leave(stack: Stack):
    c = await stack.connect("again", "u1")
    await c.wait_state(lambda s: True)
    assert (await c.command("leave"))["status"] == "ok"
    assert (await c.command("join"))["status"] == "ok"
    await c.close()
    await eventually(lambda: len(stack.commands("/leave")) == 2, 4, "a leave for the second join")
    assert stack.backend.sessions["again"].users == {}


async def test_a_retry_after_its_session_was_dropped_is_not_applied_again(stack: Stack):
    token = stack.bridge.tokens.issue("c1", "gone", "u1")
    body = {"type": "reset", "id": "once"}

    async def post():
        async with stack.http.post(
            stack.url("/api/messages"), params={"resumeToken": token}, json=body
        ) as r:
            assert r.status == 200
            return (await r.json())["acks"][0]

    await stack.connect("gone", "u0")  # the session exists at the app
    first = await post()
    assert first["status"] == "ok"
    for c in stack.clients:
        await c.close()
    await eventually(lambda: "gone" not in stack.bridge.sessions, 4, "the session dropped")
    assert await post() == first, "answered from the de-dupe window"
    assert len(stack.commands("/reset")) == 1
