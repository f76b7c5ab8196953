"""The Python client when the bridge goes away and comes back: a restart that
invalidates every resume token (no ``security.token_secret``), a fresh connect
that is refused too, and the reconnect delays after a drain."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web

from bridge.client import BridgeClient, ClientError
from tests.conftest import Stack

FAST = {
    "reconnect": {"initial": "100ms", "max": "800ms", "factor": 2, "jitter": 0.5,
                  "upgrade_interval": "700ms"},
    "presence": {"grace": "30s"},
}  # fmt: skip
NO_SECRET = {**FAST, "security": {"token_secret": ""}}
TRANSPORTS = ("websocket", "sse", "poll")


def make_client(stack: Stack, session: str, user: str, transport: str) -> BridgeClient:
    return BridgeClient(stack.url("").rstrip("/"), session, user, http=stack.http,
                        transports=[transport], poll_wait=1)  # fmt: skip


async def until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"{what}: not met in time"
        await asyncio.sleep(0.02)


async def test_every_client_comes_back_afresh_after_a_restart_without_a_secret(make_stack):
    """The restarted bridge holds another random secret: every resume token is
    refused. Each client drops it and connects once afresh, keeping its outbox."""
    stack = await make_stack(NO_SECRET)
    n = 12
    clients = [make_client(stack, "fresh", f"u{i}", TRANSPORTS[i % 3]) for i in range(n)]
    welcomes: dict[str, list[dict[str, Any]]] = {c.user_id: [] for c in clients}
    errors: list[ClientError] = []
    for c in clients:
        c.on_connect = welcomes[c.user_id].append
        c.on_error = lambda err: errors.append(err) if err.fatal else None
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        await until(lambda: all(c.state is not None for c in clients), what="first state")
        epoch = clients[0].epoch
        await stack.stop_bridge()
        await until(lambda: all(c.connection_type == "none" for c in clients), what="all down")
        # one command per transport, queued while the bridge is down
        votes = [asyncio.create_task(c.send_vote(f"v{i}")) for i, c in enumerate(clients[:3])]
        await asyncio.sleep(0.3)
        assert not any(v.done() for v in votes)
        await stack.restart_bridge()
        await until(
            lambda: all(
                len(welcomes[c.user_id]) >= 2 and c.connection_type != "none" for c in clients
            ),
            timeout=15,
            what="every client welcomed again",
        )
        assert errors == []
        for c in clients:
            assert welcomes[c.user_id][-1]["resumed"] is False, (c.user_id, welcomes[c.user_id])
            assert c.epoch != epoch
        acks = await asyncio.wait_for(asyncio.gather(*votes), 10)
        assert [a["status"] for a in acks] == ["ok", "ok", "ok"]
        for i in range(3):
            assert [x["body"]["vote"] for x in stack.commands(f"/votes/u{i}")] == [f"v{i}"]
        # and the state keeps coming: a vote from elsewhere reaches every client
        other = await stack.connect("fresh", "observer")
        await other.command("vote", {"vote": "13"})
        await until(
            lambda: all(c.state and any(u["id"] == "observer" and u["voted"]
                                        for u in c.state["users"]) for c in clients),
            what="the state after the restart",
        )  # fmt: skip
    finally:
        for c in clients:
            await c.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_client_refused_afresh_too_stops_and_reports_it(make_stack, monkeypatch, transport):
    """After the restart its token is refused; the fresh connect makes the bridge
    join the user upstream, and the app refuses: the client stops there."""
    stack = await make_stack(NO_SECRET)
    c = make_client(stack, "refused", "u1", transport)
    errors: list[ClientError] = []
    c.on_error = errors.append
    try:
        await c.connect()
        await until(lambda: c.state is not None, what="first state")
        backend = stack.backend
        refused: list[str] = []
        body = backend._body

        async def refuse_joins(request: web.Request) -> dict[str, Any]:
            if request.path.endswith("/join"):
                refused.append(request.path)
                raise web.HTTPForbidden(text='{"error":"banned now"}',
                                        content_type="application/json")  # fmt: skip
            return await body(request)

        monkeypatch.setattr(backend, "_body", refuse_joins)
        await stack.restart_bridge()
        await until(lambda: any(e.fatal for e in errors), timeout=15, what="a fatal error")
        fatal = [e for e in errors if e.fatal]
        assert len(fatal) == 1, errors
        await asyncio.sleep(1.5)  # several backoff periods: no further attempt
        assert refused == ["/api/sessions/refused/join"], "one fresh connect, then it stopped"
        assert fatal[0].code in ("close_4401", "unauthorized"), fatal[0]
        assert c.error is fatal[0]
        assert c.connection_type == "none"
        with pytest.raises(ClientError) as info:
            await c.send_vote("1")
        assert info.value is fatal[0]
    finally:
        await c.close()


async def test_reconnect_delays_after_a_drain_are_spread_over_retry_after(make_stack):
    """The drain's notice says retry_after; 50 clients with the real RNG must
    spread their reconnects over (0, retry_after), not all wait retry_after."""
    stack = await make_stack(FAST)
    clients = [make_client(stack, f"herd{i % 5}", f"u{i}", TRANSPORTS[i % 3]) for i in range(50)]
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        before = {c.user_id: len(c.delays) for c in clients}
        # What SIGTERM does (see cli.serve): drain while still listening, then stop.
        draining = asyncio.create_task(stack.bridge.drain(3.0))
        await until(lambda: all(len(c.delays) > before[c.user_id] for c in clients),
                    what="every client chose a delay")  # fmt: skip
        await draining
        notices = [[m for m in c.received if m.get("type") == "reconnect"][-1] for c in clients]
        retry_after = notices[0]["retry_after_ms"] / 1000
        assert {n["retry_after_ms"] for n in notices} == {notices[0]["retry_after_ms"]}
        assert {n["reason"] for n in notices} == {"draining"}
        first = [c.delays[before[c.user_id]] for c in clients]
        assert min(first) < 0.3 * retry_after, (retry_after, sorted(first))
        assert max(first) <= retry_after, (retry_after, sorted(first))
        assert len(set(first)) > 1
    finally:
        for c in clients:
            await c.close()


@pytest.mark.parametrize("transport", ["sse", "poll"])
async def test_a_post_refused_for_its_token_leads_to_a_fresh_connect(make_stack, transport):
    """The token expires while the stream stays up: the POST of a command is
    answered 401. Instead of retrying it forever, the client connects afresh
    and the command goes with the new token, once."""
    stack = await make_stack({**FAST, "security": {"token_ttl": "2s"}})
    c = make_client(stack, "expiry", "u1", transport)
    welcomes: list[dict[str, Any]] = []
    c.on_connect = welcomes.append
    try:
        await c.connect()
        await asyncio.sleep(2.2)  # the token has expired; the stream is still up
        ack = await asyncio.wait_for(c.send_vote("8"), 10)
        assert ack["status"] == "ok"
        assert [x["body"]["vote"] for x in stack.commands("/votes/u1")] == ["8"]
        assert len(welcomes) >= 2 and welcomes[-1]["resumed"] is False, welcomes
        assert c.error is None
    finally:
        await c.close()
