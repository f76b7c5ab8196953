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
import logging
import time
from typing import Any

from ..backplane import Backplane
from ..config import Config
from ..exceptions import BackplaneUnavailable, UpstreamError, UpstreamUnreadable
from ..metrics import Metrics
from ..protocol.values import problem
from ..upstream.client import UpstreamClient
from .session import Session
from .sessions import Sessions

log = logging.getLogger("bridge.runtime")

MAX_BACKOFF = 30.0


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
        every = self.cfg.upstream.state.every
        if session.poll_failures == 0:
            return every
        return min(MAX_BACKOFF, every * 2.0 ** min(session.poll_failures, 5))

    async def _loop(self, session: Session) -> None:
        while self.sessions.get(session.id) is session and self.backplane.owns(session):
            session.refresh.clear()
            try:
                await self.poll_once(session)
            except Exception:  # a bug of ours: said loudly; the poller goes on, backing off
                log.exception("state poll of session %s failed", session.id)
                self._failed(session, f"state poll of session {session.id} failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.refresh.wait(), self.delay(session))

    async def poll_once(self, session: Session) -> None:
        try:
            result = await self.upstream.fetch_state(
                session.id, session.etag, session.last_modified
            )
            if result.changed:
                self.check(result.payload)
        except UpstreamError as exc:
            self._failed(session, f"state poll of session {session.id} failed: {exc}")
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

    def _failed(self, session: Session, why: str) -> None:
        session.poll_failures += 1
        self.metrics.state_polls.labels("error").inc()
        log.warning("%s (next try in %.1fs)", why, self.delay(session))

    @staticmethod
    def check(payload: Any) -> None:
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
