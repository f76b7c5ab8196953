"""state.intercept: the app's own frontend's state polls answered from the bridge's
copy (upstream.md, "Pass-through"), in front of the demo backend."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from bridge.config import ConfigError, config_from_dict
from bridge.transports.common import METRICS

INTERCEPT = {"upstream": {"state": {"intercept": True}}}


async def app_join(stack, session: str, user: str) -> None:
    """What the legacy frontend does itself: join through the app's own API."""
    url = stack.backend_server.make_url(f"/api/sessions/{session}/join")
    async with stack.http.post(url, json={"userId": user, "name": user}) as r:
        assert r.status == 200


def sample(stack, result: str) -> float:
    registry = stack.bridge_server.app[METRICS].registry
    return registry.get_sample_value("bridge_intercept_requests_total", {"result": result}) or 0


async def test_ten_legacy_pollers_cost_the_app_one(make_stack):
    stack = await make_stack(INTERCEPT)
    await app_join(stack, "s1", "alice")
    url = stack.url("/api/sessions/s1")
    stop = time.monotonic() + 2.0
    answers: list[int] = []

    async def poller() -> None:  # an unchanged browser: GET the state every 100 ms
        etag = None
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < stop:
                headers = {"If-None-Match": etag} if etag else {}
                async with http.get(url, headers=headers) as r:
                    answers.append(r.status)
                    if r.status == 200:
                        etag = r.headers["ETag"]
                        assert (await r.json())["id"] == "s1"
                await asyncio.sleep(0.1)

    before = stack.backend.state_requests["s1"]
    await asyncio.gather(*(poller() for _ in range(10)))
    app_saw = stack.backend.state_requests["s1"] - before
    print(f"\n{len(answers)} legacy polls, the app saw {app_saw} state requests")
    assert len(answers) >= 150
    assert app_saw <= 2.0 / 0.2 + 4, app_saw  # one poller at state.every (200 ms)
    assert answers.count(304) > answers.count(200)
    assert sample(stack, "not_modified") > 0 and sample(stack, "hit") + sample(stack, "miss") >= 10


async def test_concurrent_misses_make_one_fetch_and_changes_arrive_within_one_every(make_stack):
    stack = await make_stack(INTERCEPT)
    await app_join(stack, "s2", "bob")
    url = stack.url("/api/sessions/s2")
    async with aiohttp.ClientSession() as http:

        async def get() -> tuple[int, dict]:
            async with http.get(url) as r:
                return r.status, await r.json()

        got = await asyncio.gather(*(get() for _ in range(20)))
        assert all(status == 200 and body["id"] == "s2" for status, body in got)
        assert stack.backend.state_requests["s2"] == 1  # twenty misses, one upstream fetch
        assert sample(stack, "miss") >= 1
        # a change made through the app reaches the legacy pollers within one every
        vote = stack.backend_server.make_url("/api/sessions/s2/votes/bob")
        async with http.put(vote, json={"vote": "5"}) as r:
            assert r.status == 200
        changed = time.monotonic()
        while True:
            status, body = await get()
            if any(u.get("voted") for u in body["users"]):
                break
            await asyncio.sleep(0.02)
        assert time.monotonic() - changed <= 0.2 + 0.15


async def test_unknown_sessions_pass_through_and_nothing_is_followed(make_stack):
    stack = await make_stack(INTERCEPT)
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.url("/api/sessions/made-up")) as r:
            assert r.status == 404  # the app's own answer, passed through
    assert "made-up" not in stack.bridge.sessions


async def faults(stack, **body) -> None:
    async with stack.http.post(stack.backend_server.make_url("/_demo/faults"), json=body) as r:
        assert r.status == 200


async def test_made_up_ids_cost_the_app_what_they_would_without_the_bridge(make_stack):
    stack = await make_stack(INTERCEPT)
    async with aiohttp.ClientSession() as http:
        for _ in range(5):  # a legacy browser polling a session that does not exist
            for i in range(4):
                async with http.get(stack.url(f"/api/sessions/rand{i}")) as r:
                    assert r.status == 404
    # the first poll of each: the check and the poll passed through; then the polls only
    assert sum(stack.backend.state_requests.values()) == 4 * 2 + 4 * 4
    assert not [s for s in stack.bridge.sessions if s.startswith("rand")]


async def test_a_made_up_id_while_the_app_is_unwell_is_answered_503_and_not_kept(make_stack):
    stack = await make_stack(INTERCEPT)
    await faults(stack, failRatio=1.0)
    async with aiohttp.ClientSession() as http:
        for i in range(6):
            async with http.get(stack.url(f"/api/sessions/x{i}")) as r:
                assert r.status == 503  # at once: no wait for a copy, no second request
                body = await r.json()
                assert body["error"]["code"] == "upstream_unavailable"
    assert not [s for s in stack.bridge.sessions if s.startswith("x")]  # no pollers
    assert sample(stack, "unavailable") == 6
    await faults(stack, failRatio=0.0)
    requests = sum(stack.backend.state_requests.values())
    await asyncio.sleep(0.6)
    assert sum(stack.backend.state_requests.values()) == requests  # nobody polls them


async def test_a_flood_of_made_up_polls_never_refuses_a_real_users_command(make_stack):
    stack = await make_stack({"upstream": {"state": {"intercept": True}, "max_in_flight": 1,
                                           "max_queue": 10, "adaptive": False}})  # fmt: skip
    alice = await stack.connect("real", "alice")
    await faults(stack, stall=0.3)
    async with aiohttp.ClientSession() as http:

        async def legacy_poll(i: int) -> int:
            async with http.get(stack.url(f"/api/sessions/rand{i}")) as r:
                return r.status

        flood = [asyncio.ensure_future(legacy_poll(i)) for i in range(40)]
        await asyncio.sleep(0.1)  # the queue to the app is full of their checks
        ack = await alice.command("vote", {"vote": "5"}, timeout=20)
        statuses = await asyncio.gather(*flood)
    assert ack["status"] == "ok", ack  # its place taken from the newest poll
    assert 503 in statuses  # those refused a place were told so at once


async def test_a_session_the_app_deleted_is_not_served_from_the_copy(make_stack):
    stack = await make_stack(INTERCEPT)
    await app_join(stack, "gone", "a")
    statuses = []
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.url("/api/sessions/gone")) as r:
            assert r.status == 200
        del stack.backend.sessions["gone"]  # the app deletes the room
        for _ in range(10):  # its legacy browser keeps polling
            async with http.get(stack.url("/api/sessions/gone")) as r:
                statuses.append(r.status)
            await asyncio.sleep(0.2)
    assert statuses[-3:] == [404, 404, 404], statuses  # the app's own answer again
    assert "gone" not in stack.bridge.sessions


async def test_a_followed_session_is_dropped_after_its_last_poll(make_stack):
    stack = await make_stack(INTERCEPT)
    await app_join(stack, "s3", "cy")
    async with aiohttp.ClientSession() as http:
        async with http.get(stack.url("/api/sessions/s3")) as r:
            assert r.status == 200
    assert "s3" in stack.bridge.sessions
    await asyncio.sleep(5 * 0.2 + 0.5)  # FOLLOW_FOR × every, then the ticker
    assert "s3" not in stack.bridge.sessions
    polls = stack.backend.state_requests["s3"]
    await asyncio.sleep(0.5)
    assert stack.backend.state_requests["s3"] == polls  # nobody polls it any more


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ({"parts": {"a": {"path": "/a"}}}, "it needs one path (not parts)"),
        ({"as": "present_user"}, "the copy is everyone's"),
        ({"method": "POST"}, "it answers a GET"),
        ({"path": "/rooms/{sessionId}/{params.x}", "as": "none"}, "the path must hold"),
    ],
)
def test_intercept_config_errors(state, why):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"upstream": {"url": "http://x", "state": {"intercept": True, **state}}})
    assert any(p.startswith(f"upstream.state.intercept: {why}") for p in info.value.problems), (
        info.value.problems
    )
