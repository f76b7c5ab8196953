"""The test backends themselves, driven over loopback with aiohttp's client."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.apps import minted, rpc, spread

Serve = Callable[[web.Application], Awaitable[aiohttp.ClientSession]]


@pytest.fixture
async def serve(aiohttp_server: Any) -> AsyncIterator[Serve]:
    """``await serve(app)``: the app on loopback, and a client session for it."""
    sessions: list[aiohttp.ClientSession] = []

    async def start(app: web.Application) -> aiohttp.ClientSession:
        server: TestServer = await aiohttp_server(app)
        session = aiohttp.ClientSession(base_url=server.make_url("/"))
        sessions.append(session)
        return session

    yield start
    for s in sessions:
        await s.close()


# ---------------------------------------------------------------- minted


class Minted:
    def __init__(self, http: aiohttp.ClientSession, state: minted.MintedState) -> None:
        self.http = http
        self.state = state

    async def post(self, path: str, body: Any, status: int = 200) -> Any:
        async with self.http.post(path, json=body) as r:
            assert r.status == status, await r.text()
            assert r.content_type == "application/json"
            return await r.json()

    async def room(self, name: str = "sprint") -> str:
        answer = await self.post("/api/v1/rooms", {"name": name}, 201)
        return str(answer["room_id"])

    async def join(self, room: str, name: str) -> str:
        answer = await self.post(f"/api/v1/rooms/{room}/participants", {"name": name}, 201)
        assert answer["name"] == name
        return str(answer["user_id"])

    async def get(self, room: str, **params: str) -> tuple[int, Any]:
        async with self.http.get(f"/api/v1/rooms/{room}", params=params) as r:
            return r.status, await r.json()


@pytest.fixture
async def mint(serve: Serve) -> Minted:
    app = minted.make_app()
    return Minted(await serve(app), app[minted.STATE])


async def test_minted_mints_room_and_user_ids(mint: Minted) -> None:
    room = await mint.room()
    assert re.fullmatch(r"r-[0-9a-f]{8}", room)
    alice = await mint.join(room, "alice")
    bob = await mint.join(room, "bob")
    assert re.fullmatch(r"[0-9a-f]{32}", alice) and alice != bob
    status, body = await mint.get(room, user_id=bob)
    assert status == 200
    assert body == {"room": {
        "id": room, "name": "sprint", "revealed": False, "owner": alice,
        "participants": [
            {"id": alice, "name": "alice", "voted": False, "vote": None},
            {"id": bob, "name": "bob", "voted": False, "vote": None},
        ],
    }}  # fmt: skip
    assert await mint.post("/api/v1/rooms/r-00000000/participants", {"name": "x"}, 404) == {
        "detail": "room not found"
    }


async def test_minted_state_needs_a_member_user_id(mint: Minted) -> None:
    room = await mint.room()
    await mint.join(room, "alice")
    assert await mint.get(room) == (422, {"detail": "user_id is required"})
    assert await mint.get(room, user_id="someone") == (403, {"detail": "not a member"})
    assert await mint.get("r-nope", user_id="someone") == (404, {"detail": "room not found"})
    assert await mint.post(f"/api/v1/rooms/{room}/votes", {"user_id": "x", "value": 1}, 403) == {
        "detail": "not a member"
    }
    assert await mint.post(f"/api/v1/rooms/{room}/votes", "[]", 422) == {
        "detail": "body must be a JSON object"
    }


async def test_minted_votes_reveal_reset_leave(mint: Minted) -> None:
    room = await mint.room()
    alice, bob = await mint.join(room, "alice"), await mint.join(room, "bob")
    base = f"/api/v1/rooms/{room}"
    assert await mint.post(f"{base}/votes", {"user_id": alice, "value": 5}) == {"ok": True}
    assert await mint.post(f"{base}/votes", {"user_id": bob, "value": {"card": "?"}}) == {
        "ok": True
    }
    _, body = await mint.get(room, user_id=alice)
    assert [(p["voted"], p["vote"]) for p in body["room"]["participants"]] == [
        (True, None), (True, None)
    ]  # fmt: skip
    await mint.post(f"{base}/reveal", {"user_id": bob})
    _, body = await mint.get(room, user_id=alice)
    assert body["room"]["revealed"] is True
    assert [p["vote"] for p in body["room"]["participants"]] == [5, {"card": "?"}]
    await mint.post(f"{base}/reset", {"user_id": alice})
    _, body = await mint.get(room, user_id=alice)
    assert body["room"]["revealed"] is False
    assert [p["voted"] for p in body["room"]["participants"]] == [False, False]
    async with mint.http.delete(f"{base}/participants/{alice}") as r:
        assert r.status == 204
    async with mint.http.delete(f"{base}/participants/{alice}") as r:
        assert r.status == 403
    assert await mint.get(room, user_id=alice) == (403, {"detail": "not a member"})
    _, body = await mint.get(room, user_id=bob)
    assert body["room"]["owner"] == bob  # the next participant inherits the room
    assert mint.state.count("vote") == 2
    assert mint.state.count("leave", "DELETE") == 2
    assert mint.state.requests[0] == ("POST", "create_room")


async def _votes(mint: Minted, room: str, users: list[str]) -> int:
    _, body = await mint.get(room, user_id=users[0])
    return sum(p["voted"] for p in body["room"]["participants"])


async def test_minted_loses_concurrent_votes(mint: Minted) -> None:
    room = await mint.room()
    users = [await mint.join(room, f"u{i}") for i in range(10)]
    answers = await asyncio.gather(*(
        mint.post(f"/api/v1/rooms/{room}/votes", {"user_id": u, "value": 3}) for u in users
    ))  # fmt: skip
    assert answers == [{"ok": True}] * 10  # every one was answered 200
    assert await _votes(mint, room, users) < 10
    assert mint.state.count("vote") == 10


async def test_minted_keeps_sequential_votes(mint: Minted) -> None:
    room = await mint.room()
    users = [await mint.join(room, f"u{i}") for i in range(10)]
    mint.state.write_delay = 0.001
    for u in users:
        await mint.post(f"/api/v1/rooms/{room}/votes", {"user_id": u, "value": "8"})
    assert await _votes(mint, room, users) == 10
    assert len(mint.state.room(room)["votes"]) == 10


async def test_minted_etag(mint: Minted) -> None:
    room = await mint.room()
    alice = await mint.join(room, "alice")
    url = f"/api/v1/rooms/{room}"
    async with mint.http.get(url, params={"user_id": alice}) as r:
        assert r.status == 200
        etag = r.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    async with mint.http.get(url, params={"user_id": alice}, headers={"If-None-Match": etag}) as r:
        assert r.status == 304
        assert r.headers["ETag"] == etag
        assert await r.read() == b""
    await mint.post(f"{url}/votes", {"user_id": alice, "value": 1})
    async with mint.http.get(url, params={"user_id": alice}, headers={"If-None-Match": etag}) as r:
        assert r.status == 200
        assert r.headers["ETag"] != etag


# ---------------------------------------------------------------- spread


class Spread:
    def __init__(self, http: aiohttp.ClientSession, state: spread.SpreadState) -> None:
        self.http = http
        self.state = state

    async def form(self, path: str, status: int = 200, **fields: str) -> Any:
        async with self.http.post(path, data=fields) as r:
            assert r.request_info.headers["Content-Type"] == "application/x-www-form-urlencoded"
            assert r.status == status, await r.text()
            assert r.content_type == "application/json"
            return await r.json()

    async def get(self, path: str) -> Any:
        async with self.http.get(path) as r:
            assert r.status == 200
            assert r.content_type == "application/json"
            return await r.json()

    async def all(self) -> dict[str, Any]:
        paths = ["/issue/current", "/user/show_all", "/issue/show_results", "/dealer"]
        return dict(zip(paths, [await self.get(p) for p in paths], strict=True))


@pytest.fixture
async def game(serve: Serve) -> Spread:
    app = spread.make_app()
    return Spread(await serve(app), app[spread.STATE])


async def test_spread_join_with_forms_first_is_dealer(game: Spread) -> None:
    assert await game.get("/dealer") == {"name": None}
    assert await game.form("/user/join", name="ann") == {"name": "ann", "dealer": True}
    assert await game.form("/user/join", name="ben") == {"name": "ben", "dealer": False}
    assert await game.form("/user/join", name="ann") == {"name": "ann", "dealer": True}
    assert await game.form("/user/join", 422) == {"detail": "name is required"}
    async with game.http.post("/user/join", json={"name": "json"}) as r:  # not a form
        assert r.status == 422
    assert await game.get("/user/show_all") == [
        {"name": "ann", "voted": False}, {"name": "ben", "voted": False}
    ]  # fmt: skip
    assert await game.get("/dealer") == {"name": "ann"}


async def test_spread_dealer_cannot_leave(game: Spread) -> None:
    await game.form("/user/join", name="ann")
    await game.form("/user/join", name="ben")
    assert await game.form("/user/leave", 409, name="ann") == {"detail": "the dealer cannot leave"}
    assert await game.form("/user/leave", name="ben") == {"ok": True}
    assert await game.form("/user/leave", 404, name="ben") == {"detail": "unknown user"}
    assert await game.get("/user/show_all") == [{"name": "ann", "voted": False}]
    assert await game.get("/dealer") == {"name": "ann"}


async def test_spread_round_over_four_gets(game: Spread) -> None:
    await game.form("/user/join", name="ann")
    await game.form("/user/join", name="ben")
    assert await game.form("/issue/vote", name="ben", vote="5") == {"ok": True}
    assert await game.form("/issue/vote", 404, name="cat", vote="5") == {"detail": "unknown user"}
    assert await game.form("/issue/vote", 422, name="ben") == {"detail": "vote is required"}
    assert await game.all() == {
        "/issue/current": {"number": 1, "title": "Issue 1", "revealed": False},
        "/user/show_all": [{"name": "ann", "voted": False}, {"name": "ben", "voted": True}],
        "/issue/show_results": {"votes": {}},
        "/dealer": {"name": "ann"},
    }
    assert await game.form("/issue/reveal", 403, name="ben") == {"detail": "only the dealer"}
    await game.form("/issue/vote", name="ann", vote="?")
    assert await game.form("/issue/reveal", name="ann") == {"ok": True}
    assert await game.get("/issue/show_results") == {"votes": {"ann": "?", "ben": "5"}}
    assert (await game.get("/issue/current"))["revealed"] is True
    assert await game.form("/issue/reset", name="ben") == {"ok": True}
    assert await game.all() == {
        "/issue/current": {"number": 2, "title": "Issue 2", "revealed": False},
        "/user/show_all": [{"name": "ann", "voted": False}, {"name": "ben", "voted": False}],
        "/issue/show_results": {"votes": {}},
        "/dealer": {"name": "ann"},
    }
    assert game.state.count("vote") == 4
    assert game.state.count("current", "GET") == 3


@pytest.mark.parametrize("path", ["/issue/current", "/user/show_all", "/issue/show_results",
                                  "/dealer"])  # fmt: skip
async def test_spread_etags(game: Spread, path: str) -> None:
    async with game.http.get(path) as r:
        etag = r.headers["ETag"]
    async with game.http.get(path, headers={"If-None-Match": etag}) as r:
        assert r.status == 304
    await game.form("/user/join", name="ann")
    await game.form("/issue/vote", name="ann", vote="1")
    await game.form("/issue/reveal", name="ann")
    await game.form("/issue/vote", name="ann", vote="2")
    async with game.http.get(path, headers={"If-None-Match": etag}) as r:
        assert r.status == 200
        assert r.headers["ETag"] != etag


async def test_spread_reset_all(game: Spread) -> None:
    await game.form("/user/join", name="ann")
    await game.form("/issue/reset", name="ann")
    assert await game.form("/admin/reset_all") == {"ok": True}
    assert await game.all() == {
        "/issue/current": {"number": 1, "title": "Issue 1", "revealed": False},
        "/user/show_all": [],
        "/issue/show_results": {"votes": {}},
        "/dealer": {"name": None},
    }
    assert await game.form("/user/join", name="ben") == {"name": "ben", "dealer": True}


# ---------------------------------------------------------------- rpc


class Rpc:
    def __init__(self, http: aiohttp.ClientSession, state: rpc.RpcState) -> None:
        self.http = http
        self.state = state

    async def raw(self, action: str | None, body: str, path: str = "/room/new",
                  content_type: str = "text/plain;charset=UTF-8") -> tuple[str, str]:  # fmt: skip
        headers = {"Content-Type": content_type}
        if action is not None:
            headers["Next-Action"] = rpc.ACTIONS.get(action, action)
        async with self.http.post(path, data=body.encode(), headers=headers) as r:
            assert r.status == 200
            return r.content_type, await r.text()

    async def call(self, action: str, *args: Any) -> Any:
        ctype, text = await self.raw(action, json.dumps(list(args)))
        assert ctype == "text/x-component"
        rows = rpc.parse(text)
        assert [n for n, _ in rows] == [0, 1]
        assert rows[0][1] == {"a": "$@1", "f": "", "b": "build-7"}
        return rows[1][1]


@pytest.fixture
async def server_actions(serve: Serve) -> Rpc:
    app = rpc.make_app()
    return Rpc(await serve(app), app[rpc.STATE])


def test_rpc_action_ids() -> None:
    assert set(rpc.ACTIONS) == {"createRoom", "join", "vote", "reveal", "reset", "leave",
                                "getRoom"}  # fmt: skip
    assert all(re.fullmatch(r"[0-9a-f]{40}", v) for v in rpc.ACTIONS.values())
    assert len(set(rpc.ACTIONS.values())) == 7
    assert rpc.ACTIONS["createRoom"].startswith("a1")


async def test_rpc_answers_text_lines(server_actions: Rpc) -> None:
    ctype, text = await server_actions.raw("createRoom", '["sprint"]')
    assert ctype == "text/x-component"
    lines = text.split("\n")
    assert lines[0] == '0:{"a":"$@1","f":"","b":"build-7"}'
    assert re.fullmatch(r'1:\{"roomId":"[0-9a-f]{10}"\}', lines[1])
    assert lines[2:] == [""]  # every line ends with \n
    room = rpc.parse(text)[1][1]["roomId"]
    ctype, text = await server_actions.raw("join", f'["{room}","ann"]', path=f"/room/{room}",
                                           content_type="application/json")  # fmt: skip
    assert ctype == "text/x-component"
    assert re.fullmatch(r'0:\{.*\}\n1:\{"participantId":"p-[0-9a-f]{12}"\}\n', text)


async def test_rpc_round(server_actions: Rpc) -> None:
    call = server_actions.call
    room = (await call("createRoom", "sprint"))["roomId"]
    admin = (await call("join", room, "ann"))["participantId"]
    ben = (await call("join", room, "ben"))["participantId"]
    assert await call("vote", room, ben, 8) == {"ok": True}
    assert await call("vote", room, admin, "?") == {"ok": True}
    assert await call("getRoom", room, ben) == {
        "id": room, "name": "sprint", "revealed": False, "admin": admin,
        "participants": [
            {"id": admin, "name": "ann", "voted": True, "vote": None},
            {"id": ben, "name": "ben", "voted": True, "vote": None},
        ],
    }  # fmt: skip
    assert await call("vote", room, admin, None) == {"ok": True}  # withdrawn
    assert await call("reveal", room, admin) == {"ok": True}
    view = await call("getRoom", room, admin)
    assert view["revealed"] is True
    assert [(p["voted"], p["vote"]) for p in view["participants"]] == [(False, None), (True, 8)]
    assert await call("reset", room, admin) == {"ok": True}
    view = await call("getRoom", room, admin)
    assert view["revealed"] is False and not any(p["voted"] for p in view["participants"])
    assert await call("leave", room, admin) == {"ok": True}
    assert (await call("getRoom", room, ben))["admin"] == ben
    assert server_actions.state.count("getRoom") == 4
    assert server_actions.state.requests[:2] == [("POST", "createRoom"), ("POST", "join")]


async def test_rpc_errors_inside_200(server_actions: Rpc) -> None:
    call = server_actions.call
    room = (await call("createRoom", "sprint"))["roomId"]
    admin = (await call("join", room, "ann"))["participantId"]
    ben = (await call("join", room, "ben"))["participantId"]
    assert await call("reveal", room, ben) == {"error": "not admin"}
    assert await call("reset", room, ben) == {"error": "not admin"}
    assert await call("getRoom", room, "p-000000000000") == {"error": "not a member"}
    assert await call("vote", room, "p-000000000000", 1) == {"error": "not a member"}
    assert await call("getRoom", "nope", admin) == {"error": "room not found"}
    assert await call("join", "nope", "cat") == {"error": "room not found"}
    assert await call("vote", room, ben) == {"error": "bad arguments"}
    assert await call("vote", room, ben, [1]) == {"error": "bad arguments"}
    assert await call("getRoom", room, 7) == {"error": "bad arguments"}
    assert await call("createRoom") == {"error": "bad arguments"}
    for body in ['{"name": "x"}', "not json", ""]:  # the arguments are an array, or nothing
        ctype, text = await server_actions.raw("createRoom", body)
        assert ctype == "text/x-component"
        assert rpc.parse(text)[1] == (1, {"error": "bad arguments"})


@pytest.mark.parametrize("action", [None, "", "ffffffffffffffffffffffffffffffffffffffff"])
async def test_rpc_page_without_a_known_action(server_actions: Rpc, action: str | None) -> None:
    ctype, text = await server_actions.raw(action, '["sprint"]')
    assert ctype == "text/html"
    assert text.startswith("<!DOCTYPE html><html>")
    assert server_actions.state.requests == [("POST", "page")]
    assert server_actions.state.rooms == {}
