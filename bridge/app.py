"""``make_app(config)`` → the bridge's aiohttp application.

Resources (the upstream HTTP session, the runtime and its tasks) start and
stop in ``cleanup_ctx``; live sockets close in ``on_shutdown``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .admin import add_admin_routes
from .config import Config, load_config
from .exceptions import BackplaneUnavailable, BodyTooBig, BodyUnreadable, ConfigError
from .intercept import Intercept
from .metrics import Metrics
from .passthrough import INTERCEPT, PASSTHROUGH, PassThrough, passthrough_middleware
from .protocol.types import valid_id
from .protocol.values import problem
from .runtime import Bridge
from .transports.common import BRIDGE, CONFIG, METRICS, edge_middleware, json_error
from .transports.http import read_body
from .transports.messages import messages_handler
from .transports.poll import poll_handler
from .transports.sse import events_handler
from .transports.websocket import websocket_handler
from .upstream.client import UpstreamClient

log = logging.getLogger("bridge.app")

STATIC = Path(__file__).parent / "static"
# Built from clients/js (the npm package session-bridge-client) by `make js` and
# committed, so that installing the bridge never needs Node.
_JS, _TS = "text/javascript", "application/typescript"
STATIC_FILES = {
    "/bridge/client.js": ("client.js", _JS),
    "/bridge/use-connection-manager.js": ("use-connection-manager.js", _JS),
    "/bridge/client.d.ts": ("client.d.ts", _TS),
    "/bridge/use-connection-manager.d.ts": ("use-connection-manager.d.ts", _TS),
    # the admin page's script (the page, at /bridge/admin/, is admin.py's)
    "/bridge/admin.js": ("admin.js", _JS),
}
PUSH_MAX_BYTES = 8 * 1024 * 1024


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[CONFIG]
    # the limit is the adaptive one (upstream/limits.py); a reload may raise it
    connector = aiohttp.TCPConnector(limit=0)
    passthrough = app.get(PASSTHROUGH)
    if passthrough is not None:
        await passthrough.start()
    # no cookie jar: a cookie the app sets for one user must never go with another's requests
    async with aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.DummyCookieJar()
    ) as http:
        upstream = UpstreamClient(cfg.upstream, http, app[METRICS], cfg.base_dir)
        bridge = Bridge(cfg, upstream, app[METRICS])
        app[BRIDGE] = bridge
        bridge.start()
        await bridge.start_backplane()
        source = app.get(RELOAD)
        loop = asyncio.get_running_loop()
        if source is not None:
            loop.add_signal_handler(signal.SIGHUP, reload_config, app)
        try:
            yield
        finally:
            if source is not None:
                loop.remove_signal_handler(signal.SIGHUP)
            await bridge.stop()
            if passthrough is not None:
                await passthrough.stop()


def reload_config(app: web.Application) -> bool:
    """SIGHUP: read the config file again. A bad file keeps the running
    configuration (and says why in the log); returns whether it was applied."""
    source = app[RELOAD]
    try:
        cfg = source.load()
    except ConfigError as exc:
        log.error(
            "reload of %s refused, the running configuration stays: %s",
            source.path, "; ".join(exc.problems),
        )  # fmt: skip
        return False
    needs_restart = app[BRIDGE].reload(cfg)
    if PASSTHROUGH in app:
        app[PASSTHROUGH].cfg = cfg
    app[INTERCEPT].reconfigure(cfg)
    log.info("configuration reloaded from %s", source.path)
    if needs_restart:
        log.warning("changed, but only applied after a restart: %s", ", ".join(needs_restart))
    return True


@dataclass(frozen=True)
class ReloadSource:
    """Where SIGHUP reads the configuration from (and command-line overrides to keep)."""

    path: str
    transform: Callable[[Config], Config] = lambda cfg: cfg

    def load(self) -> Config:
        return self.transform(load_config(self.path))


RELOAD: web.AppKey[ReloadSource] = web.AppKey("reload", ReloadSource)


async def _on_shutdown(app: web.Application) -> None:
    bridge = app.get(BRIDGE)
    if bridge is None:
        return
    timeout = bridge.cfg.shutdown.timeout
    if timeout > 0:
        await bridge.drain(timeout)
    else:  # no drain: clients are told "going away" and reconnect with backoff
        await bridge.close_all(1001, "server shutting down", 2.0)


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    bridge = request.app.get(BRIDGE)
    if bridge is None or bridge.closing:
        return web.json_response({"status": "draining"}, status=503)
    backplane = bridge.backplane.status()
    return web.json_response(
        {
            "status": "ready" if backplane["healthy"] else "backplane_unavailable",
            "sessions": len(bridge.sessions),
            "connections": len(bridge.connections),
            "upstream": {"breaker": bridge.upstream.breaker_state()},
            "backplane": backplane,
        },
        status=200 if backplane["healthy"] else 503,
    )


async def metrics(request: web.Request) -> web.Response:
    request.app[BRIDGE].refresh_scrape_gauges()
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def push(request: web.Request) -> web.Response:
    """The legacy app (or anything holding the secret) pushes a session's new state."""
    cfg = request.app[BRIDGE].cfg
    assert cfg.upstream.push is not None
    expected = f"Bearer {cfg.upstream.push.secret}".encode()
    given = request.headers.get("Authorization", "").encode()
    if not hmac.compare_digest(given, expected):
        return json_error(
            401, "unauthorized", "a valid 'Authorization: Bearer <secret>' is required"
        )
    try:
        raw = await read_body(request, PUSH_MAX_BYTES)
    except BodyTooBig:
        return json_error(413, "too_big", f"push bodies are limited to {PUSH_MAX_BYTES} bytes")
    except BodyUnreadable as exc:
        return json_error(400, "bad_message", f"cannot decode the body: {exc}")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return json_error(400, "bad_message", "the body must be JSON")
    if not isinstance(body, dict) or "state" not in body:
        return json_error(400, "bad_message", 'expected {"sessionId": "...", "state": {...}}')
    session_id = body.get("sessionId")
    if not valid_id(session_id):
        return json_error(400, "bad_request", "sessionId must be 1-128 of [A-Za-z0-9._:@-]")
    bridge = request.app[BRIDGE]
    wrong = problem(body["state"])
    if wrong is not None:
        return json_error(400, "bad_message", f"the state cannot be sent to clients: {wrong}")
    session = bridge.sessions.get(str(session_id))
    try:
        if session is not None:
            seq = await bridge.publish_state(session, body["state"], "push", time.monotonic())
            live = True
        else:  # served by another instance, or by nobody
            live, seq = await bridge.backplane.push_elsewhere(str(session_id), body["state"])
    except BackplaneUnavailable as exc:
        return json_error(503, "backplane_unavailable", f"the state was not published: {exc}")
    if not live:
        return web.json_response({"accepted": True, "live": False}, status=202)
    if session is not None and seq is None:
        seq = session.hub.log.head
    return web.json_response(
        {"accepted": True, "live": True, "changed": seq is not None and seq > 0, "seq": seq},
        status=202,
    )


def _static_handler(
    filename: str, content_type: str
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    path = STATIC / filename

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.FileResponse(path, headers={"Cache-Control": "public, max-age=300"})
        resp.content_type = content_type
        return resp

    return handler


def make_app(
    cfg: Config,
    *,
    registry_metrics: Metrics | None = None,
    reload_from: ReloadSource | None = None,
) -> web.Application:
    """Build the application. Nothing starts until it runs (cleanup_ctx).

    With ``reload_from``, SIGHUP re-reads that file (see :func:`reload_config`).
    """
    app = web.Application(
        client_max_size=max(cfg.limits.max_message_bytes, 1024 * 1024),
        middlewares=[edge_middleware, passthrough_middleware],
        handler_args={
            # Bodies are inflated by read_body, within the size cap; not by aiohttp.
            "auto_decompress": False,
            # A connection that has not sent a whole request (slow or no headers:
            # slowloris) within the handshake timeout is closed; so is one idle that
            # long between requests. Running handlers (WebSocket, SSE, polls) are not.
            "keepalive_timeout": cfg.limits.handshake_timeout,
        },
    )
    app[CONFIG] = cfg
    if reload_from is not None:
        app[RELOAD] = reload_from
    app[METRICS] = registry_metrics or Metrics()
    # always there: a reload may turn it on or off (it reads its config per request)
    app[PASSTHROUGH] = PassThrough(cfg, app[METRICS])
    app[INTERCEPT] = Intercept(cfg, app[METRICS])
    app.cleanup_ctx.append(_runtime_ctx)
    app.on_shutdown.append(_on_shutdown)
    p = cfg.paths
    app.router.add_get(p.websocket, websocket_handler)
    app.router.add_get(p.events, events_handler)
    app.router.add_get(p.poll, poll_handler)
    app.router.add_post(p.messages, messages_handler)
    app.router.add_get(p.health, health)
    app.router.add_get(p.ready, ready)
    app.router.add_get(p.metrics, metrics)
    if cfg.upstream.push is not None:
        app.router.add_post(cfg.upstream.push.path, push)
    if cfg.admin.token:
        add_admin_routes(app)
    for url, (filename, ctype) in STATIC_FILES.items():
        if (STATIC / filename).exists():
            app.router.add_get(url, _static_handler(filename, ctype))
    return app
