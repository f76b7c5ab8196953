"""What every transport adapter shares: admission, JSON errors, origin checks, app keys."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..config import Config
from ..exceptions import ProtocolError
from ..metrics import Metrics
from ..protocol.types import Command
from ..runtime import Admission, Bridge, Identity, Refusal, parse_connect
from ..tasks import TaskOwner

CONFIG: web.AppKey[Config] = web.AppKey("config", Config)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
BRIDGE: web.AppKey[Bridge] = web.AppKey("bridge", Bridge)


def json_error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The HTTP error shape of protocol.md: ``{"error": {"code", "message"}}``."""
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def transport_disabled(bridge: Bridge, transport: str) -> web.Response | None:
    """A 404 when ``transports.<name>`` is off (clients then fall back)."""
    if getattr(bridge.cfg.transports, transport):
        return None
    bridge.metrics.connections_rejected.labels(transport, "disabled").inc()
    return json_error(404, "transport_disabled", f"the {transport} transport is turned off")


def origin_allowed(cfg: Config, origin: str | None) -> bool:
    """Origin policy: see docs/configuration.md ("security").

    No Origin header (a non-browser client) is allowed unless
    ``security.require_origin``; with one, it must be listed in
    ``security.allowed_origins`` (an empty list or ``"*"`` allows any).
    """
    sec = cfg.security
    if origin is None:
        return not sec.require_origin
    allowed = sec.allowed_origins
    return not allowed or "*" in allowed or origin in allowed


def cors_headers(cfg: Config, origin: str | None, preflight: bool = False) -> dict[str, str]:
    """CORS for the HTTP transports, only for origins listed in security.allowed_origins
    (an empty list allows any origin to connect, but grants no cross-origin reads)."""
    if origin is None or origin not in cfg.security.allowed_origins:
        return {}
    headers = {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }
    if preflight:
        headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        headers["Access-Control-Allow-Headers"] = (
            "Content-Type, Content-Encoding, Accept, X-Bridge-Token, Last-Event-ID"
        )
        headers["Access-Control-Max-Age"] = "600"
    return headers


@web.middleware
async def edge_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """CORS on paths.events, paths.poll and paths.messages (preflights too); and a
    request with a body left unread (refused before reading, or past a limit)
    does not keep its connection alive."""
    cfg = request.app[BRIDGE].cfg
    http_transport = request.path in (cfg.paths.events, cfg.paths.poll, cfg.paths.messages)
    origin = request.headers.get("Origin")
    if http_transport and request.method == "OPTIONS":
        allowed = cors_headers(cfg, origin, preflight=True)
        if not allowed:
            return json_error(403, "forbidden", "origin not allowed")
        return web.Response(status=204, headers=allowed)
    response: web.StreamResponse = await handler(request)
    if not response.prepared:
        if http_transport:
            response.headers.update(cors_headers(cfg, origin))
        if request.body_exists and not request.content.is_eof():
            response.force_close()  # the rest is drained (still compressed), not kept alive
    return response


def client_ip(request: web.Request, trusted: tuple[str, ...] = ()) -> str:
    """The client's address: the peer's, or — when the peer is a trusted proxy —
    the last address in X-Forwarded-For that is not itself a trusted proxy."""
    peer: Any = request.transport.get_extra_info("peername") if request.transport else None
    ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
    if ip in trusted:
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed([h for h in hops if h]):
            if hop not in trusted:
                return hop
    return ip


class ClientConnection:
    """What every transport's connection holds: the fields of the runtime's
    Connection protocol. Subclasses add how they write (and their own slots).

    Its task owner and its inbox are made when first needed: an idle connection
    (most of them) costs neither."""

    __slots__ = (
        "client_id", "session_id", "user_id", "params", "headers", "last_rx", "busy",
        "closed", "close_reason", "next_ping", "_tasks", "_inbox", "_count",
    )  # fmt: skip

    def __init__(
        self, who: Identity, now: float, close_reason: str = "client",
        count: Callable[[str], None] | None = None,
    ) -> None:  # fmt: skip
        self.client_id = who.client_id
        self.session_id = who.session_id
        self.user_id = who.user_id
        self.params = who.params
        self.headers = who.headers
        self.last_rx = now
        self.busy = False
        self.closed = False
        self.close_reason = close_reason
        self.next_ping = now
        self._tasks: TaskOwner | None = None
        self._inbox: list[Command] | None = None
        self._count = count

    @property
    def tasks(self) -> TaskOwner:
        """The connection's own tasks (its command worker, its writer, its close)."""
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = TaskOwner("connection", count=self._count)
        return tasks

    @property
    def inbox(self) -> list[Command]:
        """Commands read and not yet answered, in order (runtime/commands.py)."""
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = []
        return inbox


class SendQueue:
    """A connection's unsent messages, bounded in bytes.

    Past the high-water mark (half the cap) a stream message replaces the queued
    one of its type, if any: each is a whole snapshot, so only obsolete states are
    dropped. Past the cap nothing more fits: the connection is to be closed (1013).
    """

    __slots__ = ("_items", "bytes", "cap")

    def __init__(self, cap: int) -> None:
        self._items: deque[tuple[str | None, bytes]] = deque()
        self.bytes = 0
        self.cap = cap

    def __len__(self) -> int:
        return len(self._items)

    def put(self, data: bytes, kind: str | None = None) -> tuple[bool, bool]:
        """Queue ``data`` (``kind``: its stream type, None for other messages).
        Returns (accepted, collapsed)."""
        collapsed = False
        if kind is not None and self.bytes + len(data) > self.cap // 2:
            for i, (queued_kind, queued) in enumerate(self._items):
                if queued_kind == kind:
                    del self._items[i]
                    self.bytes -= len(queued)
                    collapsed = True
                    break
        if self.bytes + len(data) > self.cap:
            return False, collapsed
        self._items.append((kind, data))
        self.bytes += len(data)
        return True, collapsed

    def get(self) -> bytes:
        _, data = self._items.popleft()
        self.bytes -= len(data)
        return data


def refusal_response(refusal: Refusal, retry_after: float = 1.0) -> web.Response:
    """A refused HTTP transport's answer: the status for its close code, the JSON
    error body, and ``Retry-After`` on 503."""
    status = refusal.status
    headers = {"Retry-After": str(max(1, round(retry_after)))} if status == 503 else None
    return json_error(status, refusal.code, refusal.message, headers)


async def admit(
    request: web.Request,
    transport: str,
    *,
    seq_param: str = "lastSeq",
    last_seq_header: str | None = None,
) -> Admission | Refusal:
    """Every check a new stream connection passes, the same for every transport:
    origin and connect parameters here, then the runtime's admission (limits,
    resume token, the upstream join), within ``limits.handshake_timeout``."""
    bridge = request.app[BRIDGE]
    cfg = bridge.cfg
    admitted: Admission | Refusal
    if not origin_allowed(cfg, request.headers.get("Origin")):
        admitted = Refusal(1008, "forbidden", "origin not allowed", "origin")
    else:
        req = parse_connect(
            request.query, request.headers, cfg.upstream.forward_headers,
            seq_param=seq_param, last_seq_header=last_seq_header,
        )  # fmt: skip
        if isinstance(req, ProtocolError):
            admitted = Refusal(req.close_code, req.code, req.message, "bad_request")
        else:
            ip = client_ip(request, cfg.security.trusted_proxies)
            try:
                async with asyncio.timeout(cfg.limits.handshake_timeout):
                    admitted = await bridge.admit(req, ip)
            except TimeoutError:  # the admission released what it held
                admitted = Refusal(
                    1013, "timeout", "the handshake took too long", "handshake_timeout"
                )
    if isinstance(admitted, Refusal):
        bridge.metrics.connections_rejected.labels(transport, admitted.reason).inc()
    return admitted
