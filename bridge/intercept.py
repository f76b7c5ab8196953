"""Intercepted legacy polls (``upstream.state.intercept``).

The app's unchanged frontend polls its own state route (``GET
/api/sessions/S`` every second, from every browser). With intercept on, such
a GET that reaches the bridge (through pass-through) is answered from the
bridge's copy of that session's state instead of by the app:

- the copy is the app's last answer, same bytes and content type, with an
  ``ETag`` of the bridge's; a matching ``If-None-Match`` gets ``304``;
- a poll of a session with no copy yet waits for the session's one poller
  (so concurrent misses make one upstream fetch), and such polls keep the
  session followed — polled once per ``state.every`` — for
  :data:`~bridge.runtime.bridge.FOLLOW_FOR` intervals after the last one;
- on an instance that does not poll the session (the Redis backplane's
  others) the copy is the latest state as JSON (the same bytes when the
  route has no ``select``; with a ``select`` such polls pass through);
- a session the app does not know (404/410, also one deleted there since)
  passes through to the app as it would without the bridge, and for one
  follow period its polls go straight there (no check first; a bounded list);
- a session whose first fetch got no answer (the app failing, the queue to
  it full) is answered ``503`` at once with the JSON error body, not sent to
  the app as well; a copy that does not come within ``upstream.timeout``
  passes through.

It skips the app's own check of who may read: it is for apps whose state
route answers the same to everyone (docs/configuration.md says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import OrderedDict
from urllib.parse import unquote

from aiohttp import web

from .config import Config
from .metrics import Metrics
from .protocol.types import valid_id
from .runtime import Bridge
from .runtime.bridge import FOLLOW_FOR
from .runtime.poller import copy_etag
from .upstream.templates import PLACEHOLDER

#: sessions the app said it does not know, remembered for one follow period
UNKNOWN_KEPT = 10_000


def state_path_pattern(cfg: Config) -> re.Pattern[str] | None:
    """The state route's path as a pattern capturing ``sessionId`` (None: off)."""
    state = cfg.upstream.state
    if not state.intercept:
        return None
    parts, last = [], 0
    for m in PLACEHOLDER.finditer(state.path):
        parts.append(re.escape(state.path[last : m.start()]))
        parts.append("(?P<sid>[^/]+)" if m.group(1) == "sessionId" else "[^/]+")
        last = m.end()
    parts.append(re.escape(state.path[last:]))
    return re.compile("".join(parts) + "/?")


class Intercept:
    def __init__(self, cfg: Config, metrics: Metrics) -> None:
        self.metrics = metrics
        #: session id → until when the app's "no such session" stands
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self.reconfigure(cfg)

    def _said_unknown(self, sid: str, now: float) -> bool:
        until = self._unknown.get(sid)
        if until is None:
            return False
        if until <= now:
            del self._unknown[sid]
            return False
        return True

    def _remember_unknown(self, sid: str, now: float) -> None:
        """For one follow period, polls of a session the app does not know go to
        the app as they would without the bridge (one request each, not a check
        and the poll). Bounded: the oldest are forgotten first."""
        self._unknown[sid] = now + FOLLOW_FOR * self.cfg.upstream.state.every
        self._unknown.move_to_end(sid)
        while len(self._unknown) > UNKNOWN_KEPT:
            self._unknown.popitem(last=False)

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.pattern = state_path_pattern(cfg)

    def session_of(self, request: web.Request) -> str | None:
        """The session id of a legacy state poll (None: not one)."""
        if self.pattern is None or request.method not in ("GET", "HEAD"):
            return None
        m = self.pattern.fullmatch(request.path)
        if m is None:
            return None
        sid = unquote(m.group("sid"))
        return sid if valid_id(sid) else None

    async def answer(self, request: web.Request, bridge: Bridge, sid: str) -> web.Response | None:
        """The bridge's copy for a legacy poll, or None (then it passes through)."""
        now = time.monotonic()
        live = bridge.registry.get(sid)
        if self._said_unknown(sid, now) and (live is None or not live.conns):
            return None  # the app said so a moment ago: its own answer again, no check
        session = await bridge.follow(sid)
        if session == "unknown":
            self._remember_unknown(sid, now)
            return None
        if session == "unsure":  # the app gave no answer: do not send it the poll too
            self.metrics.intercept_requests.labels("unavailable").inc()
            return web.json_response(
                {"error": {"code": "upstream_unavailable",
                           "message": "the app did not answer for this session; try again"}},
                status=503, headers={"Retry-After": "1"},
            )  # fmt: skip
        if session == "off":
            return None
        result = "hit"
        copy = session.copy
        if copy is None and bridge.backplane.owns(session):
            result = "miss"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.copy_ready.wait(), self.cfg.upstream.timeout)
            copy = session.copy
        if copy is None and self.cfg.upstream.state.select is None:
            latest = session.hub.log.latest("session")
            if latest is not None:  # the state the shared stream carries, as JSON
                cached = session.stream_copy
                if cached is None or cached[0] != latest.seq:  # encoded once per state
                    raw = json.dumps(latest.message["payload"], separators=(",", ":")).encode()
                    cached = session.stream_copy = (latest.seq, (raw, "application/json",
                                                                 copy_etag(raw)))  # fmt: skip
                copy = cached[1]
        if copy is None:
            return None
        body, ctype, etag = copy
        if etag in (t.strip() for t in request.headers.get("If-None-Match", "").split(",")):
            self.metrics.intercept_requests.labels("not_modified").inc()
            return web.Response(status=304, headers={"ETag": etag})
        self.metrics.intercept_requests.labels(result).inc()
        resp = web.Response(body=body if request.method == "GET" else None,
                            headers={"ETag": etag, "Cache-Control": "no-cache"})  # fmt: skip
        if ctype:
            resp.headers["Content-Type"] = ctype
        return resp
