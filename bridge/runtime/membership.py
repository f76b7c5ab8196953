"""Membership: who is in a session upstream, and the requests that keep it so.

- a user's first client makes the upstream ``join`` (once, on any instance:
  :meth:`Membership.ensure_joined`); later clients of the user wait for it;
- while present, the user is kept alive upstream (``upstream.keepalive``),
  once per user whatever their number of clients;
- when the last client goes the grace starts; when it runs out, one ``leave``
  (on the instance the backplane picks); an explicit ``leave`` ends it at once.

A join is part of an admission (``admission.py``): when the handshake fails
after the join succeeded, the user is handed to the grace like a client that
connected and went (:meth:`Membership.hold`), so the app gets its leave; a join
whose outcome is unknown (cancelled in flight, a timeout, a 5xx) is forgotten
at once (the next connect joins again) and undone with a leave one grace
later, so the leave cannot overtake a join the app was still working on.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Literal

from ..backplane import Backplane
from ..config import Config
from ..exceptions import (
    BackplaneUnavailable,
    JoinRefused,
    RenderError,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from ..upstream.answers import Captured
from ..upstream.client import UpstreamClient
from .connection import ConnectRequest
from .fanout import Fanout
from .session import Joined, Session, UserContext
from .sessions import Sessions

log = logging.getLogger("bridge.runtime")

#: the least an uncertain join is left to land before its undoing leave
UNDO_AFTER_MIN = 0.05


def template_context(
    session_id: str, user_id: str, client_id: str, params: Mapping[str, Any],
    payload: Mapping[str, Any], user: Mapping[str, Any] | None = None,
    shared: Mapping[str, Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """What a route's placeholders are filled from (upstream/templates.py)."""
    return {
        "sessionId": session_id,
        "userId": user_id,
        "clientId": client_id,
        "params": params,
        "payload": payload,
        "user": user or {},
        "session": shared or {},
    }


def context_of(
    session: Session, user_id: str, client_id: str, params: Mapping[str, Any],
    payload: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """A route's placeholders for a user of ``session``, with what was captured."""
    return template_context(
        session.id, user_id, client_id, params, payload, session.values.get(user_id),
        session.shared,
    )  # fmt: skip


def spread(key: str) -> float:
    """A number in [0, 1) from ``key``, the same every time."""
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) / 2**32


def merge_context(
    session: Session, user: str, found: tuple[dict[str, Any], dict[str, Any]] | None
) -> None:
    """Take what the backplane says was captured (``Backplane.context``)."""
    if found is not None:
        values, shared = found
        if values and user:
            session.values.setdefault(user, {}).update(values)
        session.shared.update(shared)


class Membership:
    def __init__(
        self,
        cfg: Config,
        upstream: UpstreamClient,
        backplane: Backplane,
        sessions: Sessions,
        fanout: Fanout,
    ) -> None:
        self.cfg = cfg
        self.upstream = upstream
        self.backplane = backplane
        self.sessions = sessions
        self.fanout = fanout
        sessions.ticker.on("session", self.tick)

    # ------------------------------------------------------------------ join
    async def ensure_joined(
        self, session: Session, user_id: str, client_id: str, req: ConnectRequest
    ) -> Joined:
        """Send the upstream ``join`` for a user's first client (on any instance,
        with a shared backplane). Raises JoinRefused (``uncertain`` when the app
        may have applied it: then it has been undone)."""
        if not session.hub.needs_join(user_id):
            return Joined.NOT_BY_THIS
        pending = session.joining.get(user_id)
        if pending is not None:
            await asyncio.shield(pending)
            return Joined.NOT_BY_THIS  # that client's admission owns the join
        fut: asyncio.Future[Joined] = asyncio.get_running_loop().create_future()
        session.joining[user_id] = fut
        try:
            outcome = await self._join(session, user_id, client_id, req)
        except BaseException as exc:
            refused = exc if isinstance(exc, JoinRefused) else JoinRefused(
                1013, "timeout", "join interrupted", uncertain=True
            )  # fmt: skip
            fut.set_exception(refused)
            fut.exception()  # retrieved: later waiters re-raise it themselves
            raise
        else:
            fut.set_result(outcome)
            return outcome
        finally:
            session.joining.pop(user_id, None)

    async def _join(
        self, session: Session, user_id: str, client_id: str, req: ConnectRequest
    ) -> Joined:
        context = {"client": client_id, "params": req.params, "headers": req.headers}
        try:
            claimed = await self.backplane.claim_user(session, user_id, context)
        except BackplaneUnavailable as exc:
            raise JoinRefused(1013, exc.code, str(exc)) from None
        if not claimed:  # present through another instance: no second join
            await self.load_context(session, user_id)
            return Joined.NOT_BY_THIS
        route = self.cfg.upstream.commands.get("join")
        uncertain = False
        try:
            if route is not None:
                async with self.slot(session):
                    await self.load_context(session, user_id)
                    ctx = context_of(session, user_id, client_id, req.params, {})
                    uncertain = True
                    resp = await self.upstream.request("join", route, ctx, req.headers)
                    uncertain = False
                    await self.remember(session, user_id, resp.captured)
        except BaseException as exc:
            sure_not = isinstance(exc, UpstreamRejected | UpstreamUnavailable | RenderError)
            if uncertain and not sure_not:
                # cancelled in flight, a timeout or a 5xx: the app may have the user
                self._undo_join(session, user_id, UserContext(client_id, req.params, req.headers))
            elif isinstance(exc, Exception):
                await self.backplane.unclaim_user(session, user_id)
            else:  # cancelled before anything was sent: undone on the session's tasks
                session.tasks.spawn(
                    self.backplane.unclaim_user(session, user_id), "unclaiming an interrupted join"
                )
            if isinstance(exc, RenderError):
                raise JoinRefused(4400, "bad_request", f"join: {exc}") from None
            if isinstance(exc, UpstreamRejected):
                if exc.status in (401, 403):
                    raise JoinRefused(4401, "unauthorized", exc.message) from None
                if exc.status == 404:
                    raise JoinRefused(4404, "not_found", exc.message) from None
                raise JoinRefused(4400, "upstream_rejected", exc.message) from None
            if isinstance(exc, UpstreamError):
                raise JoinRefused(1013, exc.code, exc.message, uncertain=uncertain) from None
            raise
        await self.backplane.joined(session, user_id)
        return Joined.BY_THIS

    @asynccontextmanager
    async def slot(self, session: Session) -> AsyncIterator[None]:
        """Held around every command request (join and leave included):
        upstream.session_concurrency of the session's at the app at once, in
        arrival order, here and (with a shared backplane) across instances."""
        async with session.gate.held(), self.backplane.command_slot(session):
            yield

    # ------------------------------------------------------------------ captured values
    async def load_context(self, session: Session, user: str) -> None:
        """With a shared backplane, what other instances captured for the user and
        the session (captures being used at all)."""
        if self.backplane.shared and self.cfg.upstream.uses_captures:
            merge_context(session, user, await self.backplane.context(session, user))

    async def remember(self, session: Session, user: str | None, captured: Captured) -> None:
        """Keep captured values (for every instance, with a shared backplane)."""
        if not captured:
            return
        if captured.user and user is not None:
            session.values.setdefault(user, {}).update(captured.user)
        session.shared.update(captured.session)
        if self.backplane.shared:
            try:
                await self.backplane.remember(
                    session, user, captured.user if user else {}, captured.session
                )
            except BackplaneUnavailable as exc:
                log.warning("captured values of session %s kept here only: %s", session.id, exc)

    def forget(self, session: Session, user: str) -> None:
        """The user is gone: their context goes with them."""
        session.users.pop(user, None)
        session.values.pop(user, None)

    async def unjoin(self, session: Session, user: str) -> None:
        """The join of a session the app then said it does not know: forgotten
        with no leave (there is nothing to leave)."""
        self.forget(session, user)
        await self.backplane.unclaim_user(session, user)

    def _undo_join(self, session: Session, user: str, ctx: UserContext) -> None:
        """A join that may have reached the app (cancelled in flight, a timeout, a
        5xx): the user is forgotten at once, so their next connect joins again; and
        after ``presence.grace`` — long after a join the app was still working on
        has landed, so the leave never overtakes it — they get a leave, unless
        they are present again by then (anywhere)."""

        async def undo() -> None:
            await self.backplane.unclaim_user(session, user)
            await asyncio.sleep(max(self.cfg.presence.grace, UNDO_AFTER_MIN))
            if not await self.backplane.present(session, user):
                await self._user_request(session, user, "leave", ctx)

        session.tasks.spawn(undo(), "undoing an uncertain join")

    def hold(self, session: Session, user: str) -> None:
        """The user's join succeeded but their handshake did not: they are present
        upstream with no client, so their grace starts now (then one leave)."""
        entry = session.hub.hold(user, time.monotonic())
        if entry is not None:
            self.fanout.broadcast(session, entry)
        self.sessions.schedule(session)

    # ------------------------------------------------------------------ presence timers
    def tick(self, session_id: str, now: float) -> None:
        """The session's presence timer: keep-alives due, graces over."""
        session = self.sessions.get(session_id)
        if session is None:
            return
        tick = session.hub.tick(now)
        for user in tick.keepalive:
            self.user_request(session, user, "keepalive", None)
        for user in tick.left:
            if self.backplane.grace_over(session, user):
                self.user_request(session, user, "leave", None)
            elif not session.hub.presence.is_present(user):
                self.forget(session, user)  # another instance sends the leave
        if tick.presence is not None:
            self.fanout.broadcast(session, tick.presence)
        self.sessions.schedule(session)
        self.sessions.update_gauges()

    def rejoined(self, session: Session, user: str) -> None:
        """An explicit ``join`` was forwarded: the user's live clients here make them
        present again (after an explicit leave), so their going gets a leave."""
        now = time.monotonic()
        for conn in list(session.conns.values()):
            if conn.user_id == user:
                entry = session.hub.rejoin(conn.client_id, user, now)
                if entry is not None:
                    self.fanout.broadcast(session, entry)
        self.sessions.schedule(session)

    async def left(self, session: Session, user: str) -> None:
        """An explicit leave was forwarded: the user is gone now, everywhere (and
        what was captured for them with them)."""
        entry = session.hub.leave(user, time.monotonic())
        if entry is not None:
            self.fanout.broadcast(session, entry)
        session.values.pop(user, None)
        if not any(c.user_id == user for c in session.conns.values()):
            session.users.pop(user, None)
        await self.backplane.left(session, user)
        self.sessions.schedule(session)

    def _active(self, session: Session, user: str, every: float) -> bool:
        """keepalive.commands_count: a command of the user reached the app within
        the interval, so it kept them alive already."""
        keepalive = self.cfg.upstream.keepalive
        if keepalive is None or not keepalive.commands_count:
            return False
        last = session.last_command.get(user)
        return last is not None and time.monotonic() - last < every

    def commanded(self, session: Session, user: str) -> None:
        """A command of the user reached the app (and was answered)."""
        session.last_command[user] = time.monotonic()

    # ------------------------------------------------------------------ requests for a user
    def user_request(
        self,
        session: Session,
        user: str,
        name: Literal["leave", "keepalive"],
        stored: Mapping[str, Any] | None,
    ) -> None:
        """Send a keep-alive or leave for a user, on the session's tasks (the session
        is not dropped before it is sent), with the context stored when they
        joined (or the local one)."""
        ctx: UserContext | None = None
        if stored is not None:
            params = stored.get("params")
            headers = stored.get("headers")
            values = stored.get("values")
            ctx = UserContext(
                str(stored.get("client", "")),
                params if isinstance(params, dict) else {},
                headers if isinstance(headers, dict) else {},
            )
            if isinstance(values, dict) and values:
                session.values.setdefault(user, {}).update(values)
        session.tasks.spawn(self._user_request(session, user, name, ctx), f"sending a {name}")

    async def _user_request(
        self, session: Session, user: str, name: str, ctx_user: UserContext | None
    ) -> None:
        route: Any = self.cfg.upstream.keepalive
        if name == "leave":
            route = self.cfg.upstream.commands.get("leave")
        try:
            if route is None:
                return
            if name == "keepalive":
                if self._active(session, user, route.every):
                    return
                # each user's keep-alive goes at a phase of its own within the first
                # half of the interval, the same every time: those of a mass arrival
                # (due together) reach the app spread out, never all at once
                await asyncio.sleep(route.every * 0.5 * spread(f"{session.id}\n{user}"))
                if not session.hub.presence.is_present(user):
                    return  # left while this waited for its phase: the app forgot them
            if ctx_user is None:
                ctx_user = session.users.get(user)
            params: Mapping[str, str] = ctx_user.params if ctx_user else {}
            headers: Mapping[str, str] = ctx_user.headers if ctx_user else {}
            client = ctx_user.client_id if ctx_user else ""
            if name == "leave":
                async with self.slot(session):
                    await self.load_context(session, user)
                    ctx = context_of(session, user, client, params, {})
                    resp = await self.upstream.request(name, route, ctx, headers)
                    await self.remember(session, user, resp.captured)
            else:
                ctx = context_of(session, user, client, params, {})
                resp = await self.upstream.request(name, route, ctx, headers)
                await self.remember(session, user, resp.captured)
        except (UpstreamError, RenderError) as exc:
            log.warning("%s for a user of session %s failed: %s", name, session.id, exc)
        finally:
            if name == "leave":
                if not session.hub.presence.is_present(user):
                    self.forget(session, user)
                session.refresh.set()
