"""Admin endpoints under ``/bridge/admin/`` (off unless ``admin.token`` is set).

``Authorization: Bearer <admin.token>`` on every request, any path under the
prefix included (401 otherwise, so nobody learns which paths exist):

- ``GET /bridge/admin/``: an index of the endpoints below;
- ``GET /bridge/admin/sessions``: every session this instance holds, briefly;
- ``GET /bridge/admin/sessions/{sessionId}``: one session's clients and their
  transports, the replay window and seqs, presence and the upstream poller.

Any other path under the prefix answers 404 (with the token) with the JSON
error body.

Answers never include resume tokens or forwarded headers.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections import Counter
from typing import Any

from aiohttp import web

from .runtime import Session
from .transports.common import BRIDGE, json_error

PREFIX = "/bridge/admin"


ENDPOINTS = {
    PREFIX + "/": "this index",
    PREFIX + "/sessions": "every session this instance holds, briefly",
    PREFIX + "/sessions/{sessionId}": "one session: clients, replay window, presence, upstream",
}


def _authorised(request: web.Request) -> bool:
    token = request.app[BRIDGE].cfg.admin.token
    given = request.headers.get("Authorization", "")
    return bool(token) and hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def _unauthorised() -> web.Response:
    return json_error(
        401, "unauthorized", "admin endpoints need 'Authorization: Bearer <admin.token>'"
    )


def _summary(session: Session) -> dict[str, Any]:
    log = session.hub.log
    return {
        "sessionId": session.id,
        "epoch": log.epoch,
        "seq": log.head,
        "clients": len(session.conns),
        "present": session.hub.presence.online(),
    }


def _detail(session: Session, now: float, polls_here: bool) -> dict[str, Any]:
    hub = session.hub
    log = hub.log
    presence = hub.presence
    return {
        **_summary(session),
        "clients": [
            {
                "clientId": c.client_id,
                "userId": c.user_id,
                "transport": c.transport,
                "codec": c.codec.name,
                "idleSeconds": round(now - c.last_rx, 3),
                "busy": c.busy,
                "commandsQueued": len(c.inbox),
            }
            for c in session.conns.values()
        ],
        "replay": {
            "firstSeq": log.first_seq,
            "head": log.head,
            "entries": len(log),
            "bytes": log.bytes,
            "evictions": log.evictions,
            "latest": {t: e.seq for t in ("session", "presence") if (e := log.latest(t))},
        },
        "presence": {
            "online": presence.online(),
            "inGrace": [u for u in presence.online() if presence.in_grace(u)],
        },
        "upstream": {
            "polling": session.poller is not None and not session.poller.done(),
            "etag": session.etag,
            "pollFailures": session.poll_failures,
            "commandsInFlight": session.inflight,
            # with the Redis backplane: this instance holds the session's lease
            "pollsHere": polls_here,
        },
    }


def _task_kinds() -> dict[str, int]:
    """Running tasks by what they do (the bridge's own are named "owner: what";
    others by their coroutine), for finding a leak."""
    kinds: Counter[str] = Counter()
    for task in asyncio.all_tasks():
        name = task.get_name()
        if name.startswith("Task-"):
            coro = task.get_coro()
            name = getattr(coro, "__qualname__", type(coro).__name__)
        kinds[name] += 1
    return dict(kinds.most_common())


async def sessions(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _unauthorised()
    bridge = request.app[BRIDGE]
    return web.json_response(
        {
            "sessions": [_summary(s) for s in bridge.sessions.values()],
            "connections": len(bridge.connections),
            "tasks": len(asyncio.all_tasks()),
            "taskKinds": _task_kinds(),
            "breaker": bridge.upstream.breaker_state(),
            "draining": bridge.closing,
        }
    )


async def session(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _unauthorised()
    bridge = request.app[BRIDGE]
    found = bridge.sessions.get(request.match_info["sid"])
    if found is None:
        return json_error(404, "not_found", "no such session on this instance")
    return web.json_response(_detail(found, time.monotonic(), bridge.backplane.owns(found)))


async def index(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _unauthorised()
    return web.json_response(
        {"endpoints": [{"path": p, "method": "GET", "about": a} for p, a in ENDPOINTS.items()]}
    )


async def unknown(request: web.Request) -> web.Response:
    """Any other path under the prefix: 401 without the token, 404 with it."""
    if not _authorised(request):
        return _unauthorised()
    return json_error(404, "not_found", f"no admin endpoint {request.path}; see {PREFIX}/")


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX, index)
    app.router.add_get(PREFIX + "/", index)
    app.router.add_get(PREFIX + "/sessions", sessions)
    app.router.add_get(PREFIX + "/sessions/{sid}", session)
    app.router.add_route("*", PREFIX + "/{rest:.*}", unknown)
