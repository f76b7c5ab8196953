"""Client messages: answered at once (control messages, refusals) or forwarded upstream.

Two ways in, one pipeline:

- a stream transport's reader calls :meth:`Commands.receive` for every frame.
  It never waits (style.md, 17: reading never waits for work): control
  messages are answered, refusals acked, and commands go to the connection's
  inbox, which one worker task of the connection forwards in arrival order
  (also after the transport closed: what was read is never dropped).
  The inbox is bounded (``MAX_INBOX``; past it: ``rate_limited``), so pongs and
  other frames are still read while a command is upstream;
- ``POST paths.messages`` awaits :meth:`Commands.handle_message` per message.

De-duplication (protocol.md, "Commands"): on (sessionId, userId, id) for
``dedupe.window``. The first sight of an id registers it *and* its pending
future in one synchronous step, so a repeat arriving while it is upstream
always finds the future and waits for the same ack. Every way out of the
forwarding settles it: the ack, or — cancelled — an ``upstream_unavailable``
ack for the repeats and a forgotten id, so the client's retry is forwarded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from ..backplane import Backplane
from ..backplane.base import SharedDone
from ..config import Config, Route
from ..core.dedupe import Done, Pending
from ..core.ratelimit import TokenBucket
from ..exceptions import CircuitOpen, ProtocolError, RenderError, UpstreamError
from ..metrics import Metrics, type_label
from ..protocol import messages as m
from ..protocol.normalise import normalise
from ..protocol.types import Command, Message
from ..upstream.client import Response, UpstreamClient
from .connection import Connection
from .heartbeats import Heartbeats
from .membership import Membership, context_of
from .session import Session
from .sessions import Sessions

log = logging.getLogger("bridge.runtime")

#: commands of one connection waiting behind the one upstream (its inbox)
MAX_INBOX = 64
#: commands held while the upstream breaker is open, per session
MAX_HELD_PER_SESSION = 100


class Commands:
    def __init__(
        self,
        cfg: Config,
        metrics: Metrics,
        upstream: UpstreamClient,
        backplane: Backplane,
        sessions: Sessions,
        membership: Membership,
        heartbeats: Heartbeats,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.upstream = upstream
        self.backplane = backplane
        self.sessions = sessions
        self.membership = membership
        self.heartbeats = heartbeats
        self.names = frozenset(cfg.upstream.commands)
        #: draining: new commands are neither forwarded nor acked (clients keep them)
        self.drained = False

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.names = frozenset(cfg.upstream.commands)

    # ------------------------------------------------------------------ the way in
    def receive(self, conn: Connection, data: bytes | str) -> None:
        """One inbound frame of a stream connection. Never waits."""
        conn.last_rx = time.monotonic()
        decoded = conn.codec.decode(data)
        if isinstance(decoded, ProtocolError):
            self.metrics.messages.labels("in", "invalid", conn.codec.name).inc()
            conn.send(m.error(decoded.code, decoded.message))
            return
        out = self._check(conn, decoded)
        if not isinstance(out, Command):
            return
        inbox = conn.inbox
        if len(inbox) >= MAX_INBOX:
            self.metrics.rate_limited.labels(conn.transport).inc()
            conn.send(m.failure("rate_limited", f"over {MAX_INBOX} commands waiting", out.id))
            return
        inbox.append(out)
        if len(inbox) == 1:  # the worker keeps its command in the inbox until done
            conn.tasks.spawn(self._work(conn), "forwarding commands")

    async def _work(self, conn: Connection) -> None:
        """The connection's worker: its inbox in order, one command upstream at a time.

        Every command read is forwarded, also once the transport has closed (a
        client that sends a vote and a leave and goes): its ack then stays in
        the de-dupe window for the client's retry."""
        inbox = conn.inbox
        try:
            while inbox:
                try:
                    await self.command(conn, inbox[0])
                except Exception:  # a bug of ours: this client is closed, the rest go on
                    log.exception("a command of a client of session %s failed", conn.session_id)
                    conn.close(1011, "internal error", "internal_error")
                    break
                finally:
                    if inbox:
                        del inbox[0]
        finally:
            inbox.clear()  # cancelled: never forwarded, so the client sends them again

    async def handle_message(self, conn: Connection, raw: object) -> Message | None:
        """Process one decoded client message; returns its ack (if it has an id)."""
        out = self._check(conn, raw)
        if isinstance(out, Command):
            return await self.command(conn, out)
        return out

    def _check(self, conn: Connection, raw: object) -> Command | Message | None:
        """Everything decided without waiting: a Command to forward, or the reply
        already sent (returned when it is an ack), or None."""
        cmd = normalise(raw, conn.session_id, conn.user_id)
        if isinstance(cmd, ProtocolError):
            self.metrics.messages.labels("in", "invalid", conn.codec.name).inc()
            return self._refuse(conn, m.failure(cmd.code, cmd.message, cmd.id))
        self.metrics.messages.labels("in", type_label(cmd.type, self.names), conn.codec.name).inc()
        if cmd.type == "heartbeat":
            conn.send(m.heartbeat(int(time.time() * 1000)))
            return None
        if cmd.type == "pong":
            self.heartbeats.observe_rtt(cmd.payload.get("ts"))
            return None
        if cmd.type == "ping":
            conn.send({"type": "pong", "ts": cmd.payload.get("ts")})
            return None
        if self.drained:
            # Draining: not forwarded and not acked, so the client keeps it in its
            # outbox and sends it to the next instance (whose de-dupe window is new).
            return None
        if cmd.type not in self.cfg.upstream.commands:
            return self._refuse(
                conn, m.failure("unknown_type", f"unknown message type {cmd.type!r}", cmd.id)
            )
        session = self.sessions.get(conn.session_id)
        if session is None:  # pragma: no cover - a live connection always has its session
            return None
        now = time.monotonic()
        bucket = self._bucket(session, conn.client_id, now)
        if not bucket.take(now):
            # Refused before forwarding: acked with the error (so outboxes release it),
            # not remembered by the de-dupe window (a later retry goes through).
            self.metrics.rate_limited.labels(conn.transport).inc()
            rate = self.cfg.limits.commands_per_second
            reply = m.failure("rate_limited", f"over {rate:g} commands a second; retry in "
                              f"{bucket.retry_after():.2f}s", cmd.id)  # fmt: skip
            return self._refuse(conn, reply)
        return cmd

    @staticmethod
    def _refuse(conn: Connection, reply: Message) -> Message | None:
        conn.send(reply)
        return reply if reply["type"] == "ack" else None

    def _bucket(self, session: Session, client_id: str, now: float) -> TokenBucket:
        """The client's commands_per_second bucket. Buckets of clients gone from the
        session that have refilled (the same as new ones) are forgotten, so a long
        session keeps about as many as it has clients."""
        buckets = session.buckets
        bucket = buckets.get(client_id)
        if bucket is None:
            if len(buckets) >= 2 * len(session.conns) + 16:
                for cid, b in list(buckets.items()):
                    if cid not in session.conns and b.full(now):
                        del buckets[cid]
            rate = self.cfg.limits.commands_per_second
            bucket = buckets[client_id] = TokenBucket(rate, max(5.0, 2 * rate), now)
        return bucket

    # ------------------------------------------------------------------ forwarding
    async def command(self, conn: Connection, cmd: Command) -> Message | None:
        session = self.sessions.get(conn.session_id)
        if session is None or self.drained:
            return None
        route = self.cfg.upstream.commands.get(cmd.type)
        if route is None:  # unmapped by a reload meanwhile
            return self._refuse(
                conn, m.failure("unknown_type", f"unknown message type {cmd.type!r}", cmd.id)
            )
        if cmd.id is None:
            ack = await self._forward(session, conn, cmd, route)
            if ack["status"] != "ok":
                conn.send(m.error(ack["error"]["code"], ack["error"]["message"]))
            return None
        local = session.hub.command(conn.user_id, cmd.id, time.monotonic())
        if isinstance(local, Done | Pending):
            # A repeat (same user, same id): answered with the original ack, once known.
            self.metrics.dedupe_hits.inc()
            if isinstance(local, Done):
                ack = local.ack
            else:
                waiting = session.pending.get((conn.user_id, cmd.id))
                ack = (
                    await asyncio.shield(waiting)
                    if waiting is not None
                    else m.ack_error(cmd.id, "upstream_unavailable", "in flight; send it again")
                )
        else:
            ack = await self._first(session, conn, cmd, cmd.id, route)
        if not conn.closed:
            conn.send(ack)
        return ack

    async def _first(
        self, session: Session, conn: Connection, cmd: Command, cid: str, route: Route
    ) -> Message:
        """The first sight of a command id here: forwarded unless another instance has it."""
        user = conn.user_id
        key = (user, cid)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        session.pending[key] = fut  # in the same step as the hub's record (see above)
        shared: Any = None
        try:
            try:
                shared = await self.backplane.begin_command(session, user, cid)
                if isinstance(shared, SharedDone):
                    self.metrics.dedupe_hits.inc()
                    ack = shared.ack
                else:
                    ack = await self._forward(session, conn, cmd, route)
            except BaseException:  # cancelled (shutdown, a dropped client): outcome unknown
                session.hub.command_abandoned(user, cid)
                self.backplane.abandon_command(session, user, cid)
                fut.set_result(
                    m.ack_error(cid, "upstream_unavailable", "interrupted; send it again")
                )
                raise
            session.hub.command_done(user, cid, ack, time.monotonic())
            fut.set_result(ack)
        finally:
            session.pending.pop(key, None)
            self.sessions.drop_if_idle(session)
        if self.backplane.shared and not isinstance(shared, SharedDone):
            session.tasks.spawn(
                self.backplane.finish_command(session, user, cid, ack), "storing an ack"
            )
        return ack

    async def _forward(
        self, session: Session, conn: Connection, cmd: Command, route: Route
    ) -> Message:
        cid = cmd.id or ""
        session.inflight += 1
        try:
            async with self.membership.slot(session):
                # what other instances captured up to the request before this one
                await self.membership.load_context(session, conn.user_id)
                ctx = context_of(session, conn.user_id, conn.client_id, conn.params, cmd.payload)
                resp = await self._request_or_hold(session, cmd.type, route, ctx, conn.headers)
                self.membership.commanded(session, conn.user_id)
                await self.membership.remember(session, conn.user_id, resp.captured)
        except RenderError as exc:
            return m.ack_error(cid, "bad_message", str(exc))
        except UpstreamError as exc:
            return m.ack_error(cid, exc.code, exc.message)
        except Exception as exc:  # a bug of ours: logged, and the client still gets its ack
            log.exception("forwarding %s failed", cmd.type)
            return m.ack_error(cid, "upstream_error", f"{type(exc).__name__}")
        finally:
            session.inflight -= 1
            self.sessions.drop_if_idle(session)
        if cmd.type == "leave":
            await self.membership.left(session, conn.user_id)
        elif cmd.type == "join":
            self.membership.rejoined(session, conn.user_id)
        session.refresh.set()
        return m.ack_ok(cid)

    async def _request_or_hold(
        self, session: Session, name: str, route: Route, ctx: dict[str, Any],
        headers: Mapping[str, str],
    ) -> Response:  # fmt: skip
        """Send a command; while the breaker is open, hold it (a bounded number per
        session, for upstream.hold at most) and send it when the breaker lets a
        request through. Raises CircuitOpen when it cannot wait any longer."""
        deadline = time.monotonic() + self.cfg.upstream.hold
        held = False
        try:
            while True:
                try:
                    return await self.upstream.request(name, route, ctx, headers)
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
