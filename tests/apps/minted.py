"""A test backend that mints ids and loses concurrent writes.

Shaped like a small REST planning-poker app: the server mints the room id and every
participant's id, the state GET needs the caller's ``user_id`` (422 without it, 403
with one that is not a member), and rooms are stored as JSON text that every write
reads, decodes, waits on (``state.write_delay``), changes and writes back, with no
lock, so concurrent writes to one room overwrite each other (all answered 200).

Routes (route names, as recorded in ``state.requests``, in brackets):

- ``POST /api/v1/rooms`` ``{"name"}`` → 201 ``{"room_id"}`` (create_room)
- ``POST /api/v1/rooms/{room}/participants`` ``{"name"}`` → 201 ``{"user_id", "name"}``
  (join); the first participant is the room's owner
- ``GET /api/v1/rooms/{room}?user_id=`` → 200 ``{"room": {...}}`` with an ETag (room)
- ``POST /api/v1/rooms/{room}/votes`` ``{"user_id", "value"}`` → 200 (vote)
- ``POST /api/v1/rooms/{room}/reveal`` and ``/reset`` ``{"user_id"}`` → 200 (reveal, reset)
- ``DELETE /api/v1/rooms/{room}/participants/{user_id}`` → 204 (leave)

Errors are ``{"detail": ...}``: 404 "room not found", 403 "not a member",
422 "<field> is required" (or "body must be JSON").
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.apps.common import (
    Fail,
    RequestLog,
    dumps,
    json_object,
    json_with_etag,
    recording_middleware,
    string_field,
)


@dataclass
class MintedState(RequestLog):
    #: room id → the room as JSON text (what a key-value store would hold)
    rooms: dict[str, str] = field(default_factory=dict)
    #: how long every write waits between reading a room and writing it back
    write_delay: float = 0.02

    def room(self, room_id: str) -> dict[str, Any]:
        """The stored room, decoded (KeyError when there is none)."""
        room: dict[str, Any] = json.loads(self.rooms[room_id])
        return room


STATE = web.AppKey("state", MintedState)


def _state(request: web.Request) -> MintedState:
    return request.app[STATE]


def _read(state: MintedState, room_id: str) -> dict[str, Any]:
    text = state.rooms.get(room_id)
    if text is None:
        raise Fail(404, "room not found")
    room: dict[str, Any] = json.loads(text)
    return room


def _member(room: dict[str, Any], user_id: str) -> None:
    if not any(p["id"] == user_id for p in room["participants"]):
        raise Fail(403, "not a member")


def _view(room: dict[str, Any]) -> dict[str, Any]:
    votes: dict[str, Any] = room["votes"]
    return {
        "id": room["id"],
        "name": room["name"],
        "revealed": room["revealed"],
        "owner": room["owner"],
        "participants": [
            {
                "id": p["id"],
                "name": p["name"],
                "voted": p["id"] in votes,
                "vote": votes.get(p["id"]) if room["revealed"] else None,
            }
            for p in room["participants"]
        ],
    }


async def create_room(request: web.Request) -> web.Response:
    state = _state(request)
    name = string_field(await json_object(request), "name")
    room_id = f"r-{secrets.token_hex(4)}"
    room = {"id": room_id, "name": name, "revealed": False, "owner": None, "participants": [],
            "votes": {}}  # fmt: skip
    state.rooms[room_id] = dumps(room)
    return web.json_response({"room_id": room_id}, status=201)


async def _write(
    request: web.Request, *, member: str | None
) -> tuple[MintedState, str, dict[str, Any]]:
    """The lossy read half of a write: read the text, decode it, check ``member``
    (when given) and wait ``write_delay``; the caller changes the room and stores it."""
    state = _state(request)
    room_id = request.match_info["room"]
    room = _read(state, room_id)
    if member is not None:
        _member(room, member)
    await asyncio.sleep(state.write_delay)
    return state, room_id, room


async def join(request: web.Request) -> web.Response:
    name = string_field(await json_object(request), "name")
    state, room_id, room = await _write(request, member=None)
    user_id = uuid.uuid4().hex
    room["participants"].append({"id": user_id, "name": name})
    if room["owner"] is None:
        room["owner"] = user_id
    state.rooms[room_id] = dumps(room)
    return web.json_response({"user_id": user_id, "name": name}, status=201)


async def get_room(request: web.Request) -> web.Response:
    user_id = request.query.get("user_id")
    if not user_id:
        raise Fail(422, "user_id is required")
    room = _read(_state(request), request.match_info["room"])
    _member(room, user_id)
    return json_with_etag(request, {"room": _view(room)})


async def vote(request: web.Request) -> web.Response:
    body = await json_object(request)
    user_id = string_field(body, "user_id")
    if "value" not in body:
        raise Fail(422, "value is required")
    state, room_id, room = await _write(request, member=user_id)
    room["votes"][user_id] = body["value"]
    state.rooms[room_id] = dumps(room)
    return web.json_response({"ok": True})


async def reveal(request: web.Request) -> web.Response:
    user_id = string_field(await json_object(request), "user_id")
    state, room_id, room = await _write(request, member=user_id)
    room["revealed"] = True
    state.rooms[room_id] = dumps(room)
    return web.json_response({"ok": True})


async def reset(request: web.Request) -> web.Response:
    user_id = string_field(await json_object(request), "user_id")
    state, room_id, room = await _write(request, member=user_id)
    room["revealed"] = False
    room["votes"] = {}
    state.rooms[room_id] = dumps(room)
    return web.json_response({"ok": True})


async def leave(request: web.Request) -> web.Response:
    user_id = request.match_info["user_id"]
    state, room_id, room = await _write(request, member=user_id)
    room["participants"] = [p for p in room["participants"] if p["id"] != user_id]
    room["votes"].pop(user_id, None)
    if room["owner"] == user_id:  # the next participant inherits the room
        room["owner"] = room["participants"][0]["id"] if room["participants"] else None
    state.rooms[room_id] = dumps(room)
    return web.Response(status=204)


OPENAPI = Path(__file__).parent / "openapi" / "minted.json"


async def openapi(request: web.Request) -> web.Response:
    """The app's OpenAPI document, where FastAPI serves it (servers: none given)."""
    return web.Response(text=OPENAPI.read_text(), content_type="application/json")


def make_app() -> web.Application:
    app = web.Application(middlewares=[recording_middleware(STATE)])
    app[STATE] = MintedState()
    r = app.router
    r.add_post("/api/v1/rooms", create_room, name="create_room")
    r.add_post("/api/v1/rooms/{room}/participants", join, name="join")
    r.add_get("/api/v1/rooms/{room}", get_room, name="room", allow_head=False)
    r.add_post("/api/v1/rooms/{room}/votes", vote, name="vote")
    r.add_post("/api/v1/rooms/{room}/reveal", reveal, name="reveal")
    r.add_post("/api/v1/rooms/{room}/reset", reset, name="reset")
    r.add_delete("/api/v1/rooms/{room}/participants/{user_id}", leave, name="leave")
    r.add_get("/openapi.json", openapi, name="openapi", allow_head=False)
    return app
