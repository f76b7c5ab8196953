"""The whole system over real sockets: the bridge in front of the demo backend."""

import asyncio

import pytest

from tests.conftest import Stack


def seqs(client):
    return [m["seq"] for m in client.stream]


def assert_clean_stream(client):
    """Within an epoch: strictly increasing seqs (a reset starts over)."""
    s = seqs(client)
    assert s == sorted(set(s)), s


async def test_welcome_then_presence_then_state(stack: Stack):
    c = await stack.connect("s1", "alice", name="Alice")
    w = c.welcome_msg
    assert w["resumed"] is False and w["seq"] == 0 and w["clientId"]
    assert w["heartbeat"] == {"interval_ms": 25000, "timeout_ms": 60000}
    assert w["reconnect"]["max_ms"] == 30000 and w["transports"][0] == "websocket"
    presence = await c.wait_for(lambda m: m["type"] == "presence")
    assert presence == {"type": "presence", "seq": 1, "payload": {"online": ["alice"]}}
    state = await c.wait_state(lambda s: True)
    assert state["payload"]["users"] == [{"id": "alice", "name": "Alice", "voted": False}]
    joins = stack.commands("/join")
    assert len(joins) == 1 and joins[0]["body"] == {"userId": "alice", "name": "Alice"}


async def test_ten_users_vote_reveal_reset_and_all_end_with_the_backend_state(stack: Stack):
    clients = [await stack.connect("poker", f"u{i}", name=f"User {i}") for i in range(10)]
    for i, c in enumerate(clients):
        ack = await c.command("vote", {"vote": str(i % 5)})
        assert ack["status"] == "ok", ack
    ack = await clients[0].command("reveal")
    assert ack["status"] == "ok"
    for c in clients:
        revealed = await c.wait_state(lambda s: s["revealed"] and len(s["users"]) == 10)
        assert {u["id"]: u["vote"] for u in revealed["payload"]["users"]} == {
            f"u{i}": str(i % 5) for i in range(10)
        }
    assert (await clients[3].command("reset"))["status"] == "ok"
    final = await stack.state("poker")
    for c in clients:
        await c.wait_state(lambda s: s == final)
        assert c.last_state == final
        assert_clean_stream(c)
    votes = stack.commands("/votes/", "PUT")
    assert sorted(v["path"] for v in votes) == sorted(
        f"/api/sessions/poker/votes/u{i}" for i in range(10)
    ), "each vote reaches the backend exactly once"


async def test_abrupt_drop_and_resume_lose_and_duplicate_nothing(make_stack):
    stack = await make_stack({"presence": {"grace": "10s"}})
    watcher = await stack.connect("s1", "watcher")
    voter = await stack.connect("s1", "voter")
    await watcher.wait_state(lambda s: len(s["users"]) == 2)
    params = watcher.resume_params()
    watcher.abort()
    for v in ("1", "2", "3", "5"):
        assert (await voter.command("vote", {"vote": v}))["status"] == "ok"
        await voter.wait_state(lambda s, v=v: any(u.get("voted") for u in s["users"]))
        await asyncio.sleep(0.25)  # let the poller see each change
    back = await stack.connect("s1", "watcher", **params)
    assert back.welcome_msg["resumed"] is True
    assert back.welcome_msg["clientId"] == watcher.welcome_msg["clientId"]
    await asyncio.sleep(0.5)
    await back.wait_state(lambda s: True)
    combined = seqs(watcher) + seqs(back)
    assert combined == list(range(1, combined[-1] + 1)), "no gap, no duplicate"
    assert back.stream[0]["seq"] == params["lastSeq"] + 1
    assert stack.commands("/leave") == [], "returning within the grace causes no leave"


async def test_resume_from_another_epoch_resets_to_the_latest_state(stack: Stack):
    c = await stack.connect("s1", "u1")
    await c.wait_state(lambda s: True)
    params = c.resume_params()
    await c.close()
    back = await stack.connect("s1", "u1", **{**params, "epoch": "someOtherEpoch"})
    assert back.welcome_msg["resumed"] is False
    await back.wait_for(lambda m: m["type"] == "session")
    types = [m["type"] for m in back.stream]
    assert sorted(types[:2]) == ["presence", "session"]


async def test_a_resent_command_id_is_acked_again_and_not_forwarded_again(stack: Stack):
    c = await stack.connect("s1", "u1")
    first = await c.command("vote", {"vote": "8"}, id="cmd-1")
    assert first["status"] == "ok"
    params = c.resume_params()
    c.abort()
    back = await stack.connect("s1", "u1", **params)
    again = await back.command("vote", {"vote": "8"}, id="cmd-1")
    assert again == first
    assert len(stack.commands("/votes/u1", "PUT")) == 1


async def test_a_duplicate_sent_while_the_first_is_upstream_gets_the_same_ack(stack: Stack):
    stack.backend.stall = 0.3
    c = await stack.connect("s1", "u1")
    other_tab = await stack.connect("s1", "u1")
    await c.send({"type": "vote", "id": "dup", "payload": {"vote": "3"}})
    await asyncio.sleep(0.05)
    await other_tab.send({"type": "vote", "id": "dup", "payload": {"vote": "3"}})
    a1 = await c.wait_for(lambda m: m.get("id") == "dup")
    a2 = await other_tab.wait_for(lambda m: m.get("id") == "dup")
    assert a1 == a2 and a1["status"] == "ok"
    assert len(stack.commands("/votes/u1", "PUT")) == 1


async def test_polls_per_session_not_per_client(stack: Stack):
    sessions = [f"room{i}" for i in range(4)]
    clients = []
    for s in sessions:
        for u in range(20):
            clients.append(await stack.connect(s, f"u{u}"))
    before = dict(stack.backend.state_requests)
    await asyncio.sleep(2.0)
    after = stack.backend.state_requests
    for s in sessions:
        polls = after[s] - before.get(s, 0)
        # one poller per session every 200 ms: about 10 in 2 s, not 20 clients x 10
        assert 5 <= polls <= 16, (s, polls)
    assert len(stack.bridge.sessions) == 4


async def test_grace_return_causes_no_leave_and_absence_causes_exactly_one(stack: Stack):
    stays = await stack.connect("s1", "stays")
    flappy = await stack.connect("s1", "flappy")
    gone = await stack.connect("s1", "gone")
    await stays.wait_for(lambda m: m["type"] == "presence" and len(m["payload"]["online"]) == 3)
    params = flappy.resume_params()
    flappy.abort()
    gone.abort()
    await asyncio.sleep(0.4)
    await stack.connect("s1", "flappy", **params)
    left = await stays.wait_for(
        lambda m: m["type"] == "presence" and m["payload"]["online"] == ["flappy", "stays"],
        timeout=4,
    )
    assert left["payload"]["online"] == ["flappy", "stays"]
    await asyncio.sleep(1.3)
    leaves = stack.commands("/leave")
    assert [c["body"] for c in leaves] == [{"userId": "gone"}]


async def test_keepalive_is_sent_once_per_present_user(stack: Stack):
    a = await stack.connect("s1", "u1")
    await stack.connect("s1", "u1")  # a second tab of the same user
    await stack.connect("s1", "u2")
    await a.wait_state(lambda s: len(s["users"]) == 2)
    await asyncio.sleep(2.2)
    beats = stack.commands("/heartbeat")
    per_user = {u: sum(1 for b in beats if b["body"]["userId"] == u) for u in ("u1", "u2")}
    assert 1 <= per_user["u1"] <= 3 and 1 <= per_user["u2"] <= 3, per_user


async def test_keepalive_keeps_users_alive_past_the_backend_expiry(make_stack):
    stack = await make_stack(backend_expiry=1.5)
    c = await stack.connect("s1", "u1")
    await asyncio.sleep(3.0)
    state = await stack.state("s1")
    assert [u["id"] for u in state["users"]] == ["u1"]
    await c.wait_state(lambda s: [u["id"] for u in s["users"]] == ["u1"])
    assert len(stack.commands("/heartbeat")) >= 2


async def test_explicit_leave_ends_presence_now_and_sends_one_leave(stack: Stack):
    a = await stack.connect("s1", "a")
    b = await stack.connect("s1", "b")
    await a.wait_for(lambda m: m["type"] == "presence" and m["payload"]["online"] == ["a", "b"])
    assert (await b.command("leave"))["status"] == "ok"
    await a.wait_for(lambda m: m["type"] == "presence" and m["payload"]["online"] == ["a"])
    await b.close()
    await asyncio.sleep(1.4)
    assert len(stack.commands("/leave")) == 1


async def test_legacy_flat_messages_and_commands_without_id(stack: Stack):
    c = await stack.connect("s1", "u1")
    await c.send({"type": "vote", "sessionId": "s1", "userId": "u1", "vote": "13"})
    await c.wait_state(lambda s: s["users"][0]["voted"])
    assert stack.commands("/votes/u1")[0]["body"] == {"vote": "13"}
    assert not [m for m in c.received if m["type"] == "ack"]
    await c.send({"type": "heartbeat", "sessionId": "s1", "userId": "u1"})
    hb = await c.wait_for(lambda m: m["type"] == "heartbeat")
    assert isinstance(hb["ts"], int)
    assert stack.commands("/heartbeat") == [], "legacy heartbeats are never forwarded"
    await c.send({"type": "vote", "payload": {}})  # no id, missing field
    err = await c.wait_for(lambda m: m["type"] == "error")
    assert err["code"] == "bad_message" and "payload.vote" in err["message"]


async def test_upstream_errors_become_acks(stack: Stack):
    c = await stack.connect("s1", "u1")
    stack.backend.sessions.pop("s1")
    ack = await c.command("reveal")
    assert ack["status"] == "error"
    assert ack["error"] == {"code": "upstream_rejected", "message": "reveal: upstream answered 404"}


async def test_push_endpoint_broadcasts_the_next_session_message(stack: Stack):
    c = await stack.connect("s1", "u1")
    await c.wait_state(lambda s: True)
    url = stack.url("/bridge/push")
    async with stack.http.post(url, json={"sessionId": "s1", "state": {"x": 1}}) as r:
        assert r.status == 401
        assert (await r.json())["error"]["code"] == "unauthorized"
    auth = {"Authorization": "Bearer push-secret"}
    async with stack.http.post(url, json={"sessionId": "s1", "state": {"x": 1}}, headers=auth) as r:
        assert r.status == 202
        body = await r.json()
    assert body["live"] and body["changed"]
    pushed = await c.wait_state(lambda s: s == {"x": 1})
    assert pushed["seq"] == body["seq"]
    async with stack.http.post(url, json={"sessionId": "nobody", "state": {}}, headers=auth) as r:
        assert r.status == 202 and (await r.json())["live"] is False
    for bad in ({"state": 1}, {"sessionId": "bad id", "state": 1}, [1]):
        async with stack.http.post(url, json=bad, headers=auth) as r:
            assert r.status == 400
    async with stack.http.post(url, data=b"{", headers=auth) as r:
        assert r.status == 400


async def test_health_ready_and_metrics(stack: Stack):
    c = await stack.connect("secret-session-name", "secret-user-name")
    await c.command("vote", {"vote": "1"})
    async with stack.http.get(stack.url("/healthz")) as r:
        assert r.status == 200 and (await r.json())["status"] == "ok"
    async with stack.http.get(stack.url("/readyz")) as r:
        body = await r.json()
        assert r.status == 200 and body["status"] == "ready"
        assert body["upstream"]["breaker"] == "closed"
    async with stack.http.get(stack.url("/metrics")) as r:
        text = await r.text()
    for family in (
        'bridge_connections_active{transport="websocket"} 1.0',
        'bridge_connections_opened_total{transport="websocket"} 1.0',
        'bridge_messages_total{codec="json",direction="in",type="vote"} 1.0',
        'bridge_upstream_requests_total{command="vote",status="2xx"} 1.0',
        "bridge_upstream_request_duration_seconds_bucket",
        "bridge_state_polls_total",
        "bridge_state_changes_total",
        "bridge_resumes_total",
        "bridge_heartbeat_timeouts_total",
        "bridge_delivery_latency_seconds_bucket",
    ):
        assert family in text, family
    assert "secret-session-name" not in text and "secret-user-name" not in text


async def test_shipped_client_files_are_served(stack: Stack):
    async with stack.http.get(stack.url("/bridge/client.js")) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/javascript")
        assert "max-age" in r.headers["Cache-Control"]
        assert "export class ConnectionManager" in await r.text()
    async with stack.http.get(stack.url("/bridge/client.d.ts")) as r:
        assert r.status == 200 and "getState(): ConnectionState" in await r.text()
    # the declarations are tsc's (clients/js): the hook's import the client's as ./client.js
    async with stack.http.get(stack.url("/bridge/use-connection-manager.d.ts")) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/typescript")
        text = await r.text()
        assert 'from "./client.js"' in text
        assert "export declare function useConnectionManager" in text


async def test_permessage_deflate_clients_get_the_same_stream(stack: Stack):
    plain = await stack.connect("s1", "plain")
    ws = await stack.http.ws_connect(
        stack.url("/api/websocket"), params={"sessionId": "s1", "userId": "zipped"}, compress=15
    )
    assert ws.compress == 15
    from tests.conftest import WSClient

    zipped = WSClient(ws, "s1", "zipped", {})
    stack.clients.append(zipped)
    await zipped.welcome()
    assert (await zipped.command("vote", {"vote": "5"}))["status"] == "ok"
    final = await zipped.wait_state(lambda s: len(s["users"]) == 2 and s["users"][1]["voted"])
    mine = await plain.wait_state(lambda s: s == final["payload"])
    assert mine["seq"] == final["seq"]


async def test_each_stream_message_is_framed_once_for_every_connection(stack: Stack, monkeypatch):
    import bridge.core.replay as replay

    calls = []
    real_frame = replay.frame

    def counting_frame(payload, opcode):
        calls.append(opcode)
        return real_frame(payload, opcode)

    monkeypatch.setattr(replay, "frame", counting_frame)
    clients = [await stack.connect("s1", f"u{i}") for i in range(20)]
    for c in clients:
        await c.wait_state(lambda s: len(s["users"]) == 20)
    calls.clear()
    auth = {"Authorization": "Bearer push-secret"}
    async with stack.http.post(
        stack.url("/bridge/push"), json={"sessionId": "s1", "state": {"v": 1}}, headers=auth
    ) as r:
        assert r.status == 202
    for c in clients:
        await c.wait_state(lambda s: s == {"v": 1})
    assert calls == [0x1], "one frame built for 20 connections"


async def test_handshake_headers_are_forwarded_upstream(stack: Stack):
    c = await stack.connect("s1", "u1", headers={"Cookie": "sid=abc", "Authorization": "Bearer t"})
    await c.command("vote", {"vote": "1"})
    join, vote = stack.commands("/join")[0], stack.commands("/votes/")[0]
    for call in (join, vote):
        assert call["headers"] == {"Cookie": "sid=abc", "Authorization": "Bearer t"}


async def test_shutdown_without_drain_closes_clients_with_1001(make_stack):
    stack = await make_stack({"shutdown": {"timeout": 0}})
    c = await stack.connect("s1", "u1")
    closed = asyncio.create_task(c.closed())  # a client reads all the time
    started = asyncio.get_running_loop().time()
    await stack.bridge_server.close()
    assert await closed == 1001
    assert asyncio.get_running_loop().time() - started < 3


async def test_shutdown_drains_every_transport(make_stack, transport):
    stack = await make_stack({"shutdown": {"timeout": "3s"}})
    c = await stack.connect("s1", "u1", transport=transport)
    await c.wait_state(lambda s: True)
    readiness: list[int] = []

    async def probe() -> None:
        while True:
            async with stack.http.get(stack.url("/readyz")) as r:
                readiness.append(r.status)
                if r.status == 503:
                    return
            await asyncio.sleep(0.01)

    # What SIGTERM does (see cli.serve): drain while still listening, then stop.
    started = asyncio.get_running_loop().time()
    draining = asyncio.create_task(stack.bridge.drain(3.0))
    prober = asyncio.create_task(probe())
    notice = await c.wait_for(lambda m: m["type"] == "reconnect", timeout=5)
    assert notice["reason"] == "draining" and 500 <= notice["retry_after_ms"] <= 2000
    if transport == "websocket":
        assert await c.closed() == 1012
    await asyncio.wait_for(prober, 1)
    assert readiness[-1] == 503, "unready while draining"
    async with stack.http.get(
        stack.url("/api/poll"), params={"sessionId": "s", "userId": "x"}
    ) as r:
        assert r.status == 503 and "Retry-After" in r.headers, "no new clients while draining"
    await draining
    await stack.bridge_server.close()
    assert asyncio.get_running_loop().time() - started < 3.5


@pytest.mark.allow_errors(r"a command of a client of session s1 failed")
async def test_an_internal_error_closes_1011_and_others_are_served(stack: Stack, monkeypatch):
    broken = await stack.connect("s1", "broken")
    fine = await stack.connect("s1", "fine")

    async def explode(conn, cmd):
        if conn.user_id == "broken":
            raise RuntimeError("a bug")
        return await original(conn, cmd)

    # the connection's command worker meets a bug (runtime/commands.py)
    original = stack.bridge.commands.command
    monkeypatch.setattr(stack.bridge.commands, "command", explode)
    await broken.send({"type": "vote", "id": "x", "payload": {"vote": "1"}})
    assert await broken.closed() == 1011
    assert (await fine.command("vote", {"vote": "2"}))["status"] == "ok"


async def test_the_poller_stops_when_the_last_client_is_gone(stack: Stack):
    c = await stack.connect("s1", "u1")
    await c.wait_state(lambda s: True)
    await c.close()
    await asyncio.sleep(0.3)
    polls = stack.backend.state_requests["s1"]
    await asyncio.sleep(0.8)
    assert stack.backend.state_requests["s1"] == polls
    await asyncio.sleep(0.6)  # past the 1 s grace: one leave, then the session is dropped
    assert len(stack.commands("/leave")) == 1
    assert "s1" not in stack.bridge.sessions


async def test_deflate_can_be_turned_off(make_stack):
    stack = await make_stack({"codecs": {"websocket_deflate": False, "msgpack": False}})
    ws = await stack.http.ws_connect(
        stack.url("/api/websocket"), params={"sessionId": "s1", "userId": "u1"}, compress=15,
        protocols=("bridge.v1.msgpack", "bridge.v1.json"),
    )  # fmt: skip
    assert ws.compress == 0, "not negotiated when the config turns it off"
    assert ws.protocol == "bridge.v1.json", "msgpack is not offered when turned off"
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    await ws.close()


async def test_no_keepalive_for_a_user_who_left_while_it_waited_for_its_phase(make_stack):
    # u11's keep-alives go at 0.87 of the first half of the interval (crc32 of
    # "ka\nu11"): due at 2 s, sent at about 2.87 s. Gone at 2.1 s (grace 0.1 s),
    # the user left first; the app must not be asked to keep them alive after.
    from bridge.runtime.membership import spread

    assert spread("ka\nu11") > 0.85
    stack = await make_stack({
        "upstream": {"keepalive": {"path": "/api/sessions/{sessionId}/heartbeat",
                                   "json": {"userId": "{userId}"}, "every": "2s"}},
        "presence": {"grace": "100ms"},
    })  # fmt: skip
    client = await stack.connect("ka", "u11")
    await asyncio.sleep(2.1)
    await client.close()
    await asyncio.sleep(1.2)
    assert len(stack.commands("/leave")) == 1
    assert stack.commands("/heartbeat") == []
