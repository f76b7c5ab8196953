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
- anything else (a session the app does not know, a copy that does not come
  within ``upstream.timeout``) passes through to the app as it is.

It skips the app's own check of who may read: it is for apps whose state
route answers the same to everyone (docs/configuration.md says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from urllib.parse import unquote

from aiohttp import web

from .config import Config
from .metrics import Metrics
from .protocol.types import valid_id
from .runtime import Bridge
from .runtime.poller import copy_etag
from .upstream.templates import PLACEHOLDER


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
        self.reconfigure(cfg)

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
        session = await bridge.follow(sid)
        if session is None:
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
