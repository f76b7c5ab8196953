"""Upstream state: one poller per session with live clients, never one per client.

The poller runs on the instance that owns the session (its backplane says
so), as a task of the session that does not keep it alive. Each round is a
conditional GET; a changed state is published through the backplane (one
seq, encoded once per codec, written to every connection). A command's ack
asks for an immediate round (``session.refresh``).

A round that fails — the app's error, an answer the bridge cannot use, a
state no codec can carry (``protocol/values.py``), the backplane refusing
it — is counted (``bridge_state_polls_total{result="error"}``), logged as a
warning, and backs this session's poller off (doubling up to 30 s); it never
ends the poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..backplane import Backplane
from ..config import Config
from ..exceptions import (
    BackplaneUnavailable,
    RenderError,
    UpstreamError,
    UpstreamRejected,
    UpstreamUnreadable,
)
from ..metrics import Metrics
from ..protocol.values import problem
from ..upstream.client import StateResult, UpstreamClient
from .membership import context_of, merge_context
from .session import Known, PartState, Session
from .sessions import Sessions

log = logging.getLogger("bridge.runtime")

MAX_BACKOFF = 30.0


def copy_etag(raw: bytes) -> str:
    """The ETag the bridge gives its copy of a state answer (state.intercept)."""
    return '"b-' + hashlib.sha1(raw).hexdigest()[:20] + '"'


@dataclass(frozen=True, slots=True)
class Who:
    """The user a state request is sent as (``state.as: present_user``)."""

    user: str
    client: str
    params: Mapping[str, Any]
    headers: Mapping[str, str]


class Poller:
    def __init__(
        self,
        cfg: Config,
        metrics: Metrics,
        upstream: UpstreamClient,
        backplane: Backplane,
        sessions: Sessions,
    ) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.upstream = upstream
        self.backplane = backplane
        self.sessions = sessions

    def start(self, session: Session) -> None:
        """Poll the session if this instance owns it and no poller runs yet."""
        if not self.backplane.owns(session):
            return
        if session.poller is None or session.poller.done():
            session.poller = session.tasks.spawn(
                self._loop(session), "polling the upstream state", keeps_alive=False
            )

    def stop(self, session: Session) -> None:
        if session.poller is not None:
            session.poller.cancel()
            session.poller = None

    def ownership_changed(self, session: Session, owned: bool) -> None:
        """The lease holder polls the upstream for the session; others do not."""
        if owned:
            session.etag = session.last_modified = None  # fetch the whole state once
            self.start(session)
        else:
            self.stop(session)

    def delay(self, session: Session) -> float:
        """How long the poller waits before its next round (backing off after failures)."""
        return self._backoff(session.poll_failures)

    def _backoff(self, failures: int) -> float:
        every = self.cfg.upstream.state.every
        if failures == 0:
            return every
        return min(MAX_BACKOFF, every * 2.0 ** min(failures, 5))

    async def _loop(self, session: Session) -> None:
        """Rounds on a grid of ``state.every`` with a random phase per session, so
        the sessions' polls spread over the interval; a round asked for at once
        (after an acked command) does not move the grid, so sessions never fall
        into step after a burst of commands. After a failure: backing off."""
        every = self.cfg.upstream.state.every
        next_at = time.monotonic() + every * (0.5 + random.random())  # a phase of its own
        while self.sessions.get(session.id) is session and self.backplane.owns(session):
            session.refresh.clear()
            try:
                await self.poll_once(session)
            except Exception:  # a bug of ours: said loudly; the poller goes on, backing off
                log.exception("state poll of session %s failed", session.id)
                self._failed(session, f"state poll of session {session.id} failed")
            now = time.monotonic()
            every = self.cfg.upstream.state.every
            if session.poll_failures:
                next_at = now + self.delay(session)
            elif next_at <= now:
                next_at += every * (1 + (now - next_at) // every)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.refresh.wait(), next_at - now)

    def _user_for(self, session: Session) -> str | None:
        """``as: present_user``: the user whose context the state request takes —
        the one used before while they are present with a client here, else another."""
        user = session.poll_user
        if user is not None and user in session.users and session.is_present(user):
            return user
        for candidate in sorted(session.users_here()):
            if candidate in session.users:
                session.poll_user = candidate
                return candidate
        session.poll_user = None
        return None

    def _context(
        self, session: Session, who: Who | None
    ) -> tuple[dict[str, Any], Mapping[str, str] | None] | None:
        """The state request's placeholders and forwarded headers (None: it must
        be sent as a present user and nobody is usable)."""
        if self.cfg.upstream.state.as_ != "present_user":
            ctx: dict[str, Any] = {"sessionId": session.id, "params": {}, "payload": {},
                                   "user": {}, "session": session.shared}  # fmt: skip
            return ctx, None
        if who is None:
            user = self._user_for(session)
            if user is None:
                return None
            uc = session.users[user]
            who = Who(user, uc.client_id, uc.params, uc.headers)
        return context_of(session, who.user, who.client, who.params, {}), who.headers

    async def fetch(self, session: Session, who: Who | None = None) -> StateResult | None:
        """One state request (or one of each part due); None when nobody is usable.
        Raises UpstreamError and RenderError (every part failing)."""
        state = self.cfg.upstream.state
        if self.backplane.shared and self.cfg.upstream.uses_captures:
            await self._refresh_context(session, who)
        found = self._context(session, who)
        if found is None:
            return None
        ctx, forwarded = found
        if state.parts is None:
            result = await self.upstream.fetch_state(
                "state", state, ctx, forwarded, session.etag, session.last_modified
            )
            await self._keep(session, result)
            return result
        now = time.monotonic()
        due = [(name, part) for name, part in state.parts.items()
               if session.parts.setdefault(name, PartState()).next_at <= now]  # fmt: skip
        answers = await asyncio.gather(
            *(self.upstream.fetch_state(f"state.{name}", part, ctx, forwarded,
                                        session.parts[name].etag,
                                        session.parts[name].last_modified)
              for name, part in due),
            return_exceptions=True,
        )  # fmt: skip
        changed = False
        errors: list[BaseException] = []
        for (name, _part), answer in zip(due, answers, strict=True):
            ps = session.parts[name]
            if isinstance(answer, BaseException):
                if not isinstance(answer, UpstreamError | RenderError):
                    raise answer
                ps.failures += 1
                ps.next_at = now + self._backoff(ps.failures)
                errors.append(answer)
                if len(errors) < len(due):
                    self.metrics.state_polls.labels("error").inc()
                    log.warning("state part %s of session %s failed: %s (next try in %.1fs)",
                                name, session.id, answer, ps.next_at - now)  # fmt: skip
                continue
            ps.failures, ps.next_at = 0, 0.0
            await self._keep(session, answer)
            if answer.changed:  # an answer, not a 304 (the backplane says if it changed)
                ps.etag, ps.last_modified = answer.etag, answer.last_modified
                ps.value, ps.fetched = answer.payload, True
                changed = True
        if errors and len(errors) == len(due):
            raise errors[0]
        if not changed and not session.unpublished:  # (not published: send it again)
            return StateResult(False)
        return StateResult(True, {name: session.parts.setdefault(name, PartState()).value
                                  for name in state.parts})  # fmt: skip

    async def _refresh_context(self, session: Session, who: Who | None) -> None:
        """What other instances captured (for the session, and for the user the
        state request is sent as), before each round."""
        user = who.user if who is not None else (self._user_for(session) or "")
        merge_context(session, user, await self.backplane.context(session, user))

    async def _keep(self, session: Session, result: StateResult) -> None:
        """Session values captured from a state answer."""
        captured = result.captured
        if captured.session:
            session.shared.update(captured.session)
            if self.backplane.shared:
                try:
                    await self.backplane.remember(session, None, {}, captured.session)
                except BackplaneUnavailable as exc:
                    log.warning("captured values of session %s kept here only: %s",
                                session.id, exc)  # fmt: skip

    async def check(self, session: Session, who: Who) -> bool:
        """Before the first client of a session is admitted here: False when the
        app says the session does not exist (its first state fetch answers 404
        or 410). Shared by concurrent connects, and waited for (within the
        handshake's own timeout), so no client is let into a session the app
        then says is unknown; an answer of any other kind lets them in. A
        session whose log already has entries is known."""
        return await self.first_answer(session, who) != "unknown"

    async def first_answer(self, session: Session, who: Who) -> Known:
        """What the app said to the session's first state fetch: ``known`` (a
        state, or its log has entries), ``unknown`` (404 or 410), or ``unsure``
        (no answer: an error, a timeout, the queue to the app full, the breaker
        open). One fetch, shared by everyone who asks."""
        if session.hub.log.head > 0:
            return "known"
        if session.checked is None:
            session.checked = asyncio.get_running_loop().create_future()
            session.tasks.spawn(self._first_fetch(session, who, session.checked),
                                "fetching a new session's state")  # fmt: skip
        return await asyncio.shield(session.checked)

    async def _first_fetch(self, session: Session, who: Who, known: asyncio.Future[Known]) -> None:
        try:
            result = await self.fetch(session, who)
        except UpstreamRejected as exc:
            known.set_result("unknown" if exc.status in (404, 410) else "known")
            return
        except (UpstreamError, RenderError):
            known.set_result("unsure")  # the poller will try again (and back off)
            return
        except BaseException:
            known.set_result("unsure")
            raise
        known.set_result("known")
        if result is not None and result.changed:
            # published by the poller's first round (after the first client attached,
            # so it gets the state live), which does not ask the app again
            session.prefetched = result

    async def poll_once(self, session: Session) -> None:
        try:
            result = session.prefetched or await self.fetch(session)
            session.prefetched = None
            if result is None:  # as: present_user, and nobody usable: wait
                return
            if result.changed:
                self.check_value(result.payload)
        except (UpstreamError, RenderError) as exc:
            if isinstance(exc, UpstreamRejected) and exc.status in (404, 410):
                # gone at the app: the copy legacy polls were answered from is too
                session.gone = True
                session.copy = session.stream_copy = None
                session.copy_ready.clear()
            self._failed(session, f"state poll of session {session.id} failed: {exc}")
            return
        session.poll_failures = 0
        session.gone = False
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
            for ps in session.parts.values():
                ps.etag = ps.last_modified = None
            return
        if session.unpublished:
            log.info("state of session %s published again", session.id)
            session.unpublished = False
        session.etag, session.last_modified = result.etag, result.last_modified
        if self.cfg.upstream.state.intercept and result.raw:
            session.copy = (result.raw, result.content_type, copy_etag(result.raw))
            session.copy_ready.set()
        self.metrics.state_polls.labels("unchanged" if seq is None else "changed").inc()

    def _failed(self, session: Session, why: str) -> None:
        session.poll_failures += 1
        self.metrics.state_polls.labels("error").inc()
        log.warning("%s (next try in %.1fs)", why, self.delay(session))

    @staticmethod
    def check_value(payload: Any) -> None:
        """Raises UpstreamUnreadable for a state no codec can carry."""
        wrong = problem(payload)
        if wrong is not None:
            raise UpstreamUnreadable(f"the state cannot be sent to clients: {wrong}")

    async def publish_state(
        self, session: Session, payload: Any, source: str, seen_at: float
    ) -> int | None:
        """New state from a poll or a push (checked with :meth:`check`): its seq when
        it changed (broadcast here, or through the backplane to every instance),
        else None. Raises BackplaneUnavailable."""
        seq = await self.backplane.publish_state(session, payload, seen_at)
        if seq is not None:
            self.metrics.state_changes.labels(source).inc()
        return seq
