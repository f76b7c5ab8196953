"""The I/O side of the session hub: sessions, connections, pollers, timers.

The transports (``bridge/transports``) accept connections and hand them here;
this module runs each session's :class:`~bridge.core.hub.SessionHub`, talks to
the upstream, and fans stream entries out to every connection of a session.

Performance rules baked in here:

- one upstream state poller per session with live clients, never per client;
- a stream entry is encoded once per codec (``Entry.encoded``/``ws_frame``)
  and the same bytes are written to every connection;
- one ticker task drives every deadline (heartbeats, graces, keep-alives)
  from one :class:`~bridge.core.timers.TimerQueue`;
- writes never wait on a slow client: each connection's queue is bounded and
  a client past ``limits.send_queue_bytes`` is closed with 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .backplane import Backplane, make_backplane
from .config import Config
from .core.dedupe import Done, Pending
from .core.hub import HubSettings, SessionHub
from .core.ratelimit import TokenBucket
from .core.replay import Entry, ReplayLog, Reset
from .core.timers import TimerQueue
from .exceptions import (
    BackplaneUnavailable,
    BadRequest,
    CircuitOpen,
    ProtocolError,
    Unauthorized,
    UpstreamError,
    UpstreamRejected,
)
from .metrics import Metrics, type_label
from .protocol import messages as m
from .protocol import tokens
from .protocol.codecs import Codec
from .protocol.normalise import normalise
from .protocol.types import RESERVED_PARAMS, Command, Message, valid_id
from .upstream.client import UpstreamClient
from .upstream.templates import MissingValue

log = logging.getLogger("bridge.runtime")

TRANSPORTS = ["websocket", "sse", "poll"]
TICK_SLACK = 0.05  # timers may fire this much early, so one wake-up serves many
MAX_HELD_PER_SESSION = 100  # commands held while the upstream breaker is open


class Connection(Protocol):
    """What a transport adapter gives the runtime: it only moves bytes and owns timers."""

    transport: str
    client_id: str
    session_id: str
    user_id: str
    codec: Codec
    params: Mapping[str, str]
    headers: Mapping[str, str]
    last_rx: float
    busy: bool
    closed: bool
    #: The bridge sends ``ping`` on this transport every heartbeat interval.
    sends_pings: bool
    #: Nothing received for heartbeat.timeout ends this transport.
    rx_timeout: bool

    def start(self, welcome: Message, backlog: list[Entry]) -> None:
        """Send the welcome, then the backlog, before anything else."""

    def deliver(self, entry: Entry) -> bool:
        """Queue a stream entry; False when the connection is (now) closed."""

    def send(self, message: Message) -> None:
        """Queue one message for this connection only."""

    def close(self, code: int, reason: str, label: str | None = None) -> None:
        """Close the transport soon (non-blocking); safe to call twice.

        ``label`` is the metrics reason (a small fixed set)."""


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """Validated connect parameters, the same for every transport."""

    session_id: str
    user_id: str
    token: str | None
    epoch: str | None
    last_seq: int | None
    params: dict[str, str]
    headers: dict[str, str]
    #: the transport the client was on before this connect (for switch metrics)
    previous: str | None = None


class JoinRefused(Exception):
    """The upstream refused the user's join; close the client with ``close_code``."""

    def __init__(self, close_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.code = code
        self.message = message


def parse_connect(
    query: Mapping[str, str],
    headers: Mapping[str, str],
    forward_headers: tuple[str, ...],
    *,
    seq_param: str = "lastSeq",
    last_seq_header: str | None = None,
) -> ConnectRequest | ProtocolError:
    """Validate the connect query of any transport. Never raises.

    ``seq_param`` names the query parameter holding lastSeq (``cursor`` for
    poll); ``last_seq_header`` is used when it is absent (SSE's Last-Event-ID).
    """
    session_id = query.get("sessionId")
    user_id = query.get("userId")
    if not valid_id(session_id):
        return BadRequest("sessionId must be 1-128 characters of [A-Za-z0-9._:@-]")
    if not valid_id(user_id):
        return BadRequest("userId must be 1-128 characters of [A-Za-z0-9._:@-]")
    raw_seq = query.get(seq_param) or last_seq_header
    last_seq: int | None = None
    if raw_seq not in (None, ""):
        assert raw_seq is not None
        if not raw_seq.isdigit() or len(raw_seq) > 18:
            return BadRequest(f"{seq_param} must be a non-negative integer")
        last_seq = int(raw_seq)
    epoch = query.get("epoch") or None
    if epoch is not None and (len(epoch) > 64 or not valid_id(epoch)):
        return BadRequest("epoch is malformed")
    params = {k: v for k, v in query.items() if k not in RESERVED_PARAMS}
    fwd = {}
    for name in forward_headers:
        value = headers.get(name)
        if value is not None:
            fwd[name] = value
    assert session_id is not None and user_id is not None
    previous = query.get("transport")
    return ConnectRequest(
        session_id=session_id,
        user_id=user_id,
        token=query.get("resumeToken") or None,
        epoch=epoch,
        last_seq=last_seq,
        params=params,
        headers=fwd,
        previous=previous if previous in TRANSPORTS else None,
    )


@dataclass(slots=True)
class _UserContext:
    client_id: str
    params: Mapping[str, str]
    headers: Mapping[str, str]


@dataclass(eq=False)
class Session:
    id: str
    hub: SessionHub
    conns: dict[str, Connection] = field(default_factory=dict)
    users: dict[str, _UserContext] = field(default_factory=dict)
    joining: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    #: (userId, command id) → the ack, for repeats that arrive while it is upstream.
    pending: dict[tuple[str, str], asyncio.Future[Message]] = field(default_factory=dict)
    #: commands waiting for the breaker to close (at most MAX_HELD_PER_SESSION)
    held: int = 0
    #: clientId → its commands_per_second bucket
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    poller: asyncio.Task[None] | None = None
    refresh: asyncio.Event = field(default_factory=asyncio.Event)
    inflight: int = 0
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    etag: str | None = None
    last_modified: str | None = None
    poll_failures: int = 0
    #: the backplane refused the last state (logged once until it works again)
    unpublished: bool = False
    evictions_seen: int = 0


class Bridge:
    """One per process: every session this instance serves."""

    def __init__(self, cfg: Config, upstream: UpstreamClient, metrics: Metrics) -> None:
        self.cfg = cfg
        self.upstream = upstream
        self.metrics = metrics
        secret = cfg.security.token_secret
        if not secret:
            log.warning(
                "security.token_secret is not set: using a random secret, so resume tokens "
                "do not survive a restart and are not accepted by other instances"
            )
            secret = secrets.token_hex(32)
        self._secret = secret.encode("utf-8")
        self.sessions: dict[str, Session] = {}
        self.connections: dict[int, Connection] = {}
        #: open connections per client address (limits.max_connections_per_ip)
        self.per_ip: dict[str, int] = {}
        self._conn_ip: dict[int, str] = {}
        self.timers: TimerQueue[tuple[str, Any]] = TimerQueue()
        self._waiter: asyncio.Future[None] | None = None
        self._sleep_until: float | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._command_names = frozenset(cfg.upstream.commands)
        self._pongs_in = metrics.messages.labels("in", "pong", "json")
        self.closing = False
        self.drained = False
        self.backplane: Backplane = make_backplane(self)
        self._hub_settings = self._settings_for(cfg)

    def _settings_for(self, cfg: Config) -> HubSettings:
        shared = self.backplane.shared
        keepalive = cfg.upstream.keepalive
        return HubSettings(
            max_messages=cfg.replay.max_messages,
            max_bytes=cfg.replay.max_bytes,
            max_age=cfg.replay.max_age,
            grace=cfg.presence.grace,
            # shared: the lease holder keeps users alive, from the backplane's presence
            keepalive=None if shared or keepalive is None else keepalive.every,
            dedupe_window=cfg.dedupe.window,
            mirror=shared,
        )

    @staticmethod
    def clock() -> float:
        return time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())

    async def start_backplane(self) -> None:
        await self.backplane.start()

    async def drain(self, timeout: float) -> None:
        """Graceful stop (SIGTERM), within ``timeout``:

        1. unready at once: /readyz 503, new clients refused, and new commands are
           neither forwarded nor acked (clients keep them for the next instance);
        2. commands already upstream finish, and their acks reach the clients;
        3. every client is told to reconnect (to any instance) after a jittered
           delay, and closed with 1012.
        """
        if self.drained:
            return
        self.drained = True
        self.closing = True
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline and any(s.inflight for s in self.sessions.values()):
            await asyncio.sleep(0.02)
        retry_after = max(0.5, min(2.0, timeout / 4))
        notice = m.reconnect(retry_after, "draining")
        conns = list(self.connections.values())
        log.info("draining %d connections (retry_after %.1fs)", len(conns), retry_after)
        for conn in conns:
            conn.send(notice)
            conn.close(1012, "server restarting", "drain")
        while time.monotonic() < deadline and any(
            not self._gone(c) for c in self.connections.values()
        ):
            await asyncio.sleep(0.02)
        log.info(
            "drained in %.2fs; %d connections left", time.monotonic() - started,
            len(self.connections),
        )  # fmt: skip

    @staticmethod
    def _gone(conn: Connection) -> bool:
        """A poll client waiting for its next poll to carry the notice, that has
        not polled for a while, is not coming back: the drain does not wait for it."""
        return bool(getattr(conn, "lingering", False)) and time.monotonic() - conn.last_rx > 2.0

    def reload(self, cfg: Config) -> list[str]:
        """Apply a new configuration to what can change while running; returns the
        keys that only take effect after a restart (listen, paths, backplane)."""
        fixed = ("listen", "paths", "backplane")
        needs_restart = [key for key in fixed if getattr(cfg, key) != getattr(self.cfg, key)]
        self.cfg = cfg
        self.upstream.reconfigure(cfg.upstream)
        self._hub_settings = self._settings_for(cfg)
        self._command_names = frozenset(cfg.upstream.commands)
        return needs_restart

    async def close_all(self, code: int, reason: str, timeout: float) -> None:
        """Close every connection and wait (up to ``timeout``) for their handlers to end."""
        self.closing = True
        for conn in list(self.connections.values()):
            conn.close(code, reason)
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Close every connection (1001) and stop every task. Sends no leaves."""
        self.closing = True
        for conn in list(self.connections.values()):
            conn.close(1001, "server shutting down")
        for session in list(self.sessions.values()):
            tasks = [t for t in (session.poller, *session.background) if t is not None]
            for task in tasks:
                task.cancel()
            # their outcomes do not matter; a cancellation of stop() itself still does
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.backplane.stop()

    # ------------------------------------------------------------------ timers
    def schedule(self, key: tuple[str, Any], when: float) -> None:
        """Fire ``key`` at ``when`` (up to TICK_SLACK early, batched with its neighbours)."""
        self.timers.schedule(key, when)
        if self._sleep_until is None or when < self._sleep_until - TICK_SLACK:
            self._wake_ticker()

    def _wake_ticker(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _tick_loop(self) -> None:
        # One task for every deadline. It sleeps on a future woken by call_at (or
        # by an earlier schedule), and fires everything due within TICK_SLACK at
        # once, so 10k connections' heartbeats cost a few wake-ups a second.
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.timers.next_deadline()
            if deadline is None or deadline > time.monotonic() + TICK_SLACK:
                self._waiter = loop.create_future()
                self._sleep_until = deadline if deadline is not None else float("inf")
                handle = None if deadline is None else loop.call_at(deadline, self._wake_ticker)
                try:
                    await self._waiter
                finally:
                    if handle is not None:
                        handle.cancel()
                    self._waiter = None
                    self._sleep_until = None
            now = time.monotonic() + TICK_SLACK
            ping: Message | None = None
            for kind, target in self.timers.pop_due(now):
                try:
                    if kind == "hb":
                        if ping is None:
                            ping = m.ping(int(time.time() * 1000))
                        self._check_heartbeat(target, now, ping)
                    elif kind == "flush":
                        again = target.flush_held(now)
                        if again is not None:
                            self.schedule(("flush", target), again)
                    else:
                        self._tick_session(target, now)
                except Exception:  # pragma: no cover - a bug must not stop the ticker
                    log.exception("timer %s failed", kind)

    # ------------------------------------------------------------------ connect
    def authenticate(self, req: ConnectRequest) -> tuple[str, bool] | Unauthorized:
        """The client id (from the token, or new) and whether it was resumed by token."""
        if req.token is None:
            return secrets.token_urlsafe(12), False
        claims = tokens.verify(
            self._secret,
            req.token,
            now=time.time(),
            session_id=req.session_id,
            user_id=req.user_id,
        )
        if isinstance(claims, Unauthorized):
            return claims
        return claims.client_id, True

    @property
    def secret(self) -> bytes:
        """The resume-token key (security.token_secret)."""
        return self._secret

    def issue_token(self, client_id: str, session_id: str, user_id: str) -> str:
        claims = tokens.TokenClaims(
            client_id=client_id,  # type: ignore[arg-type]
            session_id=session_id,  # type: ignore[arg-type]
            user_id=user_id,  # type: ignore[arg-type]
            expires=int(time.time() + self.cfg.security.token_ttl),
        )
        return tokens.issue(self._secret, claims)

    def session(self, session_id: str) -> Session:
        session = self.sessions.get(session_id)
        if session is None:
            epoch = secrets.token_urlsafe(9)
            session = Session(session_id, SessionHub(session_id, epoch, self._hub_settings))
            self.sessions[session_id] = session
            self.metrics.sessions.set(len(self.sessions))
        return session

    def _ctx(
        self, session_id: str, user_id: str, client_id: str, params: Mapping[str, Any],
        payload: Mapping[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        return {
            "sessionId": session_id,
            "userId": user_id,
            "clientId": client_id,
            "params": params,
            "payload": payload,
        }

    async def ensure_joined(
        self, session: Session, user_id: str, client_id: str, req: ConnectRequest
    ) -> None:
        """Send the upstream ``join`` for a user's first client (on any instance,
        with a shared backplane). Raises JoinRefused."""
        if not session.hub.needs_join(user_id):
            return
        pending = session.joining.get(user_id)
        if pending is not None:
            await asyncio.shield(pending)
            return
        route = self.cfg.upstream.commands.get("join")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session.joining[user_id] = fut
        claimed = False
        try:
            context = {"client": client_id, "params": req.params, "headers": req.headers}
            try:
                claimed = await self.backplane.claim_user(session, user_id, context)
            except BackplaneUnavailable as exc:
                raise JoinRefused(1013, exc.code, str(exc)) from None
            if not claimed:  # present through another instance: no second join
                fut.set_result(None)
                return
            ctx = self._ctx(session.id, user_id, client_id, req.params, {})
            try:
                if route is not None:
                    await self.upstream.request("join", route, ctx, req.headers)
            except MissingValue as exc:
                raise JoinRefused(4400, "bad_request", f"join: {exc}") from None
            except UpstreamRejected as exc:
                if exc.status in (401, 403):
                    raise JoinRefused(4401, "unauthorized", exc.message) from None
                if exc.status == 404:
                    raise JoinRefused(4404, "not_found", exc.message) from None
                raise JoinRefused(4400, "upstream_rejected", exc.message) from None
            except UpstreamError as exc:
                raise JoinRefused(1013, exc.code, exc.message) from None
        except JoinRefused as exc:
            if claimed:
                await self.backplane.unclaim_user(session, user_id)
            fut.set_exception(exc)
            fut.exception()  # retrieved: later waiters re-raise it themselves
            raise
        except BaseException:  # cancelled (handshake timeout): waiters must not hang
            if claimed:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.backplane.unclaim_user(session, user_id))
            if not fut.done():
                fut.set_exception(JoinRefused(1013, "timeout", "join interrupted"))
                fut.exception()
            raise
        else:
            if not fut.done():
                await self.backplane.joined(session, user_id)
                fut.set_result(None)
        finally:
            session.joining.pop(user_id, None)

    def attach(
        self,
        session: Session,
        conn: Connection,
        req: ConnectRequest,
        resumed_token: bool,
        ip: str = "unknown",
    ) -> None:
        """Register a connection: welcome, then its backlog, then the live stream.

        Synchronous on purpose: nothing can be broadcast between the backlog
        and the registration, so the client misses nothing and sees no seq twice.
        """
        now = time.monotonic()
        previous = session.conns.get(conn.client_id)
        if previous is not None and previous is not conn:
            previous.close(1000, "replaced by a newer connection of this client")
        session.conns[conn.client_id] = conn
        self.connections[id(conn)] = conn
        self._conn_ip[id(conn)] = ip
        self.per_ip[ip] = self.per_ip.get(ip, 0) + 1
        session.users[conn.user_id] = _UserContext(conn.client_id, conn.params, conn.headers)
        attached = session.hub.attach(conn.client_id, conn.user_id, req.epoch, req.last_seq, now)
        backlog = attached.backlog
        resumed = not isinstance(backlog, Reset)
        if req.epoch is not None and req.last_seq is not None and resumed_token:
            self.metrics.resumes.labels("resumed" if resumed else "reset").inc()
        welcome = self.welcome(session, conn, resumed, attached.head)
        conn.start(welcome, backlog.entries)
        if req.previous is not None and req.previous != conn.transport:
            self.metrics.transport_switches.labels(req.previous, conn.transport).inc()
        self.metrics.connections_opened.labels(conn.transport).inc()
        self.metrics.connections_active.labels(conn.transport).inc()
        if attached.presence is not None:
            self.broadcast(session, attached.presence)
        self._update_gauges()
        self._start_poller(session)
        self._schedule_session(session)
        if self.cfg.logging.debug:
            log.info(
                "connect transport=%s session=%s user=%s client=%s resumed=%s seq=%d",
                conn.transport, session.id, conn.user_id, conn.client_id, resumed,
                session.hub.log.head,
            )  # fmt: skip

    def welcome(self, session: Session, conn: Connection, resumed: bool, head: int) -> Message:
        """The ``welcome`` message for ``conn`` (with a fresh resume token)."""
        cfg = self.cfg
        return m.welcome(
            client_id=conn.client_id,
            resume_token=self.issue_token(conn.client_id, session.id, conn.user_id),
            epoch=session.hub.epoch,
            seq=head,
            resumed=resumed,
            heartbeat=(cfg.heartbeat.interval, cfg.heartbeat.timeout),
            reconnect={
                "initial": cfg.reconnect.initial,
                "max": cfg.reconnect.max,
                "factor": cfg.reconnect.factor,
                "jitter": cfg.reconnect.jitter,
                "upgrade_interval": cfg.reconnect.upgrade_interval,
            },
            transports=[t for t in TRANSPORTS if getattr(cfg.transports, t)],
        )

    def detach(self, conn: Connection, reason: str) -> None:
        """The transport ended. Starts the user's grace if it was their last client."""
        if self.connections.pop(id(conn), None) is None:
            return
        ip = self._conn_ip.pop(id(conn), "unknown")
        left = self.per_ip.get(ip, 1) - 1
        if left > 0:
            self.per_ip[ip] = left
        else:
            self.per_ip.pop(ip, None)
        self.metrics.connections_active.labels(conn.transport).dec()
        self.metrics.connections_closed.labels(conn.transport, reason).inc()
        session = self.sessions.get(conn.session_id)
        if session is None or session.conns.get(conn.client_id) is not conn:
            return
        del session.conns[conn.client_id]
        session.hub.detach(conn.client_id, time.monotonic())
        self._schedule_session(session)
        if self.cfg.logging.debug:
            log.info(
                "disconnect transport=%s session=%s user=%s client=%s reason=%s",
                conn.transport, session.id, conn.user_id, conn.client_id, reason,
            )  # fmt: skip

    # ------------------------------------------------------------------ fan-out
    def broadcast(self, session: Session, entry: Entry, seen_at: float | None = None) -> None:
        """Write one stream entry to every connection of the session."""
        counts: dict[tuple[str, str], int] = {}
        for conn in list(session.conns.values()):
            if conn.deliver(entry):
                key = (conn.transport, conn.codec.name)
                counts[key] = counts.get(key, 0) + 1
        for (transport, codec), n in counts.items():
            self.metrics.deliveries.labels(transport).inc(n)
            self.metrics.messages.labels("out", entry.type, codec).inc(n)
            self.metrics.wire_bytes.labels(transport, "encoded").inc(
                n * len(entry.encoded_as(codec))
            )
        if seen_at is not None:
            self.metrics.delivery_latency.observe(time.monotonic() - seen_at)
        evicted = session.hub.log.evictions - session.evictions_seen
        if evicted:
            session.evictions_seen += evicted
            self.metrics.replay_evictions.inc(evicted)

    async def publish_state(
        self, session: Session, payload: Any, source: str, seen_at: float
    ) -> int | None:
        """New state from a poll or a push: its seq when it changed (broadcast here,
        or through the backplane to every instance), else None.
        Raises BackplaneUnavailable."""
        seq = await self.backplane.publish_state(session, payload, seen_at)
        if seq is not None:
            self.metrics.state_changes.labels(source).inc()
        return seq

    # ------------------------------------------------------------------ backplane hooks
    def replace_log(self, session: Session, log_: ReplayLog) -> None:
        """A mirror loaded from the shared backplane."""
        session.hub.replace_log(log_)
        session.evictions_seen = log_.evictions

    def ask_to_resume(self, session: Session, reason: str) -> None:
        """The session's log changed under its clients here (a new epoch): they
        reconnect and resume, which gives them a reset and the latest state."""
        notice = m.reconnect(0.2 + secrets.randbelow(800) / 1000, reason)
        for conn in list(session.conns.values()):
            conn.send(notice)
            conn.close(1012, "session log reloaded", "resync")

    def ownership_changed(self, session: Session, owned: bool) -> None:
        """The lease holder polls the upstream for the session; others do not."""
        if owned:
            session.etag = session.last_modified = None  # fetch the whole state once
            self._start_poller(session)
        elif session.poller is not None:
            session.poller.cancel()
            session.poller = None

    def _start_poller(self, session: Session) -> None:
        if not self.backplane.owns(session):
            return
        if session.poller is None or session.poller.done():
            session.poller = asyncio.get_running_loop().create_task(self._poll_loop(session))

    # ------------------------------------------------------------------ inbound
    async def receive(self, conn: Connection, data: bytes | str) -> None:
        """One inbound frame or body part from a client connection."""
        conn.last_rx = time.monotonic()
        decoded = conn.codec.decode(data)
        if isinstance(decoded, ProtocolError):
            self.metrics.messages.labels("in", "invalid", conn.codec.name).inc()
            conn.send(m.error(decoded.code, decoded.message))
            return
        await self.handle_message(conn, decoded)

    async def handle_message(self, conn: Connection, raw: object) -> Message | None:
        """Process one decoded client message; returns its ack (if it has an id)."""
        cmd = normalise(raw, conn.session_id, conn.user_id)
        if isinstance(cmd, ProtocolError):
            self.metrics.messages.labels("in", "invalid", conn.codec.name).inc()
            reply = m.failure(cmd.code, cmd.message, cmd.id)
            conn.send(reply)
            return reply if cmd.id is not None else None
        self.metrics.messages.labels(
            "in", type_label(cmd.type, self._command_names), conn.codec.name
        ).inc()
        if cmd.type == "heartbeat":
            conn.send(m.heartbeat(int(time.time() * 1000)))
            return None
        if cmd.type == "pong":
            self._observe_rtt(cmd.payload.get("ts"))
            return None
        if cmd.type == "ping":
            conn.send({"type": "pong", "ts": cmd.payload.get("ts")})
            return None
        return await self.command(conn, cmd)

    async def command(self, conn: Connection, cmd: Command) -> Message | None:
        session = self.sessions.get(conn.session_id)
        if session is None:  # pragma: no cover - a live connection always has its session
            return None
        if self.drained:
            # Draining: not forwarded and not acked, so the client keeps it in its
            # outbox and sends it to the next instance (whose de-dupe window is new).
            return None
        route = self.cfg.upstream.commands.get(cmd.type)
        if route is None:
            reply = m.failure("unknown_type", f"unknown message type {cmd.type!r}", cmd.id)
            conn.send(reply)
            return reply if cmd.id is not None else None
        bucket = session.buckets.get(conn.client_id)
        now = time.monotonic()
        if bucket is None:
            rate = self.cfg.limits.commands_per_second
            bucket = session.buckets[conn.client_id] = TokenBucket(rate, max(5.0, 2 * rate), now)
        if not bucket.take(now):
            # Refused before forwarding: acked with the error (so outboxes release it),
            # not remembered by the de-dupe window (a later retry goes through).
            self.metrics.rate_limited.labels(conn.transport).inc()
            wait = bucket.retry_after()
            reply = m.failure("rate_limited", f"over {self.cfg.limits.commands_per_second:g} "
                              f"commands a second; retry in {wait:.2f}s", cmd.id)  # fmt: skip
            conn.send(reply)
            return reply if cmd.id is not None else None
        if cmd.id is None:
            ack = await self._forward(session, conn, cmd, route)
            if ack["status"] != "ok":
                conn.send(m.error(ack["error"]["code"], ack["error"]["message"]))
            return None
        key = (conn.user_id, cmd.id)
        state = await self.backplane.begin_command(session, conn.user_id, cmd.id, time.monotonic())
        if isinstance(state, Done | Pending):
            # A repeat (same user, same id): answered with the original ack, once known.
            self.metrics.dedupe_hits.inc()
            if isinstance(state, Done):
                ack = state.ack
            else:
                ack = await asyncio.shield(session.pending[key])
        else:
            fut = session.pending[key] = asyncio.get_running_loop().create_future()
            try:
                ack = await self._forward(session, conn, cmd, route)
            except BaseException:  # cancelled (shutdown): the outcome is unknown
                self.backplane.abandon_command(session, conn.user_id, cmd.id)
                fut.set_result(
                    m.ack_error(cmd.id, "upstream_unavailable", "interrupted; send it again")
                )
                raise
            finally:
                session.pending.pop(key, None)
            fut.set_result(ack)
            await self.backplane.finish_command(
                session, conn.user_id, cmd.id, ack, time.monotonic()
            )
        if not conn.closed:
            conn.send(ack)
        return ack

    async def _forward(
        self, session: Session, conn: Connection, cmd: Command, route: Any
    ) -> Message:
        ctx = self._ctx(session.id, conn.user_id, conn.client_id, conn.params, cmd.payload)
        cid = cmd.id or ""
        session.inflight += 1
        conn.busy = True
        try:
            await self._request_or_hold(session, cmd.type, route, ctx, conn.headers)
        except MissingValue as exc:
            return m.ack_error(cid, "bad_message", str(exc))
        except UpstreamError as exc:
            return m.ack_error(cid, exc.code, exc.message)
        except Exception as exc:  # pragma: no cover - defensive: never lose the ack
            log.exception("forwarding %s failed", cmd.type)
            return m.ack_error(cid, "upstream_error", f"{type(exc).__name__}")
        finally:
            session.inflight -= 1
            conn.busy = False
            conn.last_rx = time.monotonic()
            self.drop_if_idle(session)
        if cmd.type == "leave":
            await self.backplane.left(session, conn.user_id)
            self._schedule_session(session)
        session.refresh.set()
        return m.ack_ok(cid)

    async def _request_or_hold(
        self, session: Session, name: str, route: Any, ctx: dict[str, Any],
        headers: Mapping[str, str],
    ) -> None:  # fmt: skip
        """Send a command; while the breaker is open, hold it (a bounded number per
        session, for upstream.hold at most) and send it when the breaker lets a
        request through. Raises CircuitOpen when it cannot wait any longer."""
        deadline = time.monotonic() + self.cfg.upstream.hold
        held = False
        try:
            while True:
                try:
                    await self.upstream.request(name, route, ctx, headers)
                    return
                except CircuitOpen:
                    now = time.monotonic()
                    if now >= deadline or (not held and session.held >= MAX_HELD_PER_SESSION):
                        raise
                    if not held:
                        held = True
                        session.held += 1
                        self.metrics.commands_held.inc()
                    wait = self.upstream.breaker.retry_in(now)
                    await asyncio.sleep(min(max(wait, 0.05), deadline - now))
        finally:
            if held:
                session.held -= 1

    # ------------------------------------------------------------------ heartbeats
    def watch(self, conn: Connection) -> None:
        """Start the connection's heartbeat timer (pings and/or its receive timeout)."""
        hb = self.cfg.heartbeat
        self.schedule(("hb", conn), time.monotonic() + min(hb.interval, hb.timeout))

    def unwatch(self, conn: Connection) -> None:
        self.timers.cancel(("hb", conn))

    def _check_heartbeat(self, conn: Connection, now: float, ping: Message) -> None:
        if conn.closed:
            return
        hb = self.cfg.heartbeat
        if conn.rx_timeout and now - conn.last_rx >= hb.timeout and not conn.busy:
            self.metrics.heartbeat_timeouts.labels(conn.transport).inc()
            conn.close(4408, "heartbeat timeout")
            return
        if conn.sends_pings:
            conn.send(ping)
            when = now + hb.interval
            if conn.rx_timeout:
                when = min(when, conn.last_rx + hb.timeout)
        else:
            when = max(conn.last_rx + hb.timeout, now + TICK_SLACK * 2)
        self.schedule(("hb", conn), when)

    def pong(self, conn: Connection, data: str) -> None:
        """A ``pong`` answer to our ping: liveness, and its round trip (the fast path)."""
        conn.last_rx = time.monotonic()
        self._pongs_in.inc()
        try:
            ts = json.loads(data).get("ts")
        except (ValueError, AttributeError):
            return
        self._observe_rtt(ts)

    def _observe_rtt(self, ts: object) -> None:
        """``ts`` is the ping's wall-clock milliseconds, echoed by the client."""
        if isinstance(ts, int) and not isinstance(ts, bool):
            rtt = time.time() - ts / 1000
            if 0 <= rtt < 600:
                self.metrics.heartbeat_rtt.observe(rtt)

    # ------------------------------------------------------------------ sessions
    def _schedule_session(self, session: Session) -> None:
        deadline = session.hub.next_deadline()
        if deadline is not None:
            self.schedule(("session", session.id), deadline)
        else:
            self.timers.cancel(("session", session.id))
        self.drop_if_idle(session)

    def _tick_session(self, session_id: str, now: float) -> None:
        session = self.sessions.get(session_id)
        if session is None:
            return
        tick = session.hub.tick(now)
        for user in tick.keepalive:
            self.spawn(session, self._keepalive(session, user))
        for user in tick.left:
            self.backplane.grace_over(session, user)
        if tick.presence is not None:
            self.broadcast(session, tick.presence)
        self._schedule_session(session)
        self._update_gauges()

    def spawn(self, session: Session, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        session.background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            session.background.discard(t)
            self.drop_if_idle(session)

        task.add_done_callback(done)

    async def user_request(
        self, session: Session, user: str, name: str, stored: Mapping[str, Any] | None
    ) -> None:
        """A keep-alive or leave for a user the backplane says is (or was) present,
        with the context stored when they joined (or the local one)."""
        route: Any = self.cfg.upstream.keepalive
        if name == "leave":
            route = self.cfg.upstream.commands.get("leave")
            session.refresh.set()
        if route is None:
            return
        if stored is None:
            await self._user_request(session, user, name, route)
            return
        params = stored.get("params")
        headers = stored.get("headers")
        await self._user_request(
            session, user, name, route,
            _UserContext(
                str(stored.get("client", "")),
                params if isinstance(params, dict) else {},
                headers if isinstance(headers, dict) else {},
            ),
        )  # fmt: skip

    async def _user_request(
        self, session: Session, user: str, name: str, route: Any,
        ctx_user: _UserContext | None = None,
    ) -> None:  # fmt: skip
        if ctx_user is None:
            ctx_user = session.users.get(user)
        params: Mapping[str, str] = ctx_user.params if ctx_user else {}
        headers: Mapping[str, str] = ctx_user.headers if ctx_user else {}
        client = ctx_user.client_id if ctx_user else ""
        try:
            await self.upstream.request(
                name, route, self._ctx(session.id, user, client, params, {}), headers
            )
        except (UpstreamError, MissingValue) as exc:
            log.warning("%s for a user of session %s failed: %s", name, session.id, exc)

    async def _keepalive(self, session: Session, user: str) -> None:
        route = self.cfg.upstream.keepalive
        if route is not None:
            await self._user_request(session, user, "keepalive", route)

    async def send_leave(self, session: Session, user: str) -> None:
        route = self.cfg.upstream.commands.get("leave")
        try:
            if route is not None:
                await self._user_request(session, user, "leave", route)
        finally:
            if not session.hub.presence.is_present(user):
                session.users.pop(user, None)
            session.refresh.set()

    def drop_if_idle(self, session: Session) -> None:
        """Forget a session nobody uses any more (its log goes; the next one has a new epoch)."""
        if (
            session.hub.idle
            and not session.conns
            and session.inflight == 0
            and not session.joining
            and not session.background
            and self.sessions.get(session.id) is session
            and not self.backplane.keep(session)
        ):
            del self.sessions[session.id]
            self.timers.cancel(("session", session.id))
            if session.poller is not None:
                session.poller.cancel()
            self.backplane.closed(session)
            self._update_gauges()

    # ------------------------------------------------------------------ upstream state
    async def _poll_loop(self, session: Session) -> None:
        """One poller per session while it has live clients (on the instance holding
        its lease, with a shared backplane)."""
        every = self.cfg.upstream.state.every
        while self.sessions.get(session.id) is session and self.backplane.owns(session):
            session.refresh.clear()
            await self.poll_once(session)
            delay = every if session.poll_failures == 0 else min(
                30.0, every * 2 ** min(session.poll_failures, 5)
            )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.refresh.wait(), delay)

    async def poll_once(self, session: Session) -> None:
        try:
            result = await self.upstream.fetch_state(
                session.id, session.etag, session.last_modified
            )
        except UpstreamError as exc:
            session.poll_failures += 1
            self.metrics.state_polls.labels("error").inc()
            log.warning("state poll of session %s failed: %s", session.id, exc)
            return
        except Exception:
            session.poll_failures += 1
            self.metrics.state_polls.labels("error").inc()
            log.exception("state poll of session %s failed", session.id)
            return
        session.poll_failures = 0
        if not result.changed:
            self.metrics.state_polls.labels("not_modified").inc()
            return
        try:
            seq = await self.publish_state(session, result.payload, "poll", time.monotonic())
        except BackplaneUnavailable as exc:
            # Not published: the next poll (at the usual pace: the upstream is
            # fine) fetches the whole state again.
            self.metrics.state_polls.labels("error").inc()
            if not session.unpublished:
                log.warning("state of session %s not published (until it is): %s", session.id, exc)
            session.unpublished = True
            return
        if session.unpublished:
            log.info("state of session %s published again", session.id)
            session.unpublished = False
        session.etag, session.last_modified = result.etag, result.last_modified
        self.metrics.state_polls.labels("unchanged" if seq is None else "changed").inc()

    # ------------------------------------------------------------------ gauges
    def _update_gauges(self) -> None:
        self.metrics.sessions.set(len(self.sessions))
        self.metrics.present_users.set(
            sum(len(s.hub.presence.online()) for s in self.sessions.values())
        )

    def count_wire(self, transport: str) -> Callable[[int, int], None]:
        """A counter of (encoded, sent) bytes for answers over ``transport``."""
        encoded = self.metrics.wire_bytes.labels(transport, "encoded")
        sent = self.metrics.wire_bytes.labels(transport, "sent")

        def count(before: int, after: int) -> None:
            encoded.inc(before)
            sent.inc(after)

        return count

    def refresh_scrape_gauges(self) -> None:
        """Gauges that are cheaper to compute at scrape time than on every change."""
        self.metrics.replay_entries.set(sum(len(s.hub.log) for s in self.sessions.values()))
