"""The demo app's own login, through the bridge: the app sets the cookie, the
bridge passes it through untouched and forwards it with the user's commands, and
the app (not the bridge) decides whom a cookie may act for."""

from __future__ import annotations

import aiohttp

from bridge.app import make_app
from bridge.config import config_from_dict


async def _login(stack, name: str) -> tuple[str, str]:
    async with stack.http.post(stack.url("/api/login"), json={"name": name}) as r:
        assert r.status == 200
        body = await r.json()
        cookie = r.cookies["poker_login"]
        assert cookie["httponly"] and cookie["path"] == "/"
    return body["id"], f"poker_login={cookie.value}"


async def test_a_login_cookie_acts_for_its_own_player_only(make_stack):
    stack = await make_stack()
    alice, alice_cookie = await _login(stack, "Alice")
    assert alice.startswith("p") and alice != "Alice"  # the app minted the id
    async with stack.http.get(stack.url("/api/me"), headers={"Cookie": alice_cookie}) as r:
        assert (await r.json()) == {"id": alice, "name": "Alice"}

    client = await stack.connect("r", alice, headers={"Cookie": alice_cookie}, name="Alice")
    assert (await client.command("vote", {"vote": "5"}))["status"] == "ok"
    (join,) = stack.commands("/join")
    (vote,) = stack.commands(f"/votes/{alice}")
    assert join["headers"]["Cookie"] == vote["headers"]["Cookie"] == alice_cookie

    # Alice's cookie claiming to be someone else: the app answers 403, the bridge
    # refuses the connection 4401 (re-authenticate) and keeps nothing of it
    mallory = await stack.connect("r", "pmallory", headers={"Cookie": alice_cookie},
                                  expect_welcome=False)  # fmt: skip
    msg = await mallory.ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4401, msg
    assert [u["id"] for u in (await stack.state("r"))["users"]] == [alice]

    # a stale cookie (logged out) is the app's 401, the same refusal
    async with stack.http.post(stack.url("/api/logout"), headers={"Cookie": alice_cookie}) as r:
        assert r.status == 200 and r.cookies["poker_login"].value == ""
    again = await stack.connect("r2", alice, headers={"Cookie": alice_cookie},
                                expect_welcome=False)  # fmt: skip
    msg = await again.ws.receive()
    assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4401, msg
    await client.close()


async def test_the_bridge_serves_none_of_the_apps_files(aiohttp_server):
    # pass-through off: the page, the login and the app's API are 404 from the
    # bridge itself; only the bridge's own client file is there
    from bridge.demo.backend import make_backend_app

    up = await aiohttp_server(make_backend_app())
    cfg = config_from_dict(
        {"upstream": {"url": str(up.make_url("")), "passthrough": {"enabled": False}}}
    )
    bridge = await aiohttp_server(make_app(cfg))
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/demo", "/api/me"):
            async with http.get(bridge.make_url(path)) as r:
                assert r.status == 404, path
        async with http.get(bridge.make_url("/bridge/client.js")) as r:
            assert r.status == 200
        async with http.get(up.make_url("/")) as r:  # the app's own page
            assert r.status == 200 and "Planning poker" in await r.text()


async def test_leaves_and_keep_alives_act_for_the_cookies_player_only(make_stack):
    stack = await make_stack()
    alice, alice_cookie = await _login(stack, "Alice")
    bob, bob_cookie = await _login(stack, "Bob")
    for who, cookie in ((alice, alice_cookie), (bob, bob_cookie)):
        url = stack.backend_server.make_url("/api/sessions/t/join")
        async with stack.http.post(url, json={"userId": who}, headers={"Cookie": cookie}) as r:
            assert r.status == 200
    for path in ("leave", "heartbeat"):  # Alice's cookie, Bob's id: the app says no
        url = stack.url(f"/api/sessions/t/{path}")  # through the bridge's front door
        async with stack.http.post(
            url, json={"userId": bob}, headers={"Cookie": alice_cookie}
        ) as r:
            assert r.status == 403, path
    assert sorted(u["id"] for u in (await stack.state("t"))["users"]) == sorted([alice, bob])
    # logging out ends the player's seats too (a later leave with the stale cookie is refused)
    async with stack.http.post(stack.url("/api/logout"), headers={"Cookie": bob_cookie}) as r:
        assert r.status == 200
    assert [u["id"] for u in (await stack.state("t"))["users"]] == [alice]


async def test_the_demo_has_no_test_hooks_for_browsers_to_reach(aiohttp_server):
    from bridge.demo.backend import make_backend_app

    up = await aiohttp_server(make_backend_app(test_hooks=False))  # as `session-bridge demo`
    bridge = await aiohttp_server(make_app(config_from_dict({"upstream": {
        "url": str(up.make_url(""))}})))  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with http.get(bridge.make_url("/_demo/stats")) as r:
            assert r.status == 404  # the app's answer: no such route (cookies stay private)
        async with http.post(bridge.make_url("/_demo/faults"), json={"failRatio": 1}) as r:
            assert r.status == 404
        async with http.get(bridge.make_url("/")) as r:
            assert r.status == 200  # the page is there
