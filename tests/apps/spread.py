"""A test backend with one global game, its state spread over four GETs.

Shaped like the small single-table planning-poker apps: there is no room id, users
are keyed by the name they join with, every write is an HTML form
(``application/x-www-form-urlencoded``), the first user to join is the dealer, and
the dealer has no way to leave. What a client shows is read from four GETs, each
with an ETag.

Routes (route names, as recorded in ``state.requests``, in brackets):

- ``POST /user/join`` ``name`` → ``{"name", "dealer"}`` (join), idempotent
- ``POST /user/leave`` ``name`` → ``{"ok": true}`` (leave); the dealer: 409
- ``POST /issue/vote`` ``name, vote`` → ``{"ok": true}`` (vote)
- ``POST /issue/reveal`` ``name`` → ``{"ok": true}`` (reveal), the dealer only (else 403)
- ``POST /issue/reset`` ``name`` → ``{"ok": true}`` (reset): clears the votes and
  ``revealed`` and moves to the next issue
- ``GET /issue/current`` → ``{"number", "title", "revealed"}`` (current)
- ``GET /user/show_all`` → ``[{"name", "voted"}]`` in join order (show_all)
- ``GET /issue/show_results`` → ``{"votes": {name: vote}}``, empty until revealed
  (show_results)
- ``GET /dealer`` → ``{"name": dealer or null}`` (dealer)
- ``POST /admin/reset_all`` → ``{"ok": true}`` (reset_all): an empty game, issue 1

Errors are ``{"detail": ...}``: 422 "<field> is required", 404 "unknown user",
403 "only the dealer", 409 "the dealer cannot leave".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from tests.apps.common import Fail, RequestLog, json_with_etag, recording_middleware


@dataclass
class SpreadState(RequestLog):
    #: the users by name, in join order
    users: list[str] = field(default_factory=list)
    votes: dict[str, str] = field(default_factory=dict)
    dealer: str | None = None
    revealed: bool = False
    number: int = 1

    def reset_all(self) -> None:
        self.users.clear()
        self.votes.clear()
        self.dealer = None
        self.revealed = False
        self.number = 1


STATE = web.AppKey("state", SpreadState)


async def _form(request: web.Request, *fields: str) -> tuple[SpreadState, list[str]]:
    form = await request.post()
    values: list[str] = []
    for name in fields:
        value = form.get(name)
        if not isinstance(value, str) or not value:
            raise Fail(422, f"{name} is required")
        values.append(value)
    return request.app[STATE], values


def _known(state: SpreadState, name: str) -> None:
    if name not in state.users:
        raise Fail(404, "unknown user")


def _ok() -> web.Response:
    return web.json_response({"ok": True})


async def join(request: web.Request) -> web.Response:
    state, [name] = await _form(request, "name")
    if name not in state.users:
        state.users.append(name)
    if state.dealer is None:
        state.dealer = name
    return web.json_response({"name": name, "dealer": state.dealer == name})


async def leave(request: web.Request) -> web.Response:
    state, [name] = await _form(request, "name")
    _known(state, name)
    if name == state.dealer:
        raise Fail(409, "the dealer cannot leave")
    state.users.remove(name)
    state.votes.pop(name, None)
    return _ok()


async def vote(request: web.Request) -> web.Response:
    state, [name, value] = await _form(request, "name", "vote")
    _known(state, name)
    state.votes[name] = value
    return _ok()


async def reveal(request: web.Request) -> web.Response:
    state, [name] = await _form(request, "name")
    _known(state, name)
    if name != state.dealer:
        raise Fail(403, "only the dealer")
    state.revealed = True
    return _ok()


async def reset(request: web.Request) -> web.Response:
    state, [name] = await _form(request, "name")
    _known(state, name)
    state.votes.clear()
    state.revealed = False
    state.number += 1
    return _ok()


async def reset_all(request: web.Request) -> web.Response:
    request.app[STATE].reset_all()
    return _ok()


async def current(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_with_etag(request, {"number": state.number, "title": f"Issue {state.number}",
                                    "revealed": state.revealed})  # fmt: skip


async def show_all(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return json_with_etag(request, [{"name": n, "voted": n in state.votes} for n in state.users])


async def show_results(request: web.Request) -> web.Response:
    state = request.app[STATE]
    votes = {n: state.votes[n] for n in state.users if n in state.votes} if state.revealed else {}
    return json_with_etag(request, {"votes": votes})


async def dealer(request: web.Request) -> web.Response:
    return json_with_etag(request, {"name": request.app[STATE].dealer})


def make_app() -> web.Application:
    app = web.Application(middlewares=[recording_middleware(STATE)])
    app[STATE] = SpreadState()
    r = app.router
    r.add_post("/user/join", join, name="join")
    r.add_post("/user/leave", leave, name="leave")
    r.add_post("/issue/vote", vote, name="vote")
    r.add_post("/issue/reveal", reveal, name="reveal")
    r.add_post("/issue/reset", reset, name="reset")
    r.add_post("/admin/reset_all", reset_all, name="reset_all")
    r.add_get("/issue/current", current, name="current", allow_head=False)
    r.add_get("/user/show_all", show_all, name="show_all", allow_head=False)
    r.add_get("/issue/show_results", show_results, name="show_results", allow_head=False)
    r.add_get("/dealer", dealer, name="dealer", allow_head=False)
    return app
