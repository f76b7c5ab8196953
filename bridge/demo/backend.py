"""A small legacy estimation backend, written the way such apps are.

Plain HTTP, no WebSocket: sessions, join / vote / reveal / reset / leave /
heartbeat, users expire ``expiry`` seconds after their last heartbeat, and the
state at ``GET /api/sessions/{id}`` (with an ETag). It knows nothing of the
bridge; the bridge is put in front of it.

It serves its own planning-poker page (``/``) and a login: ``POST /api/login``
mints a player id and sets an HttpOnly cookie, ``GET /api/me`` says who the
cookie belongs to, ``POST /api/logout`` ends it. A join or vote that carries a
login cookie must be for that cookie's player (403 otherwise); one without a
cookie is taken as it comes, as the tests' clients send them. The same holds
for a leave or a keep-alive. Through the
bridge the page, its login and its cookie pass through untouched, and the
bridge forwards the browser's cookie on every command (``forward_headers``).

For tests it also records what it was asked (``GET /_demo/stats``, cookies
included) and can be told to fail (``POST /_demo/faults``): those two routes
exist only with ``test_hooks`` (not in ``session-bridge demo``, where any
browser could reach them through the bridge).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

PAGE = Path(__file__).parent / "index.html"
#: the login cookie this app sets (HttpOnly: the page never reads it)
LOGIN_COOKIE = "poker_login"
CARDS = ["0", "1", "2", "3", "5", "8", "13", "21", "?", "coffee"]


@dataclass
class User:
    name: str
    last_seen: float


@dataclass
class Session:
    id: str
    users: dict[str, User] = field(default_factory=dict)
    votes: dict[str, Any] = field(default_factory=dict)
    revealed: bool = False
    round: int = 1

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "round": self.round,
            "revealed": self.revealed,
            "users": [
                {
                    "id": uid,
                    "name": u.name,
                    "voted": uid in self.votes,
                    **({"vote": self.votes.get(uid)} if self.revealed else {}),
                }
                for uid, u in sorted(self.users.items())
            ],
        }


class Backend:
    def __init__(self, expiry: float = 30.0) -> None:
        self.expiry = expiry
        self.sessions: dict[str, Session] = {}
        self.state_requests: Counter[str] = Counter()
        self.commands: list[dict[str, Any]] = []
        self.fail_ratio = 0.0
        self.stall = 0.0
        self.stall_ratio = 1.0
        #: requests to these paths (exactly) answer 500
        self.fail_paths: set[str] = set()
        #: when set, only requests to these paths are stalled
        self.stall_paths: set[str] = set()
        self.faults_injected = 0
        #: login token → (player id, name)
        self.logins: dict[str, tuple[str, str]] = {}

    def _expire(self, session: Session) -> None:
        now = time.monotonic()
        for uid in [u for u, user in session.users.items() if now - user.last_seen > self.expiry]:
            del session.users[uid]
            session.votes.pop(uid, None)

    def _record(self, request: web.Request, body: Any) -> None:
        self.commands.append(
            {
                "method": request.method,
                "path": request.path,
                "body": body,
                "session": request.match_info.get("sid"),
                "headers": {
                    k: request.headers[k]
                    for k in ("Cookie", "Authorization")
                    if k in request.headers
                },
                "at": time.time(),
            }
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except json.JSONDecodeError:
            raise web.HTTPBadRequest(
                text='{"error":"invalid JSON"}', content_type="application/json"
            ) from None
        return data if isinstance(data, dict) else {}

    async def _faults(self, request: web.Request | None = None) -> None:
        if request is not None and request.path in self.fail_paths:
            self.faults_injected += 1
            raise web.HTTPInternalServerError(
                text='{"error":"injected fault on this path"}', content_type="application/json"
            )
        stalled = not self.stall_paths or (request is not None and request.path in self.stall_paths)
        if self.stall and stalled and random.random() < self.stall_ratio:
            self.faults_injected += 1
            await asyncio.sleep(self.stall)
        if self.fail_ratio and random.random() < self.fail_ratio:
            self.faults_injected += 1
            raise web.HTTPServiceUnavailable(
                text='{"error":"injected fault"}', content_type="application/json"
            )

    def _session(self, request: web.Request, create: bool = False) -> Session:
        sid = request.match_info["sid"]
        session = self.sessions.get(sid)
        if session is None:
            if not create:
                raise web.HTTPNotFound(
                    text='{"error":"no such session"}', content_type="application/json"
                )
            session = self.sessions[sid] = Session(sid)
        self._expire(session)
        return session

    def _member(self, session: Session, uid: str) -> User:
        user = session.users.get(uid)
        if user is None:
            raise web.HTTPNotFound(
                text='{"error":"user not in session"}', content_type="application/json"
            )
        return user

    def _login(self, request: web.Request) -> tuple[str, str] | None:
        token = request.cookies.get(LOGIN_COOKIE)
        return self.logins.get(token) if token else None

    def _check_login(self, request: web.Request, uid: str) -> None:
        """A request with a login cookie acts for that player only."""
        if LOGIN_COOKIE not in request.cookies:
            return
        who = self._login(request)
        if who is None:
            raise web.HTTPUnauthorized(
                text='{"error":"login expired"}', content_type="application/json"
            )
        if who[0] != uid:
            raise web.HTTPForbidden(
                text='{"error":"not your player"}', content_type="application/json"
            )

    async def page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(PAGE, headers={"Cache-Control": "no-cache"})

    async def login(self, request: web.Request) -> web.Response:
        """JSON ``{"name"}`` or a form; mints the player's id, sets the cookie."""
        if request.content_type == "application/json":
            body = await self._body(request)
        else:
            body = dict(await request.post())
        name = str(body.get("name") or "").strip()
        if not name or len(name) > 60:
            return web.json_response({"error": "a name of 1 to 60 characters"}, status=400)
        token = secrets.token_urlsafe(24)
        player = "p" + secrets.token_hex(5)
        self.logins[token] = (player, name)
        response = web.json_response({"id": player, "name": name})
        response.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="Lax", path="/")
        return response

    async def me(self, request: web.Request) -> web.Response:
        who = self._login(request)
        if who is None:
            return web.json_response({"error": "not logged in"}, status=401)
        return web.json_response({"id": who[0], "name": who[1]})

    async def logout(self, request: web.Request) -> web.Response:
        """Ends the login, and the player's seats: a leave sent later with the
        stale cookie would be refused."""
        who = self.logins.pop(request.cookies.get(LOGIN_COOKIE, ""), None)
        if who is not None:
            for session in self.sessions.values():
                session.users.pop(who[0], None)
                session.votes.pop(who[0], None)
        response = web.json_response({"ok": True})
        response.del_cookie(LOGIN_COOKIE, path="/")
        return response

    async def join(self, request: web.Request) -> web.Response:
        body = await self._body(request)  # received, then worked on (the faults)
        await self._faults(request)
        self._record(request, body)
        uid = body.get("userId")
        if not isinstance(uid, str) or not uid:
            return web.json_response({"error": "userId required"}, status=400)
        if uid.startswith("banned"):
            return web.json_response({"error": "not allowed"}, status=403)
        self._check_login(request, uid)
        session = self._session(request, create=True)
        name = body.get("name") or uid
        session.users[uid] = User(str(name), time.monotonic())
        return web.json_response(session.view())

    async def vote(self, request: web.Request) -> web.Response:
        body = await self._body(request)  # received, then worked on (the faults)
        await self._faults(request)
        self._record(request, body)
        session = self._session(request)
        uid = request.match_info["uid"]
        self._check_login(request, uid)
        user = self._member(session, uid)
        user.last_seen = time.monotonic()
        vote = body.get("vote")
        if vote is None:
            session.votes.pop(uid, None)
        else:
            session.votes[uid] = vote
        return web.json_response(session.view())

    async def reveal(self, request: web.Request) -> web.Response:
        body = await self._body(request)  # received, then worked on (the faults)
        await self._faults(request)
        self._record(request, body)
        session = self._session(request)
        session.revealed = True
        return web.json_response(session.view())

    async def reset(self, request: web.Request) -> web.Response:
        body = await self._body(request)  # received, then worked on (the faults)
        await self._faults(request)
        self._record(request, body)
        session = self._session(request)
        session.revealed = False
        session.votes.clear()
        session.round += 1
        return web.json_response(session.view())

    async def leave(self, request: web.Request) -> web.Response:
        body = await self._body(request)  # received, then worked on (the faults)
        await self._faults(request)
        self._record(request, body)
        session = self._session(request)
        uid = body.get("userId")
        self._check_login(request, str(uid))
        session.users.pop(str(uid), None)
        session.votes.pop(str(uid), None)
        return web.json_response(session.view())

    async def heartbeat(self, request: web.Request) -> web.Response:
        body = await self._body(request)  # received, then worked on (the faults)
        await self._faults(request)
        self._record(request, body)
        session = self._session(request)
        self._check_login(request, str(body.get("userId")))
        user = self._member(session, str(body.get("userId")))
        user.last_seen = time.monotonic()
        return web.json_response({"ok": True})

    async def state(self, request: web.Request) -> web.Response:
        self.state_requests[request.match_info["sid"]] += 1
        await self._faults(request)
        session = self._session(request)
        body = json.dumps(session.view(), sort_keys=True).encode()
        etag = '"' + hashlib.sha1(body).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        return web.Response(body=body, content_type="application/json", headers={"ETag": etag})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"stateRequests": dict(self.state_requests), "commands": self.commands}
        )

    async def faults(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        self.fail_ratio = float(body.get("failRatio", 0.0))
        self.stall = float(body.get("stall", 0.0))
        self.stall_ratio = float(body.get("stallRatio", 1.0))
        self.fail_paths = {str(p) for p in body.get("failPaths", [])}
        self.stall_paths = {str(p) for p in body.get("stallPaths", [])}
        return web.json_response(
            {"failRatio": self.fail_ratio, "stall": self.stall, "stallRatio": self.stall_ratio,
             "failPaths": sorted(self.fail_paths), "stallPaths": sorted(self.stall_paths)}
        )  # fmt: skip


BACKEND: web.AppKey[Backend] = web.AppKey("backend", Backend)


@web.middleware
async def finish_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """A request the app started is finished even when its client goes away, as
    most app servers do (and aiohttp's own default; its test server cancels)."""
    task = asyncio.ensure_future(handler(request))
    # observed either way: a client gone is no reason for "never retrieved"
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    response: web.StreamResponse = await asyncio.shield(task)
    return response


def make_backend_app(expiry: float = 30.0, test_hooks: bool = True) -> web.Application:
    backend = Backend(expiry)
    app = web.Application(middlewares=[finish_requests])
    app[BACKEND] = backend
    r = app.router
    r.add_get("/", backend.page)
    r.add_get("/demo", backend.page)
    r.add_post("/api/login", backend.login)
    r.add_get("/api/me", backend.me)
    r.add_post("/api/logout", backend.logout)
    r.add_post("/api/sessions/{sid}/join", backend.join)
    r.add_put("/api/sessions/{sid}/votes/{uid}", backend.vote)
    r.add_post("/api/sessions/{sid}/reveal", backend.reveal)
    r.add_post("/api/sessions/{sid}/reset", backend.reset)
    r.add_post("/api/sessions/{sid}/leave", backend.leave)
    r.add_post("/api/sessions/{sid}/heartbeat", backend.heartbeat)
    r.add_get("/api/sessions/{sid}", backend.state)
    if test_hooks:
        r.add_get("/_demo/stats", backend.stats)
        r.add_post("/_demo/faults", backend.faults)
    return app
