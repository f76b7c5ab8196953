"""The composition: one :class:`Bridge` per process wires the runtime's parts.

Data flow, and the module that does each step::

    transport ─► admission ─► sessions.attach ─► (welcome, backlog, live stream)
        │            └─ membership.ensure_joined (the upstream join)
        ├─ frames ─► commands ─► upstream (de-duped, acked)
        └─ pongs  ─► heartbeats
    poller ─► backplane.publish_state ─► fanout.broadcast ─► every connection
    ticker ─► heartbeats (pings, 4408) · membership.tick (keep-alives, graces)
    backplane ─► events (its reports, carried out by the parts above)

The transports talk to this class only; it holds no logic of its own beyond
the process' lifecycle (start, drain, stop, reload).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from ..backplane import Backplane, make_backplane
from ..config import Config
from ..exceptions import BackplaneUnavailable, Unauthorized
from ..metrics import Metrics
from ..protocol import messages as m
from ..protocol.types import Message
from ..tasks import TaskOwner
from ..upstream.client import UpstreamClient
from .admission import Admission, Admitter, Refusal
from .commands import Commands
from .connection import Connection, ConnectRequest
from .events import BackplaneEvents
from .fanout import Fanout
from .heartbeats import Heartbeats
from .history import History
from .membership import Membership
from .poller import Poller, Who
from .session import Session
from .sessions import Sessions, Tokens
from .ticker import Ticker

log = logging.getLogger("bridge.runtime")

#: state.intercept: a session the app's own frontend polls is kept this many
#: state.every after its last such poll
FOLLOW_FOR = 5


class Bridge:
    """One per process: every session this instance serves."""

    def __init__(self, cfg: Config, upstream: UpstreamClient, metrics: Metrics) -> None:
        self._cfg = cfg
        self.upstream = upstream
        self.metrics = metrics
        # one bound method for every owner (a connection keeps a reference to it)
        self.count_task_error: Callable[[str], None] = self._count_task_error
        self.tasks = TaskOwner("bridge", count=self.count_task_error)
        #: drains and reconnect waves, for the admin page
        self.history = History()
        self.started_at = time.time()
        self.ticker = Ticker()
        self.ticker.on("flush", self._flush_held)
        self.ticker.on("follow", self._follow_over)
        self.tokens = Tokens(cfg)
        events = BackplaneEvents()
        self.backplane: Backplane = make_backplane(cfg, metrics, events)
        self.fanout = Fanout(metrics)
        self.heartbeats = Heartbeats(cfg, self.ticker, metrics)
        self.registry = Sessions(
            cfg, metrics, self.backplane, self.ticker, self.fanout, self.tokens,
            self.count_task_error, self.history,
        )  # fmt: skip
        self.membership = Membership(cfg, upstream, self.backplane, self.registry, self.fanout)
        self.poller = Poller(cfg, metrics, upstream, self.backplane, self.registry)
        self.commands = Commands(
            cfg, metrics, upstream, self.backplane, self.registry, self.membership,
            self.heartbeats,
        )  # fmt: skip
        self.admitter = Admitter(cfg, self.registry, self.backplane, self.membership, self.poller)
        events.bind(self.registry, self.fanout, self.poller, self.membership)

    def _count_task_error(self, owner: str) -> None:
        """Counts a task's exception (the tasks' owners call it; see bridge/tasks.py)."""
        self.metrics.task_errors.labels(owner).inc()

    # ------------------------------------------------------------------ configuration
    @property
    def cfg(self) -> Config:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: Config) -> None:
        """A new configuration for every part (see :meth:`reload`)."""
        self._cfg = cfg
        self.tokens.cfg = cfg
        self.heartbeats.cfg = cfg
        self.membership.cfg = cfg
        self.poller.cfg = cfg
        self.admitter.cfg = cfg
        self.registry.reconfigure(cfg)
        self.commands.reconfigure(cfg)
        self.backplane.reconfigure(cfg)

    def reload(self, cfg: Config) -> list[str]:
        """Apply a new configuration to what can change while running; returns the
        keys that only take effect after a restart (listen, paths, backplane)."""
        fixed = ("listen", "paths", "backplane")
        needs_restart = [key for key in fixed if getattr(cfg, key) != getattr(self._cfg, key)]
        self.cfg = cfg
        self.upstream.reconfigure(cfg.upstream, cfg.base_dir)
        return needs_restart

    # ------------------------------------------------------------------ what transports use
    @property
    def sessions(self) -> dict[str, Session]:
        return self.registry.by_id

    @property
    def connections(self) -> dict[int, Connection]:
        return self.registry.connections

    @property
    def per_ip(self) -> dict[str, int]:
        return self.registry.per_ip

    @property
    def closing(self) -> bool:
        return self.admitter.closing

    @property
    def drained(self) -> bool:
        return self.commands.drained

    @property
    def secret(self) -> bytes:
        """The resume-token key (security.token_secret)."""
        return self.tokens.secret

    def authenticate(self, req: ConnectRequest) -> tuple[str, bool] | Unauthorized:
        return self.tokens.authenticate(req)

    async def admit(self, req: ConnectRequest, ip: str) -> Admission | Refusal:
        return await self.admitter.admit(req, ip)

    def session(self, session_id: str) -> Session:
        return self.registry.session(session_id)

    async def follow(self, session_id: str) -> Session | Literal["unknown", "unsure", "off"]:
        """state.intercept: the app's own frontend polls this session. It is kept,
        with its one poller, for FOLLOW_FOR × state.every after the last such poll.
        Else why not: ``unknown`` (the app says there is no such session, or it
        is gone there), ``unsure`` (the app gave no answer to the first fetch: an
        error, a timeout, the queue to it full), ``off`` (draining, or the shared
        backplane unreachable). A session not kept is not kept at all."""
        if self.closing:
            return "off"
        session = self.registry.session(session_id)
        new = session.followed_until == 0.0 and not session.conns
        # kept while the app is asked (nothing drops it meanwhile)
        session.followed_until = time.monotonic() + FOLLOW_FOR * self.cfg.upstream.state.every
        known: Literal["known", "unknown", "unsure", "off"]
        try:
            await self.backplane.open(session)
            known = await self.poller.first_answer(session, Who("", "", {}, {}))  # shared
        except BackplaneUnavailable:
            known = "off"
        if known == "known" and session.gone and not session.conns:
            known = "unknown"  # deleted at the app since: polls go to the app again
        if known != "known":
            if not session.conns:
                session.followed_until = 0.0
                session.checked = None  # asked again next time
                self.registry.drop_if_idle(session)
            return known
        session.followed_until = time.monotonic() + FOLLOW_FOR * self.cfg.upstream.state.every
        self.ticker.schedule(("follow", session_id), session.followed_until)
        if session.copy is None and not new and not session.copy_asked:
            # polled already (for its clients), with 304s: ask for the whole answer once
            session.copy_asked = True
            session.etag = session.last_modified = None
            session.refresh.set()
        self.poller.start(session)
        return session

    def _follow_over(self, session_id: str, now: float) -> None:
        session = self.registry.get(session_id)
        if session is not None:
            self.registry.drop_if_idle(session)

    def drop_if_idle(self, session: Session) -> None:
        self.registry.drop_if_idle(session)

    def detach(self, conn: Connection, reason: str) -> None:
        self.registry.detach(conn, reason)

    def welcome(self, session: Session, conn: Connection, resumed: bool, head: int) -> Message:
        return self.registry.welcome(session, conn, resumed, head)

    def watch(self, conn: Connection) -> None:
        self.heartbeats.watch(conn)

    def unwatch(self, conn: Connection) -> None:
        self.heartbeats.unwatch(conn)

    def pong(self, conn: Connection, data: str) -> None:
        self.heartbeats.pong(conn, data)

    def receive(self, conn: Connection, data: bytes | str) -> None:
        self.commands.receive(conn, data)

    async def handle_message(self, conn: Connection, raw: object) -> Message | None:
        return await self.commands.handle_message(conn, raw)

    def schedule(self, key: tuple[str, Any], when: float) -> None:
        self.ticker.schedule(key, when)

    def _flush_held(self, conn: Any, now: float) -> None:
        again = conn.flush_held(now)
        if again is not None:
            self.ticker.schedule(("flush", conn), again)

    async def publish_state(
        self, session: Session, payload: Any, source: str, seen_at: float
    ) -> int | None:
        """State pushed or polled; raises UpstreamUnreadable (a value no codec can
        carry) or BackplaneUnavailable."""
        self.poller.check_value(payload)
        return await self.poller.publish_state(session, payload, source, seen_at)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.tasks.spawn(self.ticker.run(), "timers")

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
        if self.commands.drained:
            return
        self.commands.drained = True
        self.admitter.closing = True
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline and any(s.inflight for s in self.sessions.values()):
            await asyncio.sleep(0.02)
        retry_after = max(0.5, min(2.0, timeout / 4))
        notice = m.reconnect(retry_after, "draining")
        conns = list(self.connections.values())
        entry = self.history.drain_started(len(conns))
        log.info("draining %d connections (retry_after %.1fs)", len(conns), retry_after)
        for conn in conns:
            conn.send(notice)
            conn.close(1012, "server restarting", "drain")
        while time.monotonic() < deadline and any(not _gone(c) for c in self.connections.values()):
            await asyncio.sleep(0.02)
        self.history.drain_ended(entry, len(self.connections))
        log.info(
            "drained in %.2fs; %d connections left", time.monotonic() - started,
            len(self.connections),
        )  # fmt: skip

    async def close_all(self, code: int, reason: str, timeout: float) -> None:
        """Close every connection and wait (up to ``timeout``) for their handlers to end."""
        self.admitter.closing = True
        for conn in list(self.connections.values()):
            conn.close(code, reason)
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Close every connection (1001) and end every task. Sends no leaves."""
        self.admitter.closing = True
        # first: no request of ours starts any more (each one cut short below
        # would otherwise hand its slot to the next, which the app then gets too)
        self.upstream.stop_starting()
        for conn in list(self.connections.values()):
            conn.close(1001, "server shutting down")
        for session in list(self.sessions.values()):
            await session.tasks.aclose()
        await self.tasks.aclose()
        await self.backplane.stop()

    # ------------------------------------------------------------------ metrics
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


def _gone(conn: Connection) -> bool:
    """A poll client waiting for its next poll to carry the notice, that has not
    polled for a while or hung up in the middle of its last one, is not coming
    back: the drain does not wait for it."""
    if not getattr(conn, "lingering", False):
        return False
    return bool(getattr(conn, "vanished", False)) or time.monotonic() - conn.last_rx > 2.0
