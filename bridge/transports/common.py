"""What every transport adapter shares: admission, JSON errors, origin checks, app keys."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ..config import Config
from ..exceptions import BackplaneUnavailable, ProtocolError
from ..metrics import Metrics
from ..runtime import Bridge, ConnectRequest, JoinRefused, Session, parse_connect

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


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is: its client, session and user, and what its upstream
    requests are templated and sent with (connect parameters, forwarded headers)."""

    client_id: str
    session_id: str
    user_id: str
    params: Mapping[str, str]
    headers: Mapping[str, str]


class ClientConnection:
    """What every transport's connection holds: the fields of the runtime's
    Connection protocol. Subclasses add how they write (and their own slots)."""

    __slots__ = (
        "client_id", "session_id", "user_id", "params", "headers", "last_rx", "busy",
        "closed", "close_reason",
    )  # fmt: skip

    def __init__(self, who: Identity, now: float, close_reason: str = "client") -> None:
        self.client_id = who.client_id
        self.session_id = who.session_id
        self.user_id = who.user_id
        self.params = who.params
        self.headers = who.headers
        self.last_rx = now
        self.busy = False
        self.closed = False
        self.close_reason = close_reason


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


#: HTTP statuses for the close codes a refused connection gets (protocol.md).
STATUS_FOR_CLOSE = {1008: 403, 1012: 503, 1013: 503, 4400: 400, 4401: 401, 4404: 404}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is not admitted, as a close code and as an HTTP status."""

    close_code: int
    code: str
    message: str
    reason: str  # metrics label

    @property
    def status(self) -> int:
        return STATUS_FOR_CLOSE.get(self.close_code, 400)

    def response(self, retry_after: float = 1.0) -> web.Response:
        headers = {"Retry-After": str(max(1, round(retry_after)))} if self.status == 503 else None
        return json_error(self.status, self.code, self.message, headers)


@dataclass(frozen=True, slots=True)
class Admitted:
    req: ConnectRequest
    session: Session
    client_id: str
    by_token: bool
    ip: str

    @property
    def who(self) -> Identity:
        req = self.req
        return Identity(self.client_id, req.session_id, req.user_id, req.params, req.headers)


async def admit(
    request: web.Request,
    transport: str,
    *,
    seq_param: str = "lastSeq",
    last_seq_header: str | None = None,
) -> Admitted | Refusal:
    """Every check a new stream connection passes, the same for every transport:
    origin, connect parameters, draining, limits, resume token, upstream join."""
    bridge = request.app[BRIDGE]
    cfg = bridge.cfg
    try:
        async with asyncio.timeout(cfg.limits.handshake_timeout):
            admitted = await _admit(bridge, cfg, request, seq_param, last_seq_header)
    except TimeoutError:
        admitted = Refusal(1013, "timeout", "the handshake took too long", "handshake_timeout")
        session = bridge.sessions.get(request.query.get("sessionId", ""))
        if session is not None:
            bridge.drop_if_idle(session)
    if isinstance(admitted, Refusal):
        bridge.metrics.connections_rejected.labels(transport, admitted.reason).inc()
    return admitted


async def _admit(
    bridge: Bridge, cfg: Config, request: web.Request, seq_param: str,
    last_seq_header: str | None,
) -> Admitted | Refusal:  # fmt: skip
    if not origin_allowed(cfg, request.headers.get("Origin")):
        return Refusal(1008, "forbidden", "origin not allowed", "origin")
    req = parse_connect(
        request.query, request.headers, cfg.upstream.forward_headers,
        seq_param=seq_param, last_seq_header=last_seq_header,
    )  # fmt: skip
    if isinstance(req, ProtocolError):
        return Refusal(req.close_code, req.code, req.message, "bad_request")
    if bridge.closing:
        return Refusal(1012, "draining", "server restarting", "draining")
    if len(bridge.connections) >= cfg.limits.max_connections:
        return Refusal(1013, "overloaded", "too many connections", "overload")
    ip = client_ip(request, cfg.security.trusted_proxies)
    if bridge.per_ip.get(ip, 0) >= cfg.limits.max_connections_per_ip:
        return Refusal(1013, "overloaded", "too many connections from this address", "per_ip")
    auth = bridge.authenticate(req)
    if isinstance(auth, ProtocolError):
        return Refusal(auth.close_code, auth.code, auth.message, "unauthorized")
    client_id, by_token = auth
    session = bridge.session(req.session_id)
    try:
        await bridge.backplane.open(session)
    except BackplaneUnavailable as exc:
        bridge.drop_if_idle(session)
        return Refusal(1013, exc.code, "the shared backplane is unreachable; retry", "backplane")
    if len(session.conns) >= cfg.limits.max_clients_per_session and (
        client_id not in session.conns
    ):
        bridge.drop_if_idle(session)
        return Refusal(1013, "session_full", "session is full", "session_full")
    try:
        await bridge.ensure_joined(session, req.user_id, client_id, req)
    except JoinRefused as exc:
        bridge.drop_if_idle(session)
        return Refusal(exc.close_code, exc.code, exc.message, "join_refused")
    return Admitted(req, session, client_id, by_token, ip)
