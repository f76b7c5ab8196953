"""A live fuzz run: thousands of random and mutated frames, bodies and queries
against a running bridge; afterwards it still serves a normal client, and
nothing was logged as an unhandled exception."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random

import aiohttp
import msgpack

from tests.conftest import Stack

VALID = [
    {"type": "vote", "id": "v1", "payload": {"vote": "5"}},
    {"type": "reveal", "id": "r1"},
    {"type": "heartbeat", "sessionId": "fz", "userId": "u0"},
    {"type": "pong", "ts": 1},
    {"type": "vote", "sessionId": "fz", "userId": "u0", "vote": "3"},
]


def mutate(rng: random.Random, msg: dict) -> object:
    m = json.loads(json.dumps(msg))
    for _ in range(rng.randint(1, 3)):
        choice = rng.randrange(9)
        keys = list(m) if isinstance(m, dict) else []
        if choice == 0 and keys:
            m.pop(rng.choice(keys))
        elif choice == 1 and isinstance(m, dict):
            m[rng.choice(["type", "id", "payload", "sessionId", "userId", "vote"])] = rng.choice(
                [None, 0, -1, 1e308, True, [], {}, "", "x" * rng.randint(1, 300), "\u0000", "é"]
            )
        elif choice == 2:
            m = [m] * rng.randint(0, 3)
        elif choice == 3:
            m = rng.choice([None, 1, "str", [], 3.5])
        elif choice == 4 and isinstance(m, dict):
            m["payload"] = {"vote": {"deep": [[[[{"x": 1}]]]]}, "extra": "y" * rng.randint(0, 2000)}
        elif choice == 5 and isinstance(m, dict):
            m["type"] = rng.choice(["join", "leave", "ping", "pong", "", "x" * 70, "reset"])
        elif choice == 6 and isinstance(m, dict):
            m["id"] = "".join(rng.choice('ab"\\{}\n') for _ in range(rng.randint(1, 80)))
        elif choice == 7 and isinstance(m, dict):
            m["sessionId"] = rng.choice(["fz", "other", None, 5])
        else:
            pass
    return m


def random_bytes(rng: random.Random) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 200)))


async def test_live_fuzz_leaves_the_bridge_serving(make_stack, caplog):
    caplog.set_level(logging.ERROR)
    stack: Stack = await make_stack(
        {"limits": {"max_message_bytes": "8KiB", "commands_per_second": 1000}}
    )
    rng = random.Random(20261127)
    sent = 0
    # WebSocket: valid handshakes, then random and mutated frames (some close the socket)
    for round_ in range(30):
        try:
            ws = await stack.http.ws_connect(
                stack.url("/api/websocket"), params={"sessionId": "fz", "userId": f"u{round_ % 5}"},
                protocols=(rng.choice(["bridge.v1.json", "bridge.v1.msgpack", "nope"]),),
            )  # fmt: skip
        except aiohttp.WSServerHandshakeError:
            continue
        for _ in range(60):
            kind = rng.randrange(5)
            try:
                if kind == 0:
                    await ws.send_bytes(random_bytes(rng))
                elif kind == 1:
                    await ws.send_str(json.dumps(mutate(rng, rng.choice(VALID))))
                elif kind == 2:
                    await ws.send_bytes(msgpack.packb(mutate(rng, rng.choice(VALID))))
                elif kind == 3:
                    await ws.send_str(random_bytes(rng).decode("latin-1"))
                else:
                    await ws.send_str(json.dumps(rng.choice(VALID)))
                sent += 1
            except (ConnectionError, RuntimeError):
                break
        await ws.close()
    # HTTP: random queries and bodies on every endpoint
    good = await stack.connect("fz", "poller", transport="poll")
    for _ in range(400):
        path = rng.choice(["/api/poll", "/api/events", "/api/messages", "/bridge/push",
                           "/api/websocket", "/metrics", "/readyz"])  # fmt: skip
        params = {k: rng.choice(["fz", "", "x" * 200, "a b", "-1", "9" * 30, "ü"])
                  for k in rng.sample(["sessionId", "userId", "cursor", "wait", "epoch",
                                       "lastSeq", "resumeToken", "transport"], rng.randint(0, 5))}  # fmt: skip
        if rng.random() < 0.3:
            params["resumeToken"] = good.token
        headers = {}
        body: bytes | None = None
        if path in ("/api/messages", "/bridge/push"):
            raw = json.dumps(mutate(rng, rng.choice(VALID))).encode()
            body = rng.choice([raw, random_bytes(rng), gzip.compress(raw), msgpack.packb([1, {}])])
            headers["Content-Type"] = rng.choice(
                ["application/json", "application/msgpack", "text/plain", "application/json; x"]
            )
            if rng.random() < 0.2:
                headers["Content-Encoding"] = "gzip"
            if path == "/bridge/push" and rng.random() < 0.5:
                headers["Authorization"] = "Bearer push-secret"
        if rng.random() < 0.2:
            headers["Last-Event-ID"] = rng.choice(["5", "x", "-2", ""])
        if rng.random() < 0.2:
            headers["Accept"] = rng.choice(["application/msgpack", "text/html", "*/*"])
        method = "POST" if body is not None else "GET"
        try:
            async with stack.http.request(
                method, stack.url(path), params=params, data=body, headers=headers,
                timeout=aiohttp.ClientTimeout(total=3),
            ) as r:  # fmt: skip
                assert r.status < 500 or r.status == 503, (path, params, r.status)
                if r.headers.get("Content-Type", "").startswith("text/event-stream"):
                    await r.content.readline()
                elif r.status >= 400 and path != "/api/websocket":
                    assert "error" in await r.json(), (path, r.status)
        except (TimeoutError, aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            pass
        sent += 1
    assert sent > 1500
    # ... and a normal client is served as ever
    c = await stack.connect("after-fuzz", "normal")
    assert (await c.command("vote", {"vote": "8"}))["status"] == "ok"
    await c.wait_state(lambda s: s["users"][0]["voted"])
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors][:5]
    await asyncio.sleep(0)
