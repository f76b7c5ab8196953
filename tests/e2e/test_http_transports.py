"""The HTTP side: POST /api/messages, codecs, compression and bad bodies."""

import asyncio
import contextlib
import gzip
import resource

import msgpack

from tests.conftest import Stack


async def poll_client(stack: Stack, user: str = "p1"):
    c = await stack.connect("s1", user, transport="poll")
    await c.wait_state(lambda s: True)
    return c


async def post(stack: Stack, token: str, data: bytes, headers: dict[str, str]):
    async with stack.http.post(
        stack.url("/api/messages"), params={"resumeToken": token}, data=data, headers=headers
    ) as r:
        return r.status, await r.read(), r.headers


async def test_messages_answers_acks_and_errors(stack: Stack):
    c = await poll_client(stack)
    answer = await c.post(
        [
            {"type": "vote", "id": "a", "payload": {"vote": "2"}},
            {"type": "heartbeat"},
            {"type": "reveal"},
            {"type": "bogus"},
            "not a map",
            {"type": "vote", "id": "b", "userId": "someone-else", "vote": "1"},
        ]
    )
    assert [a["id"] for a in answer["acks"]] == ["a", "b"]
    assert answer["acks"][1]["error"]["code"] == "forbidden"
    assert [e["code"] for e in answer["errors"]] == ["unknown_type", "bad_message"]
    await c.wait_state(lambda s: s["revealed"])
    # acks were answered by the POST and are not sent again on the stream
    await asyncio.sleep(1.2)
    with contextlib.suppress(TimeoutError):
        await c.wait_for(lambda m: False, timeout=0.5)
    posted = {id(a) for a in answer["acks"]}
    assert [m for m in c.received if m["type"] == "ack" and id(m) not in posted] == []


async def test_token_in_header_and_no_stream_needed(stack: Stack):
    c = await stack.connect("s1", "u1")
    token = c.welcome_msg["resumeToken"]
    await c.close()
    status, body, _ = await post(
        stack, "", b'{"type":"vote","id":"x","payload":{"vote":"5"}}',
        {"Content-Type": "application/json", "X-Bridge-Token": token},
    )  # fmt: skip
    assert status == 200
    assert stack.commands("/votes/u1")[0]["body"] == {"vote": "5"}


async def test_messages_refusals(make_stack):
    stack = await make_stack({"limits": {"max_message_bytes": "4KiB"}})
    c = await poll_client(stack)
    token = c.token
    json_h = {"Content-Type": "application/json"}
    cases = [
        ("", b"{}", json_h, 401, "unauthorized"),
        ("forged.token", b"{}", json_h, 401, "unauthorized"),
        (token, b"{oops", json_h, 400, "bad_message"),
        (token, b"7", json_h, 400, "bad_message"),
        (token, b"\xc1", {"Content-Type": "application/msgpack"}, 400, "bad_message"),
        (token, b"x", {"Content-Type": "text/plain"}, 415, "bad_message"),
        (token, b"[" + b"{}," * 3000 + b"{}]", json_h, 413, "message_too_big"),
        (token, gzip.compress(b"[" + b"1," * 3000 + b"1]"),
         {**json_h, "Content-Encoding": "gzip"}, 413, "message_too_big"),
        (token, b"not gzip", {**json_h, "Content-Encoding": "gzip"}, 400, "bad_message"),
        (token, gzip.compress(b"{}")[:-6], {**json_h, "Content-Encoding": "gzip"}, 400, "bad_message"),
        (token, b"{}", {**json_h, "Content-Encoding": "br"}, 415, "bad_message"),
    ]  # fmt: skip
    for tok, data, headers, status, code in cases:
        async with stack.http.post(
            stack.url("/api/messages"), params={"resumeToken": tok} if tok else {},
            data=data, headers=headers,
        ) as r:  # fmt: skip
            assert r.status == status, (data[:20], headers, await r.text())
            assert (await r.json())["error"]["code"] == code
    answer = await c.post({"type": "vote", "id": "ok", "payload": {"vote": "1"}})
    assert answer["acks"][0]["status"] == "ok"


async def test_a_gzip_bomb_gets_413_and_costs_no_more_than_the_cap(stack: Stack):
    c = await poll_client(stack)
    bomb = gzip.compress(b"[" + b" " * (200 * 1024 * 1024) + b"]", 9)  # 200 MiB of spaces
    assert len(bomb) < 300 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status, body, _ = await post(
        stack, c.token, bomb, {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert status == 413
    assert after - before < 50 * 1024, f"peak RSS grew by {(after - before) // 1024} MiB"
    other = await stack.connect("s1", "other")
    assert (await other.command("vote", {"vote": "1"}))["status"] == "ok"


async def test_gzip_request_bodies_are_accepted(stack: Stack):
    c = await poll_client(stack)
    data = gzip.compress(b'{"type":"vote","id":"g","payload":{"vote":"13"}}')
    status, body, _ = await post(
        stack, c.token, data, {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    )
    assert status == 200 and b'"status":"ok"' in body


async def test_msgpack_on_poll_and_messages(stack: Stack):
    async with stack.http.get(
        stack.url("/api/poll"), params={"sessionId": "s1", "userId": "m1"},
        headers={"Accept": "application/msgpack"},
    ) as r:  # fmt: skip
        assert r.headers["Content-Type"] == "application/msgpack"
        first = msgpack.unpackb(await r.read())
    welcome = first["messages"][0]
    assert welcome["type"] == "welcome"
    status, body, headers = await post(
        stack, welcome["resumeToken"],
        msgpack.packb([{"type": "vote", "id": "m", "payload": {"vote": 21}}]),
        {"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
    )  # fmt: skip
    assert status == 200 and headers["Content-Type"] == "application/msgpack"
    assert msgpack.unpackb(body)["acks"][0]["status"] == "ok"
    cursor, states = first["cursor"], []
    while not any(u.get("voted") for s in states for u in s["payload"]["users"]):
        async with stack.http.get(
            stack.url("/api/poll"),
            params={"sessionId": "s1", "userId": "m1", "resumeToken": welcome["resumeToken"],
                    "epoch": welcome["epoch"], "cursor": cursor, "wait": "3"},
            headers={"Accept": "application/msgpack"},
        ) as r:  # fmt: skip
            batch = msgpack.unpackb(await r.read())
        assert batch["messages"], "a held poll answers when a message arrives"
        assert batch["cursor"] == batch["messages"][-1]["seq"] > cursor
        cursor = batch["cursor"]
        states += [m for m in batch["messages"] if m["type"] == "session"]


async def test_poll_responses_are_gzipped_when_accepted_and_large(make_stack):
    stack = await make_stack({"codecs": {"gzip_min_bytes": 200}})
    async with stack.http.get(
        stack.url("/api/poll"), params={"sessionId": "s1", "userId": "z"},
        headers={"Accept-Encoding": "gzip"},
    ) as r:  # fmt: skip
        assert r.headers.get("Content-Encoding") == "gzip"
        assert (await r.json())["messages"][0]["type"] == "welcome"
    async with stack.http.get(
        stack.url("/api/poll"), params={"sessionId": "s1", "userId": "z2"},
        headers={"Accept-Encoding": "identity"},
    ) as r:  # fmt: skip
        assert "Content-Encoding" not in r.headers


async def test_a_poll_with_a_foreign_token_is_401(stack: Stack):
    alice = await poll_client(stack, "alice")
    async with stack.http.get(
        stack.url("/api/poll"),
        params={"sessionId": "s1", "userId": "mallory", "resumeToken": alice.token},
    ) as r:
        assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"
    async with stack.http.get(
        stack.url("/api/poll"),
        params={"sessionId": "other", "userId": "alice", "resumeToken": alice.token},
    ) as r:
        assert r.status == 401


async def test_a_second_concurrent_poll_ends_the_first_with_an_empty_batch(stack: Stack):
    async with stack.http.get(
        stack.url("/api/poll"), params={"sessionId": "s1", "userId": "p"}
    ) as r:
        first = await r.json()
    w = first["messages"][0]
    params = {"sessionId": "s1", "userId": "p", "resumeToken": w["resumeToken"],
              "epoch": w["epoch"], "cursor": str(first["cursor"]), "wait": "10"}  # fmt: skip
    # Catch up first, so the next polls have nothing to return and are held.
    async with stack.http.get(stack.url("/api/poll"), params={**params, "wait": "1"}) as r:
        caught_up = await r.json()
    params["cursor"] = str(caught_up["cursor"])
    loop = asyncio.get_running_loop()
    started = loop.time()
    older = asyncio.create_task(stack.http.get(stack.url("/api/poll"), params=params))
    await asyncio.sleep(0.3)
    newer = asyncio.create_task(stack.http.get(stack.url("/api/poll"), params=params))
    r_old = await older
    assert loop.time() - started < 2, "the older poll ended at once"
    assert await r_old.json() == {"messages": [], "cursor": caught_up["cursor"]}
    other = await stack.connect("s1", "voter")
    await other.command("vote", {"vote": "3"})
    r_new = await newer
    body = await r_new.json()
    assert body["messages"] and body["cursor"] > caught_up["cursor"]


async def test_poll_wait_is_validated_and_capped(make_stack):
    stack = await make_stack({"limits": {"max_poll_wait": "500ms"}})
    c = await poll_client(stack)
    base = {"sessionId": "s1", "userId": "p1", "resumeToken": c.token, "epoch": c.epoch}
    async with stack.http.get(stack.url("/api/poll"), params={**base, "wait": "soon"}) as r:
        assert r.status == 400
    await c.close()
    loop = asyncio.get_running_loop()
    started = loop.time()
    cursor = stack.bridge.sessions["s1"].hub.log.head
    async with stack.http.get(
        stack.url("/api/poll"), params={**base, "wait": "60", "cursor": str(cursor)}
    ) as r:
        assert (await r.json())["messages"] == []
    assert 0.4 < loop.time() - started < 2.0


async def test_a_drain_does_not_wait_for_a_poll_client_that_hung_up_mid_poll(make_stack):
    import time

    stack = await make_stack()
    client = await stack.connect("hung", "u1", transport="poll")
    await client.wait_state(lambda s: True)
    await asyncio.sleep(0.3)  # its next poll is held by the bridge ...
    await client.close()  # ... when it hangs up
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await stack.bridge.drain(3.0)
    assert time.monotonic() - started < 1.0  # not the 2 s a quiet poll client gets
