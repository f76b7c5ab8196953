"""Admin endpoints under ``/bridge/admin/`` (off unless ``admin.token`` is set).

``Authorization: Bearer <admin.token>`` on every request, any path under the
prefix included (401 otherwise, so nobody learns which paths exist). One
exception: a browser opening ``/bridge/admin/`` (``Accept: text/html``, no
``Authorization``) gets the admin page, a shell with no data in it: its login
form keeps the token in session storage (never in a URL) and sends it as the
bearer header.

- ``GET /bridge/admin/``: an index of the endpoints below (with the token);
- ``GET /bridge/admin/overview``: connections by transport, sessions with their
  clients, users and transports, upstream health (breaker, limit, in flight,
  queued, requests, errors and latency over the last seconds), backplane
  health, recent drains and reconnect waves;
- ``GET /bridge/admin/events``: the same overview as server-sent events, one
  a second, for as long as the stream is open. Computed only while someone
  watches (one feed for every watcher; nothing runs when nobody does).
- ``GET /bridge/admin/sessions``: every session this instance holds, briefly;
- ``GET /bridge/admin/sessions/{sessionId}``: one session's clients and their
  transports, the replay window and seqs, presence and the upstream poller.

Any other path under the prefix answers 404 (with the token) with the JSON
error body.

Answers never include resume tokens or forwarded headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

from .protocol import sse
from .runtime import Bridge, Session
from .transports.common import BRIDGE, METRICS, json_error

PAGE = Path(__file__).parent / "static" / "admin.html"
#: admin answers are never cached (the page and the index share a URL)
NO_STORE = {"Cache-Control": "no-store", "Vary": "Accept, Authorization"}
#: how often the feed computes an overview (seconds)
EVERY = 1.0
#: sessions listed in an overview (the busiest first)
SESSIONS_SHOWN = 100
#: users listed per session (``usersTotal`` says how many there are)
USERS_SHOWN = 20

PREFIX = "/bridge/admin"


ENDPOINTS = {
    PREFIX + "/": "this index (a browser without the token: the admin page)",
    PREFIX + "/overview": "connections, sessions, upstream and backplane health, drains, waves",
    PREFIX + "/events": "the overview as server-sent events, one a second",
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
        },
        headers=NO_STORE,
    )


async def session(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _unauthorised()
    bridge = request.app[BRIDGE]
    found = bridge.sessions.get(request.match_info["sid"])
    if found is None:
        return json_error(404, "not_found", "no such session on this instance")
    detail = _detail(found, time.monotonic(), bridge.backplane.owns(found))
    return web.json_response(detail, headers=NO_STORE)


# ---------------------------------------------------------------------- the overview
def _samples(metric: Any) -> list[Any]:
    return [s for family in metric.collect() for s in family.samples]


class Rates:
    """Upstream requests, errors and latency since the last reading (from the
    metrics the bridge keeps anyway)."""

    def __init__(self) -> None:
        self.last: tuple[float, float, float, float, dict[float, float]] | None = None

    def read(self, metrics: Any, now: float) -> dict[str, Any]:
        total = errors = 0.0
        for s in _samples(metrics.upstream_requests):
            if s.name.endswith("_total"):
                total += s.value
                if s.labels.get("status", "")[:1] not in ("2", "3", "4"):
                    errors += s.value
        count = seconds = 0.0
        buckets: dict[float, float] = {}
        for s in _samples(metrics.upstream_duration):
            if s.name.endswith("_count"):
                count += s.value
            elif s.name.endswith("_sum"):
                seconds += s.value
            elif s.name.endswith("_bucket"):
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
        last, self.last = self.last, (now, total, errors, count, {**buckets, -1.0: seconds})
        if last is None:
            return {"requestsPerSecond": None, "errorsPerSecond": None,
                    "meanMs": None, "p99Ms": None}  # fmt: skip
        dt = max(now - last[0], 1e-9)
        n = count - last[3]
        spent = seconds - last[4].get(-1.0, 0.0)
        return {
            "requestsPerSecond": round((total - last[1]) / dt, 2),
            "errorsPerSecond": round((errors - last[2]) / dt, 2),
            "meanMs": round(spent / n * 1000, 1) if n > 0 else None,
            "p99Ms": _p99(buckets, last[4], n),
        }


def _p99(now: dict[float, float], before: dict[float, float], n: float) -> float | None:
    """The bucket bound holding the 99th percentile of the latencies since then."""
    if n <= 0:
        return None
    want = 0.99 * n
    for le in sorted(k for k in now if k >= 0):
        if now[le] - before.get(le, 0.0) >= want:
            return None if math.isinf(le) else round(le * 1000, 1)
    return None


def overview(bridge: Bridge, metrics: Any, rates: Rates) -> dict[str, Any]:
    now = time.monotonic()
    by_transport: Counter[str] = Counter({"websocket": 0, "sse": 0, "poll": 0})
    for conn in bridge.connections.values():
        by_transport[conn.transport] += 1
    busiest = sorted(bridge.sessions.values(), key=lambda s: -len(s.conns))[:SESSIONS_SHOWN]
    limits = bridge.upstream.limits
    return {
        "at": time.time(),
        "uptimeSeconds": round(time.time() - bridge.started_at, 1),
        "draining": bridge.closing,
        "connections": dict(by_transport),
        "sessionCount": len(bridge.sessions),
        "sessions": [
            {
                "sessionId": s.id,
                "clients": len(s.conns),
                "users": (online := s.hub.presence.online())[:USERS_SHOWN],
                "usersTotal": len(online),
                "transports": dict(Counter(c.transport for c in s.conns.values())),
                "seq": s.hub.log.head,
                "followed": s.followed_until > now,
            }
            for s in busiest
        ],
        "upstream": {
            "breaker": bridge.upstream.breaker_state(),
            "limit": round(limits.limiter.limit, 2),
            "inFlight": limits.limiter.in_flight,
            "queued": limits.waiting,
            **rates.read(metrics, now),
        },
        "backplane": bridge.backplane.status(),
        "history": bridge.history.recent(),
    }


class Feed:
    """The overview, once a second, to everyone watching; no task when nobody is."""

    def __init__(self, bridge: Bridge, metrics: Any) -> None:
        self.bridge = bridge
        self.metrics = metrics
        self.watchers: set[asyncio.Queue[bytes | None]] = set()
        self.task: asyncio.Task[None] | None = None

    def watch(self) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=2)
        self.watchers.add(queue)
        if self.task is None or self.task.done():
            self.task = self.bridge.tasks.spawn(self._run(), "the admin page's feed")
        return queue

    def unwatch(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.watchers.discard(queue)
        if not self.watchers and self.task is not None:
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        rates = Rates()
        while self.watchers:
            snapshot = overview(self.bridge, self.metrics, rates)
            event = sse.event("overview", json.dumps(snapshot, separators=(",", ":")).encode())
            for queue in list(self.watchers):
                _put_newest(queue, event)  # encoded once, for every watcher
            await asyncio.sleep(EVERY)

    def close(self) -> None:
        """The bridge shuts down: every stream ends (they would hold the shutdown)."""
        for queue in list(self.watchers):
            _put_newest(queue, None)
        self.watchers.clear()
        if self.task is not None:
            self.task.cancel()
            self.task = None


def _put_newest(queue: asyncio.Queue[Any], item: Any) -> None:
    if queue.full():  # a slow page gets the newest, not a backlog
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(item)


class FeedSlot:
    """Where the app keeps its feed (made on the first watch: the bridge is
    made at start-up, after the routes), and the rates of the JSON overview
    (since the last time it was asked)."""

    def __init__(self) -> None:
        self.feed: Feed | None = None
        self.rates = Rates()


FEED: web.AppKey[FeedSlot] = web.AppKey("admin_feed", FeedSlot)


def _feed(request: web.Request) -> Feed:
    slot = request.app[FEED]
    bridge = request.app[BRIDGE]
    if slot.feed is None or slot.feed.bridge is not bridge:
        slot.feed = Feed(bridge, request.app[METRICS])
    return slot.feed


async def _close_feed(app: web.Application) -> None:
    feed = app[FEED].feed
    if feed is not None:
        feed.close()


async def overview_handler(request: web.Request) -> web.Response:
    if not _authorised(request):
        return _unauthorised()
    bridge = request.app[BRIDGE]
    body = overview(bridge, request.app[METRICS], request.app[FEED].rates)
    return web.json_response(body, headers=NO_STORE)


async def events(request: web.Request) -> web.StreamResponse:
    """The overview as server-sent events (``event: overview``), one a second."""
    if not _authorised(request):
        return _unauthorised()
    feed = _feed(request)
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no",
    })  # fmt: skip
    await resp.prepare(request)
    queue = feed.watch()
    try:
        while True:
            try:
                snapshot = await asyncio.wait_for(queue.get(), 15.0)
            except TimeoutError:
                await resp.write(b": still here\n\n")
                continue
            if snapshot is None:  # shutting down
                break
            if not _authorised(request):  # the token changed (a reload) or admin is off
                break
            await resp.write(snapshot)
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the page went away (or the bridge stops)
    finally:
        feed.unwatch(queue)
    return resp


def _page() -> web.Response:
    return web.Response(
        body=PAGE.read_bytes(), content_type="text/html", charset="utf-8",
        headers={
            **NO_STORE, "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; script-src 'self'; "
            "style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; "
            "form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
        },
    )  # fmt: skip


async def index(request: web.Request) -> web.Response:
    wants_page = "text/html" in request.headers.get("Accept", "")
    if wants_page and "Authorization" not in request.headers:
        if not request.app[BRIDGE].cfg.admin.token:
            return json_error(404, "not_found", "admin is off (no admin.token)")
        if not request.path.endswith("/"):
            raise web.HTTPFound(PREFIX + "/")
        return _page()
    if not _authorised(request):
        return _unauthorised()
    return web.json_response(
        {"endpoints": [{"path": p, "method": "GET", "about": a} for p, a in ENDPOINTS.items()]},
        headers=NO_STORE,
    )


async def unknown(request: web.Request) -> web.Response:
    """Any other path under the prefix: 401 without the token, 404 with it."""
    if not _authorised(request):
        return _unauthorised()
    return json_error(404, "not_found", f"no admin endpoint {request.path}; see {PREFIX}/")


def add_admin_routes(app: web.Application) -> None:
    app[FEED] = FeedSlot()
    app.on_shutdown.append(_close_feed)
    app.router.add_get(PREFIX, index)
    app.router.add_get(PREFIX + "/", index)
    app.router.add_get(PREFIX + "/sessions", sessions)
    app.router.add_get(PREFIX + "/overview", overview_handler)
    app.router.add_get(PREFIX + "/events", events)
    app.router.add_get(PREFIX + "/sessions/{sid}", session)
    app.router.add_route("*", PREFIX + "/{rest:.*}", unknown)
