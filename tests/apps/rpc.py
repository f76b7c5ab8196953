"""A test backend shaped like a React app's server actions (RPC over one POST).

Everything is ``POST /room/{room}`` (the page's path; the room id travels in the
arguments, and ``createRoom`` posts to ``/room/new``). The action is chosen by the
``Next-Action`` header, one of the fixed ids in :data:`ACTIONS`; the body is a JSON
array of the action's positional arguments (sent as ``text/plain;charset=UTF-8`` or
``application/json``). The answer is never JSON: 200 ``text/x-component``, lines
``N:<json>``, the result on line 1::

    0:{"a":"$@1","f":"","b":"build-7"}
    1:{"participantId":"p-..."}

and errors are results too, inside the 200: ``1:{"error":"not admin"}`` ("room not
found", "not a member", "not admin", "bad arguments"). A missing or unknown
``Next-Action`` is answered with the page: 200 ``text/html``.

Actions (recorded in ``state.requests`` as ("POST", action name); the page as
("POST", "page")):

- createRoom ``[name]`` → ``{"roomId"}``
- join ``[roomId, name]`` → ``{"participantId"}``; the first joiner is the admin
- vote ``[roomId, participantId, value]`` → ``{"ok": true}``; null withdraws the vote
- reveal, reset ``[roomId, participantId]`` → ``{"ok": true}``, the admin only
- leave ``[roomId, participantId]`` → ``{"ok": true}``; the admin's successor is the
  next participant
- getRoom ``[roomId, participantId]`` → ``{"id", "name", "revealed", "admin",
  "participants": [{"id", "name", "voted", "vote"}]}`` (vote null until revealed)

Actions run without awaiting anything once the body is read, so each is atomic.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.apps.common import RequestLog

#: action name → the id a client sends in ``Next-Action`` (fixed, as a build makes them)
ACTIONS: dict[str, str] = {
    "createRoom": "a1f6ed2b0a28dab741cf65c6ea7d107fca6abbd0",
    "join": "0e94e09fbecf8e3d521f9c7b8875a4a3d91d4cea",
    "vote": "f3fb068da7d91cad927b010bc6dc5a1666d84547",
    "reveal": "6691bdd1127777f067d32c8f4b6457b0232c73f5",
    "reset": "8ba8f491bb5f5883edd7e24e9be9a5fa4182a69e",
    "leave": "171f217600c53c0aacdc4efa260a1200ce2dcccb",
    "getRoom": "5c50707cecaf124af036a8c0a626ee19c7a60d26",
}
BUILD_ID = "build-7"
#: line 0 of every action's answer
HEADER_LINE = {"a": "$@1", "f": "", "b": BUILD_ID}
PAGE = (
    '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Planning poker</title></head>'
    '<body><div id="__next">Loading…</div></body></html>'
)


@dataclass
class Room:
    id: str
    name: str
    #: participant id → name, in join order
    participants: dict[str, str] = field(default_factory=dict)
    votes: dict[str, Any] = field(default_factory=dict)
    admin: str | None = None
    revealed: bool = False

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "revealed": self.revealed,
            "admin": self.admin,
            "participants": [
                {
                    "id": pid,
                    "name": name,
                    "voted": pid in self.votes,
                    "vote": self.votes.get(pid) if self.revealed else None,
                }
                for pid, name in self.participants.items()
            ],
        }


@dataclass
class RpcState(RequestLog):
    rooms: dict[str, Room] = field(default_factory=dict)


STATE = web.AppKey("state", RpcState)


class ActionError(Exception):
    """An action's error, answered as ``1:{"error": message}`` inside a 200."""


def _strings(args: list[Any], n: int) -> list[str]:
    if len(args) != n or not all(isinstance(a, str) for a in args):
        raise ActionError("bad arguments")
    return args


def _room(state: RpcState, room_id: str) -> Room:
    room = state.rooms.get(room_id)
    if room is None:
        raise ActionError("room not found")
    return room


def _member(state: RpcState, args: list[Any]) -> tuple[Room, str]:
    room_id, pid = _strings(args, 2)
    room = _room(state, room_id)
    if pid not in room.participants:
        raise ActionError("not a member")
    return room, pid


def _admin(state: RpcState, args: list[Any]) -> Room:
    room, pid = _member(state, args)
    if pid != room.admin:
        raise ActionError("not admin")
    return room


OK = {"ok": True}


def create_room(state: RpcState, args: list[Any]) -> Any:
    [name] = _strings(args, 1)
    room = Room(id=secrets.token_hex(5), name=name)
    state.rooms[room.id] = room
    return {"roomId": room.id}


def join(state: RpcState, args: list[Any]) -> Any:
    room_id, name = _strings(args, 2)
    room = _room(state, room_id)
    pid = f"p-{secrets.token_hex(6)}"
    room.participants[pid] = name
    if room.admin is None:
        room.admin = pid
    return {"participantId": pid}


def vote(state: RpcState, args: list[Any]) -> Any:
    if len(args) != 3:
        raise ActionError("bad arguments")
    value = args[2]
    if isinstance(value, bool) or not isinstance(value, str | int | float | None):
        raise ActionError("bad arguments")
    room, pid = _member(state, args[:2])
    if value is None:
        room.votes.pop(pid, None)
    else:
        room.votes[pid] = value
    return OK


def reveal(state: RpcState, args: list[Any]) -> Any:
    _admin(state, args).revealed = True
    return OK


def reset(state: RpcState, args: list[Any]) -> Any:
    room = _admin(state, args)
    room.revealed = False
    room.votes.clear()
    return OK


def leave(state: RpcState, args: list[Any]) -> Any:
    room, pid = _member(state, args)
    del room.participants[pid]
    room.votes.pop(pid, None)
    if room.admin == pid:
        room.admin = next(iter(room.participants), None)
    return OK


def get_room(state: RpcState, args: list[Any]) -> Any:
    room, _ = _member(state, args)
    return room.view()


Action = Callable[[RpcState, list[Any]], Any]
HANDLERS: dict[str, Action] = {
    "createRoom": create_room,
    "join": join,
    "vote": vote,
    "reveal": reveal,
    "reset": reset,
    "leave": leave,
    "getRoom": get_room,
}
BY_ID: dict[str, str] = {action_id: name for name, action_id in ACTIONS.items()}


def encode(result: Any) -> str:
    """The ``text/x-component`` body answering an action with ``result``."""
    lines = [HEADER_LINE, result]
    return "".join(f"{i}:{json.dumps(v, separators=(',', ':'))}\n" for i, v in enumerate(lines))


def parse(body: str) -> list[tuple[int, Any]]:
    """The lines of a ``text/x-component`` body, as (row, decoded JSON)."""
    rows: list[tuple[int, Any]] = []
    for line in body.splitlines():
        row, _, data = line.partition(":")
        rows.append((int(row), json.loads(data)))
    return rows


async def action(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = BY_ID.get(request.headers.get("Next-Action", ""))
    if name is None:
        state.record(request.method, "page")
        return web.Response(text=PAGE, content_type="text/html")
    state.record(request.method, name)
    try:
        args = json.loads(await request.text())
    except ValueError:
        args = None
    try:
        if not isinstance(args, list):
            raise ActionError("bad arguments")
        result = HANDLERS[name](state, args)
    except ActionError as e:
        result = {"error": str(e)}
    return web.Response(text=encode(result), content_type="text/x-component")


def make_app() -> web.Application:
    app = web.Application()
    app[STATE] = RpcState()
    app.router.add_post("/room/{room}", action, name="action")
    return app
