"""Limits: commands per client per second."""

from __future__ import annotations

import asyncio

from tests.conftest import Stack


async def test_commands_over_the_rate_are_refused_and_not_remembered(make_stack):
    stack: Stack = await make_stack({"limits": {"commands_per_second": 2}})
    c = await stack.connect("rl", "u1")
    for i in range(8):
        await c.send({"type": "vote", "id": f"v{i}", "payload": {"vote": str(i)}})
    acks = [await c.wait_for(lambda m, i=i: m.get("id") == f"v{i}") for i in range(8)]
    ok = [a for a in acks if a["status"] == "ok"]
    limited = [a for a in acks if a["status"] == "error"]
    assert len(ok) == 5, "a burst of max(5, 2 x rate)"
    assert {a["error"]["code"] for a in limited} == {"rate_limited"}
    assert len(stack.commands("/votes/u1")) == 5
    await asyncio.sleep(0.6)
    c.received.clear()  # wait for the new answer, not the earlier refusal
    again = await c.command("vote", {"vote": "7"}, id="v7")  # the refused id, re-sent later
    assert again["status"] == "ok", "a refused command is not kept by the de-dupe window"
    other = await stack.connect("rl", "u2")
    assert (await other.command("vote", {"vote": "1"}))["status"] == "ok", "per client"


async def test_http_commands_over_the_rate_get_429(make_stack):
    stack: Stack = await make_stack({"limits": {"commands_per_second": 1}})
    c = await stack.connect("rl", "p1", transport="poll")
    body = [{"type": "vote", "id": f"h{i}", "payload": {"vote": "1"}} for i in range(7)]
    async with stack.http.post(
        stack.url("/api/messages"), params={"resumeToken": c.token}, json=body
    ) as r:
        assert r.status == 429 and r.headers["Retry-After"] == "1"
        answer = await r.json()
    codes = [a.get("error", {}).get("code", "ok") for a in answer["acks"]]
    assert codes == ["ok"] * 5 + ["rate_limited"] * 2


async def test_connections_per_address_with_a_trusted_proxy(make_stack):
    stack: Stack = await make_stack(
        {"limits": {"max_connections_per_ip": 2}, "security": {"trusted_proxies": ["127.0.0.1"]}}
    )
    a1 = await stack.connect("ip", "a1", headers={"X-Forwarded-For": "203.0.113.7"})
    await stack.connect("ip", "a2", headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
    refused = await stack.connect(
        "ip", "a3", headers={"X-Forwarded-For": "203.0.113.7"}, expect_welcome=False
    )
    assert await refused.closed() == 1013
    async with stack.http.get(
        stack.url("/api/poll"), params={"sessionId": "ip", "userId": "a4"},
        headers={"X-Forwarded-For": "203.0.113.7"},
    ) as r:  # fmt: skip
        assert r.status == 503 and "Retry-After" in r.headers
    # another address behind the same proxy is not affected
    await stack.connect("ip", "b1", headers={"X-Forwarded-For": "192.0.2.44"})
    await a1.close()
    for _ in range(50):
        if stack.bridge.per_ip.get("203.0.113.7") == 1:
            break
        await asyncio.sleep(0.02)
    await stack.connect("ip", "a5", headers={"X-Forwarded-For": "203.0.113.7"})


async def test_forwarded_for_is_ignored_from_untrusted_peers(make_stack):
    stack: Stack = await make_stack({"limits": {"max_connections_per_ip": 1}})
    await stack.connect("ip", "x1", headers={"X-Forwarded-For": "192.0.2.1"})
    refused = await stack.connect(
        "ip", "x2", headers={"X-Forwarded-For": "192.0.2.2"}, expect_welcome=False
    )
    assert await refused.closed() == 1013, "both are 127.0.0.1: a spoofed header changes nothing"


async def test_cors_only_for_listed_origins(make_stack):
    stack: Stack = await make_stack({"security": {"allowed_origins": ["https://poker.example"]}})
    ok = {"Origin": "https://poker.example", "Access-Control-Request-Method": "POST"}
    async with stack.http.options(stack.url("/api/messages"), headers=ok) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == "https://poker.example"
        assert "X-Bridge-Token" in r.headers["Access-Control-Allow-Headers"]
        assert r.headers["Access-Control-Allow-Credentials"] == "true"
    bad = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    async with stack.http.options(stack.url("/api/messages"), headers=bad) as r:
        assert r.status == 403 and "Access-Control-Allow-Origin" not in r.headers
    async with stack.http.get(
        stack.url("/api/poll"), params={"sessionId": "c", "userId": "u"},
        headers={"Origin": "https://poker.example"},
    ) as r:  # fmt: skip
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "https://poker.example"
    async with stack.http.get(
        stack.url("/api/events"), params={"sessionId": "c", "userId": "v"},
        headers={"Origin": "https://poker.example"},
    ) as r:  # fmt: skip
        assert r.headers["Access-Control-Allow-Origin"] == "https://poker.example"
    open_stack: Stack = await make_stack()
    async with open_stack.http.get(
        open_stack.url("/api/poll"), params={"sessionId": "c", "userId": "u"},
        headers={"Origin": "https://anyone.example"},
    ) as r:  # fmt: skip
        assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers


async def test_a_handshake_that_takes_too_long_is_refused(make_stack):
    stack: Stack = await make_stack({"limits": {"handshake_timeout": "300ms"}})
    async with stack.http.post(
        # the joins stall (their undoing leaves, one grace later, do not)
        stack.backend_server.make_url("/_demo/faults"),
        json={"stall": 2.0, "stallPaths": ["/api/sessions/slow-join/join"]},
    ) as r:
        assert r.status == 200
    loop = asyncio.get_running_loop()
    started = loop.time()
    c = await stack.connect("slow-join", "u1", expect_welcome=False)
    assert await c.closed() == 1013
    assert loop.time() - started < 1.5
    async with stack.http.get(
        stack.url("/api/poll"), params={"sessionId": "slow-join", "userId": "u2"}
    ) as r:
        assert r.status == 503 and (await r.json())["error"]["code"] == "timeout"
    await asyncio.sleep(2.5)  # the stalled join ends; nothing of the session is left
    assert "slow-join" not in stack.bridge.sessions


async def test_slow_headers_are_cut_at_the_handshake_timeout(make_stack):
    stack: Stack = await make_stack({"limits": {"handshake_timeout": "500ms"}})
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.bridge_server.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # ... and the rest never comes
    started = loop.time()
    assert await asyncio.wait_for(reader.read(), 5) == b"", "closed by the bridge"
    assert 0.4 < loop.time() - started < 2.5
    writer.close()
    # long-lived connections are not affected: a WebSocket idles past the timeout
    c = await stack.connect("ok", "u1")
    await asyncio.sleep(1.0)
    assert (await c.command("vote", {"vote": "1"}))["status"] == "ok"
