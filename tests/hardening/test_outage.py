"""Backend outages: the breaker opens, commands are held and sent when it lets
requests through again, or acked upstream_unavailable when they wait too long;
clients keep the last known state; /readyz reports the upstream, stays 200."""

from __future__ import annotations

import asyncio

from tests.conftest import Stack

OUTAGE = {
    "upstream": {"breaker": {"failures": 2, "recovery": "1500ms"}, "hold": "5s",
                 "retry": {"attempts": 1}},
}  # fmt: skip


async def fail(stack: Stack, ratio: float) -> None:
    async with stack.http.post(
        stack.backend_server.make_url("/_demo/faults"), json={"failRatio": ratio}
    ) as r:
        assert r.status == 200


async def test_commands_are_held_while_the_breaker_is_open(make_stack):
    stack: Stack = await make_stack(OUTAGE)
    c = await stack.connect("out", "u1")
    before = await c.wait_state(lambda s: True)
    await fail(stack, 1.0)
    for i in range(2):  # two failures open the breaker
        ack = await c.command("vote", {"vote": str(i)})
        assert ack["error"]["code"] == "upstream_error"
    assert stack.bridge.upstream.breaker_state() == "open"
    async with stack.http.get(stack.url("/readyz")) as r:
        body = await r.json()
        assert r.status == 200 and body["upstream"]["breaker"] == "open"
    held = asyncio.create_task(c.command("vote", {"vote": "held"}, timeout=10))
    await asyncio.sleep(0.5)
    assert not held.done(), "held while the breaker is open"
    await fail(stack, 0.0)  # the app comes back
    ack = await held
    assert ack["status"] == "ok"
    assert [x["body"]["vote"] for x in stack.commands("/votes/u1")][-1] == "held"
    assert before["payload"]["users"][0]["id"] == "u1"


async def test_a_command_held_too_long_is_acked_unavailable(make_stack):
    stack: Stack = await make_stack({**OUTAGE, "upstream": {**OUTAGE["upstream"], "hold": "500ms"}})
    c = await stack.connect("out", "u1")
    await c.wait_state(lambda s: True)
    await fail(stack, 1.0)
    for i in range(2):
        await c.command("vote", {"vote": str(i)})
    started = asyncio.get_running_loop().time()
    ack = await c.command("vote", {"vote": "late"}, timeout=10)
    assert ack["error"]["code"] == "upstream_unavailable"
    assert 0.4 <= asyncio.get_running_loop().time() - started < 1.5
    # meanwhile clients keep the last known state: no session message was sent for the outage
    states = [m for m in c.stream if m["type"] == "session"]
    assert len(states) == 1
