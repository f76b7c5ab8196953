"""The session scenarios over every transport (websocket, sse, poll), and mixed."""

import asyncio
import random

import pytest

from tests.conftest import TRANSPORTS, Stack


def seqs(client):
    return [m["seq"] for m in client.stream]


async def test_welcome_then_latest_state(stack: Stack, transport):
    c = await stack.connect("s1", "alice", transport=transport, name="Alice")
    assert c.welcome_msg["resumed"] is False and c.welcome_msg["clientId"]
    state = await c.wait_state(lambda s: len(s["users"]) == 1)
    assert state["payload"]["users"][0]["name"] == "Alice"
    await c.wait_for(lambda m: m["type"] == "presence" and m["payload"]["online"] == ["alice"])


async def test_ten_users_vote_reveal_reset(stack: Stack, transport):
    clients = [await stack.connect("poker", f"u{i}", transport=transport) for i in range(10)]
    for i, c in enumerate(clients):
        assert (await c.command("vote", {"vote": str(i % 3)}))["status"] == "ok"
    assert (await clients[0].command("reveal"))["status"] == "ok"
    for c in clients:
        await c.wait_state(lambda s: s["revealed"] and len(s["users"]) == 10)
    assert (await clients[5].command("reset"))["status"] == "ok"
    final = await stack.state("poker")
    for c in clients:
        await c.wait_state(lambda s: s == final)
        assert seqs(c) == sorted(set(seqs(c)))
    assert len(stack.commands("/votes/", "PUT")) == 10


async def test_drop_and_resume_lose_and_duplicate_nothing(make_stack, transport):
    stack = await make_stack({"presence": {"grace": "10s"}})
    watcher = await stack.connect("s1", "watcher", transport=transport)
    voter = await stack.connect("s1", "voter")
    await watcher.wait_state(lambda s: len(s["users"]) == 2)
    params = watcher.resume_params()
    watcher.abort()
    for v in ("1", "2", "3"):
        assert (await voter.command("vote", {"vote": v}))["status"] == "ok"
        await asyncio.sleep(0.25)
    back = await stack.connect("s1", "watcher", transport=transport, **params)
    assert back.welcome_msg["resumed"] is True
    await back.wait_state(lambda s: any(u.get("voted") for u in s["users"]))
    await asyncio.sleep(0.3)
    combined = [s for s in seqs(watcher) if s <= params["lastSeq"]] + seqs(back)
    assert combined == list(range(1, combined[-1] + 1)), combined
    assert stack.commands("/leave") == []


async def test_a_resent_id_is_acked_again_not_forwarded_again(stack: Stack, transport):
    c = await stack.connect("s1", "u1", transport=transport)
    first = await c.command("vote", {"vote": "8"}, id="same")
    again = await c.command("vote", {"vote": "8"}, id="same")
    assert first == again and first["status"] == "ok"
    assert len(stack.commands("/votes/u1")) == 1


async def test_mixed_transports_see_one_stream(stack: Stack):
    clients = [await stack.connect("mix", f"u{i}", transport=TRANSPORTS[i % 3]) for i in range(6)]
    for i, c in enumerate(clients):
        await c.command("vote", {"vote": str(i)})
    await clients[2].command("reveal")
    final = await stack.state("mix")
    for c in clients:
        await c.wait_state(lambda s: s == final)
    await asyncio.sleep(0.5)
    for c in clients:
        await c.wait_for(lambda m: m.get("seq") == stack.bridge.sessions["mix"].hub.log.head)
    # Every client saw the same message for every seq it saw.
    by_seq: dict[int, dict] = {}
    for c in clients:
        for m in c.stream:
            assert by_seq.setdefault(m["seq"], m) == m
    heads = {c.stream[-1]["seq"] for c in clients}
    assert len(heads) == 1


async def test_switching_transports_three_times_during_200_changes(make_stack):
    stack = await make_stack({"presence": {"grace": "30s"}, "replay": {"max_messages": 500}})
    auth = {"Authorization": "Bearer push-secret"}
    order = ["websocket", "sse", "poll", "websocket"]
    client = await stack.connect("s1", "hopper", transport=order[0])
    seen: list[int] = []

    async def push(i: int) -> None:
        async with stack.http.post(
            stack.url("/bridge/push"), json={"sessionId": "s1", "state": {"i": i}}, headers=auth
        ) as r:
            assert r.status == 202

    rng = random.Random(7)
    switch_at = sorted(rng.sample(range(20, 180), 3))
    i = 0
    for step in range(len(order)):
        end = switch_at[step] if step < 3 else 200
        while i < end:
            i += 1
            await push(i)
            if i % 25 == 0:
                await asyncio.sleep(0.01)
        # read what has arrived on this transport, then move on
        await client.wait_state(lambda s, i=i: s.get("i") == i, timeout=10)
        seen += [m["seq"] for m in client.stream]
        if step < 3:
            params = client.resume_params()
            await client.close()
            client = await stack.connect("s1", "hopper", transport=order[step + 1], **params)
            assert client.welcome_msg["resumed"] is True
    assert seen == list(range(seen[0], seen[-1] + 1)), "every seq once, in order"
    states = [m["payload"]["i"] for c in [client] for m in c.stream if "i" in m["payload"]]
    assert states[-1] == 200


async def test_eventsource_reconnect_with_last_event_id(stack: Stack):
    c = await stack.connect("s1", "u1", transport="sse")
    await c.wait_state(lambda s: True)
    token, epoch, last = c.token, c.epoch, c.stream[-1]["seq"]
    c.abort()
    other = await stack.connect("s1", "u2")
    await other.command("vote", {"vote": "1"})
    await asyncio.sleep(0.4)
    # What EventSource does on its own: the same URL, plus the Last-Event-ID header.
    async with stack.http.get(
        stack.url("/api/events"),
        params={"sessionId": "s1", "userId": "u1", "resumeToken": token, "epoch": epoch},
        headers={"Last-Event-ID": str(last)},
    ) as r:
        assert r.status == 200
        assert r.headers["X-Accel-Buffering"] == "no"
        assert r.headers["Cache-Control"] == "no-cache"
        text = ""
        while "event: session" not in text.split("event: welcome", 1)[-1]:
            text += (await r.content.readline()).decode()
    assert '"resumed":true' in text
    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    assert ids and ids[0] == last + 1
    assert ids == list(range(last + 1, last + 1 + len(ids)))


async def test_sse_sends_ping_events(make_stack):
    stack = await make_stack({"heartbeat": {"interval": "200ms", "timeout": "1s"}})
    c = await stack.connect("s1", "u1", transport="sse")
    await c.wait_for(lambda m: m["type"] == "ping", timeout=3)
    await asyncio.sleep(1.3)  # no pong is expected on SSE: the stream is not timed out
    await c.wait_for(lambda m: m["type"] == "ping" and m is not c.received[0], timeout=3)
    assert c.close_code is None


async def test_a_poll_client_that_stops_polling_is_gone(make_stack):
    stack = await make_stack({"heartbeat": {"interval": "200ms", "timeout": "600ms"},
                              "presence": {"grace": "300ms"}})  # fmt: skip
    c = await stack.connect("s1", "u1", transport="poll")
    await c.wait_state(lambda s: True)
    c.abort()
    await asyncio.sleep(1.5)
    assert [x["body"] for x in stack.commands("/leave")] == [{"userId": "u1"}]
    assert "s1" not in stack.bridge.sessions


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_refusals_are_http_statuses_with_json_bodies(make_stack, transport):
    stack = await make_stack({"security": {"allowed_origins": ["https://ok.example"]}})
    path = stack.url("/api/events" if transport == "sse" else "/api/poll")
    cases = [
        ({"sessionId": "bad id", "userId": "u"}, {}, 400, "bad_request"),
        ({"sessionId": "s", "userId": "u", "resumeToken": "x.y"}, {}, 401, "unauthorized"),
        ({"sessionId": "s", "userId": "u"}, {"Origin": "https://evil.example"}, 403, "forbidden"),
        ({"sessionId": "s", "userId": "banned-7"}, {}, 401, "unauthorized"),
    ]
    for query, headers, status, code in cases:
        async with stack.http.get(path, params=query, headers=headers) as r:
            assert r.status == status, (query, await r.text())
            assert (await r.json())["error"]["code"] == code
    c = await stack.connect("s", "fine", transport=transport)
    await c.wait_state(lambda s: True)


async def test_a_turned_off_transport_answers_404_and_welcome_lists_the_others(make_stack):
    stack = await make_stack({"transports": {"websocket": False, "sse": False}})
    for path in ("/api/websocket", "/api/events"):
        async with stack.http.get(stack.url(path), params={"sessionId": "s", "userId": "u"}) as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "transport_disabled"
    c = await stack.connect("s", "u", transport="poll")
    assert c.welcome_msg["transports"] == ["poll"]
    # The bridge reads its transports at request time: turning one on takes effect at once.
    bridge = stack.bridge
    bridge.cfg = bridge.cfg.replace(transports=type(bridge.cfg.transports)(websocket=True))
    ws = await stack.connect("s", "u2")
    assert ws.welcome_msg["transports"] == ["websocket", "sse", "poll"]
