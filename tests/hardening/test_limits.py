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
