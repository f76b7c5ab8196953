"""The runtime's side of the backplane port: what a backplane reports, carried out.

The backplane only ever holds the :class:`~bridge.backplane.base.SessionView`
the runtime gave it (a :class:`~.session.Session`) and calls these methods;
it never reaches into the runtime.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any, Literal

from ..backplane.base import LoggedEntry, SessionView
from ..core.replay import ReplayLog
from .fanout import Fanout
from .membership import Membership
from .poller import Poller
from .session import Session
from .sessions import Sessions


def _session(view: SessionView) -> Session:
    assert isinstance(view, Session), "a backplane only gets the runtime's sessions"
    return view


class BackplaneEvents:
    """Made before the backplane (which needs it), bound to the runtime after."""

    sessions: Sessions
    fanout: Fanout
    poller: Poller
    membership: Membership

    def bind(self, sessions: Sessions, fanout: Fanout, poller: Poller, membership: Membership
             ) -> None:  # fmt: skip
        self.sessions = sessions
        self.fanout = fanout
        self.poller = poller
        self.membership = membership

    def publish_local(self, session: SessionView, payload: Any, now: float) -> int | None:
        s = _session(session)
        entry = s.hub.state(payload, now)
        if entry is None:
            return None
        self.fanout.broadcast(s, entry, now)
        return entry.seq

    def diverge(self, session: SessionView) -> None:
        log_ = _session(session).hub.log
        log_.epoch = f"{log_.epoch}~{secrets.token_urlsafe(4)}"

    def stream_entry(
        self, session: SessionView, entry: LoggedEntry, seen_at: float | None = None
    ) -> None:
        s = _session(session)
        kept = s.hub.log.accept(entry.seq, entry.type, entry.payload, time.monotonic())
        if kept is not None:
            self.fanout.broadcast(s, kept, seen_at)

    def log_loaded(self, session: SessionView, epoch: str, entries: Sequence[LoggedEntry]) -> None:
        s = _session(session)
        settings = self.sessions.settings
        mirror = ReplayLog(
            epoch,
            max_messages=settings.max_messages,
            max_bytes=settings.max_bytes,
            max_age=settings.max_age,
        )
        now = time.monotonic()
        for e in entries:
            mirror.accept(e.seq, e.type, e.payload, now)
        s.hub.replace_log(mirror)
        s.evictions_seen = mirror.evictions

    def resume_all(self, session: SessionView, reason: str) -> None:
        self.sessions.resume_all(_session(session), reason)

    def ownership_changed(self, session: SessionView, owned: bool) -> None:
        self.poller.ownership_changed(_session(session), owned)

    def user_request(
        self,
        session: SessionView,
        user: str,
        name: Literal["leave", "keepalive"],
        context: dict[str, Any] | None,
    ) -> None:
        self.membership.user_request(_session(session), user, name, context)

    def settle(self, session: SessionView) -> None:
        self.sessions.drop_if_idle(_session(session))
