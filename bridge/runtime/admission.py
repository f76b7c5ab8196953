"""Admission: every check a new stream connection passes, the same for every transport.

Rules (style.md, 15: admission is atomic):

1. The limits (``limits.max_connections``, ``max_connections_per_ip``,
   ``max_clients_per_session``) are checked and a slot under each reserved in
   one synchronous step, before the first await; parallel handshakes cannot
   overshoot them.
2. What an admission holds — its slots, the session (kept open while it is
   admitted), the user's upstream join — is released on *every* way out that
   does not end in :meth:`Admission.attach`: a refusal, an error, a
   cancellation (the handshake timeout), a transport that fails to start
   (``ws.prepare()`` raising). Use it as a context manager around the
   transport's start::

       with admission:
           await resp.prepare(request)
           admission.attach(conn)

3. A session the app does not know (its first state fetch answers 404 or 410,
   after the join) is refused 4404 and nothing is kept: no poller, no leave.
4. A join that went through for a handshake that then failed is not undone
   at once: the user is present with no client, so their grace runs and then
   one leave goes upstream (``Membership.hold``), as for a client that came
   and went.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from ..backplane import Backplane
from ..config import Config
from ..exceptions import BackplaneUnavailable, JoinRefused, Unauthorized
from .connection import Connection, ConnectRequest, Identity
from .membership import Membership
from .poller import Poller, Who
from .session import Joined, Session
from .sessions import Sessions

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


class Admission:
    """A handshake that passed every check, holding its slots until it is
    attached (:meth:`attach`) or released (:meth:`release`, or leaving the
    ``with`` block without attaching)."""

    __slots__ = ("_admitter", "req", "session", "client_id", "by_token", "ip", "joined",
                 "_in_session", "_done")  # fmt: skip

    def __init__(
        self, admitter: Admitter, req: ConnectRequest, session: Session, client_id: str,
        by_token: bool, ip: str,
    ) -> None:  # fmt: skip
        self._admitter = admitter
        self.req = req
        self.session = session
        self.client_id = client_id
        self.by_token = by_token
        self.ip = ip
        self.joined = Joined.NOT_BY_THIS
        # a reconnect of a client already here replaces its connection: no new slot
        self._in_session = client_id not in session.conns
        self._done = False
        sessions = admitter.sessions
        sessions.reserved += 1
        sessions.per_ip[ip] = sessions.per_ip.get(ip, 0) + 1
        if self._in_session:
            session.reserved += 1

    @property
    def who(self) -> Identity:
        req = self.req
        return Identity(self.client_id, req.session_id, req.user_id, req.params, req.headers)

    def _unreserve(self) -> bool:
        if self._done:
            return False
        self._done = True
        self._admitter.sessions.reserved -= 1
        if self._in_session:
            self.session.reserved -= 1
        return True

    def attach(self, conn: Connection) -> None:
        """The transport is up: the connection takes over the slots and gets its
        welcome, backlog and the live stream."""
        if not self._unreserve():
            raise RuntimeError("an admission is attached or released only once")
        a = self._admitter
        a.sessions.attach(self.session, conn, self.req, self.by_token, self.ip)
        a.poller.start(self.session)

    def release(self) -> None:
        """Undo the admission (safe to call twice, and after attach: then nothing)."""
        if not self._unreserve():
            return
        a = self._admitter
        a.sessions.release_ip(self.ip)
        if self.joined is Joined.BY_THIS:
            a.membership.hold(self.session, self.req.user_id)
        a.sessions.drop_if_idle(self.session)

    def __enter__(self) -> Admission:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Admitter:
    def __init__(
        self,
        cfg: Config,
        sessions: Sessions,
        backplane: Backplane,
        membership: Membership,
        poller: Poller,
    ) -> None:
        self.cfg = cfg
        self.sessions = sessions
        self.backplane = backplane
        self.membership = membership
        self.poller = poller
        #: draining or stopping: new clients are refused
        self.closing = False

    async def admit(self, req: ConnectRequest, ip: str) -> Admission | Refusal:
        """Limits, resume token, the session (loaded from the backplane), the upstream
        join. Never raises a refusal: returns it. Cancelled: releases everything."""
        if self.closing:
            return Refusal(1012, "draining", "server restarting", "draining")
        limits = self.cfg.limits
        sessions = self.sessions
        if len(sessions.connections) + sessions.reserved >= limits.max_connections:
            return Refusal(1013, "overloaded", "too many connections", "overload")
        if sessions.per_ip.get(ip, 0) >= limits.max_connections_per_ip:
            return Refusal(1013, "overloaded", "too many connections from this address", "per_ip")
        auth = sessions.tokens.authenticate(req)
        if isinstance(auth, Unauthorized):
            return Refusal(auth.close_code, auth.code, auth.message, "unauthorized")
        client_id, by_token = auth
        session = sessions.session(req.session_id)
        if client_id not in session.conns and (
            len(session.conns) + session.reserved >= limits.max_clients_per_session
        ):
            sessions.drop_if_idle(session)
            return Refusal(1013, "session_full", "session is full", "session_full")
        admission = Admission(self, req, session, client_id, by_token, ip)
        try:
            await self.backplane.open(session)
            admission.joined = await self.membership.ensure_joined(
                session, req.user_id, client_id, req
            )
            who = Who(req.user_id, client_id, req.params, req.headers)
            # A user joined elsewhere (another instance, maybe still joining them) says
            # the session exists; a 404 now could be that join not being done yet.
            joined_elsewhere = (
                admission.joined is Joined.NOT_BY_THIS
                and "join" in self.cfg.upstream.commands
                and self.backplane.shared
            )
            if not joined_elsewhere and not await self.poller.check(session, who):
                # the app has no such session: nothing is kept (no poller, no leave)
                if admission.joined is Joined.BY_THIS:
                    admission.joined = Joined.NOT_BY_THIS
                    await self.membership.unjoin(session, req.user_id)
                admission.release()
                return Refusal(4404, "not_found", "no such session", "not_found")
        except BackplaneUnavailable as exc:
            admission.release()
            return Refusal(
                1013, exc.code, "the shared backplane is unreachable; retry", "backplane"
            )
        except JoinRefused as exc:
            admission.release()
            return Refusal(exc.close_code, exc.code, exc.message, "join_refused")
        except BaseException:
            admission.release()
            raise
        return admission
