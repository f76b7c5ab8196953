"""The sessions this instance serves: created on a first connect, dropped when idle.

- :meth:`Sessions.attach` registers an admitted connection: welcome, backlog,
  then the live stream, in one synchronous step (nothing can be broadcast in
  between, so the client misses nothing and sees no seq twice);
- :meth:`Sessions.detach` ends it (the user's grace starts if it was their last);
- :meth:`Sessions.drop_if_idle` forgets a session nobody uses any more: no
  client, nobody present, no handshake admitted, no command upstream, no task
  that must finish, and the backplane does not keep it. Its log goes (the next
  one has a new epoch); its de-dupe window is kept until its acks expire, so a
  command retried after the drop is answered, never applied twice.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from ..backplane import Backplane
from ..config import Config
from ..core.dedupe import Dedupe
from ..core.hub import HubSettings, SessionHub
from ..core.replay import Reset
from ..exceptions import Unauthorized
from ..metrics import Metrics
from ..protocol import messages as m
from ..protocol import tokens
from ..protocol.types import ClientId, Message, SessionId, UserId
from ..tasks import TaskOwner
from .connection import TRANSPORTS, Connection, ConnectRequest
from .fanout import Fanout
from .history import History
from .session import Session, UserContext
from .ticker import Ticker

log = logging.getLogger("bridge.runtime")


class Tokens:
    """Resume tokens signed with ``security.token_secret`` (protocol.md, "Identity")."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        secret = cfg.security.token_secret
        if not secret:
            log.warning(
                "security.token_secret is not set: a random secret is used, so after a "
                "restart (or on another instance) no client can resume: each one connects "
                "afresh (welcome resumed=false, the latest state, its unacked commands sent "
                "again) instead of picking up where it was. Set security.token_secret (the "
                "same on every instance) to keep resumes across restarts."
            )
            secret = secrets.token_hex(32)
        self.secret = secret.encode("utf-8")

    def authenticate(self, req: ConnectRequest) -> tuple[str, bool] | Unauthorized:
        """The client id (from the token, or new) and whether it was resumed by token."""
        if req.token is None:
            return secrets.token_urlsafe(12), False
        claims = tokens.verify(
            self.secret, req.token, now=time.time(), session_id=req.session_id,
            user_id=req.user_id,
        )  # fmt: skip
        if isinstance(claims, Unauthorized):
            return claims
        return claims.client_id, True

    def issue(self, client_id: str, session_id: str, user_id: str) -> str:
        claims = tokens.TokenClaims(
            client_id=ClientId(client_id),
            session_id=SessionId(session_id),
            user_id=UserId(user_id),
            expires=int(time.time() + self.cfg.security.token_ttl),
        )
        return tokens.issue(self.secret, claims)


def hub_settings(cfg: Config, shared: bool) -> HubSettings:
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


class Sessions:
    def __init__(
        self,
        cfg: Config,
        metrics: Metrics,
        backplane: Backplane,
        ticker: Ticker,
        fanout: Fanout,
        tokens_: Tokens,
        count_task_error: Callable[[str], None],
        history: History | None = None,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.backplane = backplane
        #: drains and reconnect waves, for the admin page
        self.history = history or History()
        self.ticker = ticker
        self.fanout = fanout
        self.tokens = tokens_
        self._count = count_task_error
        self.settings = hub_settings(cfg, backplane.shared)
        self.by_id: dict[str, Session] = {}
        #: every open connection of the process
        self.connections: dict[int, Connection] = {}
        #: connections per client address, admitted handshakes included
        self.per_ip: dict[str, int] = {}
        self._conn_ip: dict[int, str] = {}
        #: handshakes admitted and not yet attached (limits.max_connections)
        self.reserved = 0
        #: the de-dupe windows of dropped sessions, until their last ack expires: a
        #: client's retry after its session was dropped is still answered, not applied again
        #: (in the order they were dropped, so in the order they expire)
        self.parked: dict[str, tuple[Dedupe, float]] = {}

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.settings = hub_settings(cfg, self.backplane.shared)
        for session in self.by_id.values():
            session.gate.resize(cfg.upstream.session_concurrency)

    def get(self, session_id: str) -> Session | None:
        return self.by_id.get(session_id)

    def session(self, session_id: str) -> Session:
        """The session, created (with a new epoch) if this instance has none."""
        session = self.by_id.get(session_id)
        if session is None:
            hub = SessionHub(session_id, secrets.token_urlsafe(9), self.settings)
            parked = self.parked.pop(session_id, None)
            if parked is not None:
                hub.dedupe = parked[0]
            tasks = TaskOwner("session", about=f"session {session_id}", count=self._count)
            session = Session(session_id, hub, tasks)
            session.gate.resize(self.cfg.upstream.session_concurrency)
            tasks.on_idle = lambda: self.drop_if_idle(session)
            self.by_id[session_id] = session
            self.metrics.sessions.set(len(self.by_id))
        return session

    def drop_if_idle(self, session: Session) -> None:
        """Forget a session nobody uses any more (its log goes; the next one has a new epoch)."""
        if (
            session.hub.idle
            and not session.conns
            and session.reserved == 0
            and session.inflight == 0
            and not session.joining
            and not session.pending
            and not session.tasks.busy
            and self.by_id.get(session.id) is session
            and time.monotonic() >= session.followed_until
            and not self.backplane.keep(session)
        ):
            del self.by_id[session.id]
            self._park(session)
            self.ticker.cancel(("session", session.id))
            session.tasks.cancel()  # the poller (nothing else runs: not busy)
            session.poller = None
            self.backplane.closed(session)
            self.update_gauges()

    def _park(self, session: Session) -> None:
        now = time.monotonic()
        while self.parked:  # the oldest first: each expires one window after its drop
            sid = next(iter(self.parked))
            if self.parked[sid][1] > now:
                break
            del self.parked[sid]
        dedupe = session.hub.dedupe
        dedupe.expire(now)
        if len(dedupe):
            self.parked[session.id] = (dedupe, now + dedupe.window)

    def schedule(self, session: Session) -> None:
        """Set the session's presence timer to its hub's next deadline."""
        deadline = session.hub.next_deadline()
        if deadline is not None:
            self.ticker.schedule(("session", session.id), deadline)
        else:
            self.ticker.cancel(("session", session.id))
        self.drop_if_idle(session)

    # ------------------------------------------------------------------ attach / detach
    def attach(self, session: Session, conn: Connection, req: ConnectRequest, by_token: bool,
               ip: str) -> None:  # fmt: skip
        """Register a connection: welcome, then its backlog, then the live stream.

        Synchronous on purpose: nothing can be broadcast between the backlog
        and the registration, so the client misses nothing and sees no seq twice.
        The caller (an admission) already counted it under the limits."""
        now = time.monotonic()
        previous = session.conns.get(conn.client_id)
        session.conns[conn.client_id] = conn
        self.connections[id(conn)] = conn
        self._conn_ip[id(conn)] = ip
        session.users[conn.user_id] = UserContext(conn.client_id, conn.params, conn.headers)
        self.metrics.connections_active.labels(conn.transport).inc()
        try:
            if previous is not None and previous is not conn:
                previous.close(1000, "replaced by a newer connection of this client")
            attached = session.hub.attach(
                conn.client_id, conn.user_id, req.epoch, req.last_seq, now
            )
            resumed = not isinstance(attached.backlog, Reset)
            conn.start(
                self.welcome(session, conn, resumed, attached.head), attached.backlog.entries
            )
            self.history.connected(resumed)
        except BaseException:
            # all or nothing: a transport that cannot start leaves no slot, count
            # or presence behind (its user's grace starts, as for any client gone)
            log.exception("starting a %s client of session %s failed", conn.transport, session.id)
            conn.closed = True
            self.detach(conn, "internal_error")
            raise
        if req.epoch is not None and req.last_seq is not None and by_token:
            self.metrics.resumes.labels("resumed" if resumed else "reset").inc()
        if req.previous is not None and req.previous != conn.transport:
            self.metrics.transport_switches.labels(req.previous, conn.transport).inc()
        self.metrics.connections_opened.labels(conn.transport).inc()
        if attached.presence is not None:
            self.fanout.broadcast(session, attached.presence)
        self.update_gauges()
        self.schedule(session)
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
            resume_token=self.tokens.issue(conn.client_id, session.id, conn.user_id),
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
            context=session.values.get(conn.user_id) or None,
        )

    def detach(self, conn: Connection, reason: str) -> None:
        """The transport ended. Starts the user's grace if it was their last client."""
        if self.connections.pop(id(conn), None) is None:
            return
        self.release_ip(self._conn_ip.pop(id(conn), "unknown"))
        self.metrics.connections_active.labels(conn.transport).dec()
        self.metrics.connections_closed.labels(conn.transport, reason).inc()
        session = self.by_id.get(conn.session_id)
        if session is None or session.conns.get(conn.client_id) is not conn:
            return
        del session.conns[conn.client_id]
        session.hub.detach(conn.client_id, time.monotonic())
        user = conn.user_id
        if not session.hub.presence.is_present(user) and not any(
            c.user_id == user for c in session.conns.values()
        ):  # gone after an explicit leave: no grace, nothing of theirs is kept
            session.users.pop(user, None)
            session.values.pop(user, None)
        self.schedule(session)
        if self.cfg.logging.debug:
            log.info(
                "disconnect transport=%s session=%s user=%s client=%s reason=%s",
                conn.transport, session.id, conn.user_id, conn.client_id, reason,
            )  # fmt: skip

    def release_ip(self, ip: str) -> None:
        left = self.per_ip.get(ip, 1) - 1
        if left > 0:
            self.per_ip[ip] = left
        else:
            self.per_ip.pop(ip, None)

    def resume_all(self, session: Session, reason: str) -> None:
        """The session's log changed under its clients here (a new epoch): they
        reconnect and resume, which gives them a reset and the latest state."""
        notice = m.reconnect(0.2 + secrets.randbelow(800) / 1000, reason)
        for conn in list(session.conns.values()):
            conn.send(notice)
            conn.close(1012, "session log reloaded", "resync")

    # ------------------------------------------------------------------ gauges
    def update_gauges(self) -> None:
        self.metrics.sessions.set(len(self.by_id))
        self.metrics.present_users.set(
            sum(len(s.hub.presence.online()) for s in self.by_id.values())
        )
