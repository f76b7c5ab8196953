"""Each bad input of protocol.md gets its error or close code, and the next
client is served normally."""

import asyncio
import contextlib
import re
import socket

import aiohttp
import msgpack
import pytest

from bridge.protocol import tokens
from tests.conftest import Stack


async def served_normally(stack: Stack, session: str = "after") -> None:
    c = await stack.connect(session, "next-user")
    assert (await c.command("vote", {"vote": "2"}))["status"] == "ok"
    await c.wait_state(lambda s: any(u.get("voted") for u in s["users"]))


async def test_malformed_json_gets_bad_message_and_the_connection_stays(stack: Stack):
    c = await stack.connect()
    await c.ws.send_str("{not json")
    err = await c.wait_for(lambda m: m["type"] == "error")
    assert err["code"] == "bad_message" and err["message"] == "not valid JSON"
    await c.ws.send_str("[1,2]")
    await c.ws.send_str('{"id": "x1"}')
    ack = await c.wait_for(lambda m: m.get("id") == "x1")
    assert ack["status"] == "error" and ack["error"]["code"] == "bad_message"
    assert (await c.command("vote", {"vote": "1"}))["status"] == "ok"
    await served_normally(stack)


async def test_oversized_frame_closes_1009(make_stack):
    stack = await make_stack({"limits": {"max_message_bytes": "1KiB"}})
    c = await stack.connect()
    await c.ws.send_str('{"type":"vote","payload":{"vote":"' + "x" * 2000 + '"}}')
    assert await c.closed() == 1009
    await served_normally(stack)


async def test_invalid_utf8_closes_1007(stack: Stack):
    c = await stack.connect()
    # A text frame with invalid UTF-8 (RFC 6455 §8.1): written raw, past aiohttp's checks.
    writer = c.ws._writer
    writer._write_websocket_frame(b"\xff\xfe", 0x1, 0)
    assert await c.closed() == 1007
    await served_normally(stack)


async def test_unknown_type_and_foreign_ids(stack: Stack):
    c = await stack.connect("s1", "u1")
    ack = await c.command("dance", {"style": "tango"})
    assert ack["error"]["code"] == "unknown_type"
    await c.send({"type": "vote", "id": "f1", "sessionId": "s2", "vote": "1"})
    ack = await c.wait_for(lambda m: m.get("id") == "f1")
    assert ack["error"]["code"] == "forbidden"
    await c.send({"type": "vote", "id": "f2", "userId": "someone-else", "vote": "1"})
    ack = await c.wait_for(lambda m: m.get("id") == "f2")
    assert ack["error"]["code"] == "forbidden"
    await c.send({"type": "vote", "id": "f3", "payload": {}})
    ack = await c.wait_for(lambda m: m.get("id") == "f3")
    assert ack["error"] == {"code": "bad_message", "message": "missing value for {payload.vote}"}
    assert stack.commands("/votes/") == []
    await served_normally(stack)


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"sessionId": "bad session!", "userId": "u1"}, 4400),
        ({"sessionId": "s1", "userId": ""}, 4400),
        ({"sessionId": "s1", "userId": "u1", "lastSeq": "-3"}, 4400),
        ({"sessionId": "s1", "userId": "u1", "epoch": "e!"}, 4400),
        ({"sessionId": "s1", "userId": "u1", "resumeToken": "forged.token"}, 4401),
    ],
)
async def test_bad_connect_parameters_close_with_their_code(stack: Stack, query, code):
    ws = await stack.http.ws_connect(stack.url("/api/websocket"), params=query)
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == code
    await ws.close()
    await served_normally(stack)


async def test_tokens_of_another_user_or_expired_are_refused(stack: Stack):
    c = await stack.connect("s1", "alice")
    token = c.welcome_msg["resumeToken"]
    ws = await stack.http.ws_connect(
        stack.url("/api/websocket"),
        params={"sessionId": "s1", "userId": "mallory", "resumeToken": token},
    )
    await ws.receive(timeout=5)
    assert ws.close_code == 4401
    expired = tokens.issue(
        b"test-secret",
        tokens.TokenClaims("c1", "s1", "alice", expires=1),  # type: ignore[arg-type]
    )
    ws = await stack.http.ws_connect(
        stack.url("/api/websocket"),
        params={"sessionId": "s1", "userId": "alice", "resumeToken": expired},
    )
    await ws.receive(timeout=5)
    assert ws.close_code == 4401


async def test_plain_get_on_the_websocket_path_is_a_json_400(stack: Stack):
    async with stack.http.get(stack.url("/api/websocket")) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "bad_request"


async def test_origin_policy(make_stack):
    stack = await make_stack({"security": {"allowed_origins": ["https://poker.example.com"]}})
    ok = await stack.connect(headers={"Origin": "https://poker.example.com"})
    assert ok.welcome_msg
    ws = await stack.http.ws_connect(
        stack.url("/api/websocket"),
        params={"sessionId": "s1", "userId": "u2"},
        headers={"Origin": "https://evil.example"},
    )
    await ws.receive(timeout=5)
    assert ws.close_code == 1008
    await stack.connect("s1", "no-origin-header")  # non-browser clients are allowed


async def test_join_refused_upstream_closes_4401(stack: Stack):
    ws = await stack.http.ws_connect(
        stack.url("/api/websocket"), params={"sessionId": "s1", "userId": "banned-1"}
    )
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.CLOSE and ws.close_code == 4401
    await served_normally(stack)


async def test_join_on_a_missing_route_closes_4404(make_stack):
    stack = await make_stack(
        {"upstream": {"commands": {"join": {"path": "/api/rooms/{sessionId}/enter"}}}}
    )
    ws = await stack.http.ws_connect(
        stack.url("/api/websocket"), params={"sessionId": "s1", "userId": "u1"}
    )
    await ws.receive(timeout=5)
    assert ws.close_code == 4404


async def test_upstream_down_at_join_closes_1013(make_stack, unused_tcp_port_factory):
    port = unused_tcp_port_factory()
    stack = await make_stack({"upstream": {"url": f"http://127.0.0.1:{port}"}})
    ws = await stack.http.ws_connect(
        stack.url("/api/websocket"), params={"sessionId": "s1", "userId": "u1"}
    )
    await ws.receive(timeout=5)
    assert ws.close_code == 1013
    assert stack.bridge.sessions == {}


async def test_heartbeat_ping_pong_and_timeout_4408(make_stack):
    stack = await make_stack({"heartbeat": {"interval": "150ms", "timeout": "500ms"}})
    alive = await stack.connect("s1", "alive")  # the test client answers every ping

    async def keep_reading():
        with contextlib.suppress(TimeoutError):
            await alive.wait_for(lambda m: False, timeout=1.5)

    reader = asyncio.create_task(keep_reading())
    silent_ws = await stack.http.ws_connect(
        stack.url("/api/websocket"), params={"sessionId": "s1", "userId": "silent"}
    )
    started = asyncio.get_running_loop().time()
    while True:
        msg = await silent_ws.receive(timeout=5)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            break
    elapsed = asyncio.get_running_loop().time() - started
    assert silent_ws.close_code == 4408
    assert 0.4 <= elapsed <= 2.0
    await reader
    pings = [m for m in alive.received if m["type"] == "ping"]
    assert len(pings) >= 4, "pings are sent at the heartbeat interval"
    assert alive.close_code is None and not alive.ws.closed
    async with stack.http.get(stack.url("/metrics")) as r:
        assert 'bridge_heartbeat_timeouts_total{transport="websocket"} 1.0' in await r.text()


async def test_msgpack_subprotocol(stack: Stack):
    ws = await stack.http.ws_connect(
        stack.url("/api/websocket"),
        params={"sessionId": "s1", "userId": "u1"},
        protocols=("bridge.v1.msgpack",),
    )
    assert ws.protocol == "bridge.v1.msgpack"
    welcome = msgpack.unpackb((await ws.receive(timeout=5)).data)
    assert welcome["type"] == "welcome"
    await ws.send_bytes(msgpack.packb({"type": "vote", "id": "m1", "payload": {"vote": 3}}))
    seen = []
    while not any(m.get("type") == "ack" for m in seen):
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.BINARY
        seen.append(msgpack.unpackb(msg.data))
    assert [m for m in seen if m["type"] == "ack"][0]["status"] == "ok"
    await ws.send_bytes(b"\xc1")
    while True:
        m = msgpack.unpackb((await ws.receive(timeout=5)).data)
        if m["type"] == "error":
            assert m["code"] == "bad_message"
            break
    await ws.close()


async def test_a_second_connection_of_the_same_client_replaces_the_first(stack: Stack):
    first = await stack.connect("s1", "u1")
    await first.wait_state(lambda s: True)
    second = await stack.connect("s1", "u1", **first.resume_params())
    assert second.welcome_msg["clientId"] == first.welcome_msg["clientId"]
    assert await first.closed() == 1000
    assert (await second.command("vote", {"vote": "1"}))["status"] == "ok"


async def test_session_full_closes_1013(make_stack):
    stack = await make_stack({"limits": {"max_clients_per_session": 2}})
    await stack.connect("s1", "a")
    await stack.connect("s1", "b")
    ws = await stack.http.ws_connect(
        stack.url("/api/websocket"), params={"sessionId": "s1", "userId": "c"}
    )
    await ws.receive(timeout=5)
    assert ws.close_code == 1013
    await served_normally(stack)


async def push_states(stack, n: int, start: int = 0, pad: int = 60000) -> None:
    for i in range(start, start + n):
        async with stack.http.post(
            stack.url("/bridge/push"), json={"sessionId": "s1", "state": {"i": i, "pad": "x" * pad}},
            headers={"Authorization": "Bearer push-secret"},
        ) as r:  # fmt: skip
            assert r.status == 202


def starve(stack, client) -> asyncio.Transport:
    """Make ``client`` a slow consumer: it stops reading, and both ends' kernel
    buffers are made small (as on a slow link) so the bridge's own queue fills."""
    transport = client.ws._response.connection.transport
    # Not below the loopback MSS (64 KiB): a smaller window never reopens (RFC 1122 SWS).
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 131072)
    server_side = stack.bridge.sessions["s1"].conns[client.welcome_msg["clientId"]]._tr
    server_side.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 131072)
    transport.pause_reading()
    return transport


async def test_a_slow_consumer_gets_the_newest_snapshot_and_delays_nobody(make_stack):
    stack = await make_stack({"limits": {"send_queue_bytes": "256KiB"}})
    fast = await stack.connect("s1", "fast")
    slow = await stack.connect("s1", "slow")
    await fast.wait_state(lambda s: True)
    await slow.wait_state(lambda s: True)
    slow_transport = starve(stack, slow)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(60):
        await push_states(stack, 1, start=i)
        await fast.wait_state(lambda s, i=i: s.get("i") == i, timeout=5)
    assert loop.time() - started < 10, "the fast client kept its pace"
    async with stack.http.get(stack.url("/metrics")) as r:
        text = await r.text()
    collapses = float(
        re.search(r'bridge_slow_consumer_collapses_total\{transport="websocket"\} (\S+)', text)[1]
    )
    assert collapses > 10
    conn = stack.bridge.sessions["s1"].conns.get(slow.welcome_msg["clientId"])
    assert conn is not None, "still connected"
    assert conn._held["session"].message["payload"]["i"] == 59, "only the newest is held"
    # What the client saw so far never went backwards; it then comes back (a new
    # connection, as after a network change) and resumes to the newest state.
    seqs = [m["seq"] for m in slow.stream]
    assert seqs == sorted(set(seqs))
    params = slow.resume_params()
    slow.abort()
    back = await stack.connect("s1", "slow", **params)
    last = await back.wait_state(lambda s: s.get("i") == 59, timeout=10)
    assert last["seq"] == fast.stream[-1]["seq"]
    assert [m["seq"] for m in back.stream] == sorted({m["seq"] for m in back.stream})
    del slow_transport


async def test_a_consumer_stuck_past_its_queue_is_closed_1013(make_stack):
    stack = await make_stack(
        {"limits": {"send_queue_bytes": "64KiB"},
         "heartbeat": {"interval": "300ms", "timeout": "10s"}}
    )  # fmt: skip
    fast = await stack.connect("s1", "fast")
    slow = await stack.connect("s1", "slow")
    await fast.wait_state(lambda s: True)
    starve(stack, slow)
    reader = asyncio.create_task(fast.wait_for(lambda m: False, timeout=3))
    await push_states(stack, 30)
    await asyncio.sleep(1.5)
    assert slow.welcome_msg["clientId"] not in stack.bridge.sessions["s1"].conns
    async with stack.http.get(stack.url("/metrics")) as r:
        assert 'bridge_slow_consumer_closes_total{transport="websocket"} 1.0' in await r.text()
    with contextlib.suppress(TimeoutError):
        await reader
    assert fast.close_code is None
    slow.abort()  # its reads are paused: a polite close would wait 10 s for the handshake
