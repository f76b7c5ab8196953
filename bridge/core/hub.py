"""The session hub: one session's replay log, presence and de-dupe, as one state machine.

Inputs (all take ``now``): a client attaches or detaches, a command arrives or
finishes, upstream state arrives, time passes. Outputs: stream entries to
broadcast, backlogs for attaching clients, and the upstream calls presence
needs (join / keep-alive / leave). The I/O layer (:mod:`bridge.runtime`)
performs them; nothing here awaits anything.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .dedupe import Dedupe, Done, New, Pending
from .presence import Presence
from .replay import Entry, ReplayLog, Reset, Resumed


@dataclass(frozen=True, slots=True)
class HubSettings:
    max_messages: int = 1000
    max_bytes: int = 1024 * 1024
    max_age: float = 300.0
    grace: float = 45.0
    keepalive: float | None = 10.0
    dedupe_window: float = 600.0
    #: The log mirrors a shared backplane: seqs come from there (``ReplayLog.accept``),
    #: so presence changes here append nothing; the backplane publishes them.
    mirror: bool = False


@dataclass(frozen=True, slots=True)
class Attached:
    """``backlog`` goes to the attaching client right after its welcome (whose
    ``seq`` is ``head``); ``presence`` (if any) is a new entry to broadcast to
    everyone, the new client included."""

    backlog: Resumed | Reset
    head: int
    presence: Entry | None


@dataclass(frozen=True, slots=True)
class Tick:
    left: list[str]
    keepalive: list[str]
    presence: Entry | None


def state_digest(payload: Any) -> bytes:
    """A digest of the state that ignores key order."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


class SessionHub:
    def __init__(self, session_id: str, epoch: str, settings: HubSettings) -> None:
        self.session_id = session_id
        self.log = ReplayLog(
            epoch,
            max_messages=settings.max_messages,
            max_bytes=settings.max_bytes,
            max_age=settings.max_age,
        )
        self.presence = Presence(grace=settings.grace, keepalive=settings.keepalive)
        self.dedupe = Dedupe(settings.dedupe_window)
        self._digest: bytes | None = None
        self.mirror = settings.mirror

    @property
    def epoch(self) -> str:
        return self.log.epoch

    def needs_join(self, user: str) -> bool:
        """True when ``user`` is not present: their first client must join upstream."""
        return not self.presence.is_present(user)

    def _presence_entry(self, now: float) -> Entry | None:
        if self.mirror:
            return None
        return self.log.append("presence", {"online": self.presence.online()}, now)

    def attach(
        self, client: str, user: str, epoch: str | None, last_seq: int | None, now: float
    ) -> Attached:
        backlog = self.log.read(epoch, last_seq, now)
        head = self.log.head
        joined = self.presence.connect(client, user, now)
        return Attached(backlog, head, self._presence_entry(now) if joined else None)

    def replace_log(self, log: ReplayLog) -> None:
        """A mirror (re)loaded from the backplane, e.g. under a new epoch."""
        self.log = log
        self._digest = None

    def hold(self, user: str, now: float) -> Entry | None:
        """A user joined upstream whose handshake then failed: present, in grace
        (see ``Presence.hold``). A presence entry when they just became present."""
        if self.presence.hold(user, now):
            return self._presence_entry(now)
        return None

    def rejoin(self, client: str, user: str, now: float) -> Entry | None:
        """A live client of ``user`` counts for presence again (an explicit ``join``
        after their explicit ``leave``). A presence entry when they became present."""
        if self.presence.connect(client, user, now):
            return self._presence_entry(now)
        return None

    def detach(self, client: str, now: float) -> None:
        self.presence.disconnect(client, now)

    def leave(self, user: str, now: float) -> Entry | None:
        """An explicit leave was forwarded: end presence now, without grace."""
        if self.presence.leave(user):
            return self._presence_entry(now)
        return None

    def command(self, user: str, command_id: str, now: float) -> New | Pending | Done:
        return self.dedupe.begin(user, command_id, now)

    def command_done(self, user: str, command_id: str, ack: dict[str, Any], now: float) -> None:
        self.dedupe.finish(user, command_id, ack, now)

    def command_abandoned(self, user: str, command_id: str) -> None:
        """Interrupted before the upstream answered: a repeat will be forwarded."""
        self.dedupe.forget(user, command_id)

    def state(self, payload: Any, now: float) -> Entry | None:
        """New upstream state: a ``session`` entry when it changed, else None."""
        digest = state_digest(payload)
        if digest == self._digest:
            return None
        self._digest = digest
        return self.log.append("session", payload, now)

    def tick(self, now: float) -> Tick:
        due = self.presence.tick(now)
        self.dedupe.expire(now)
        entry = self._presence_entry(now) if due.left else None
        return Tick(due.left, due.keepalive, entry)

    def next_deadline(self) -> float | None:
        return self.presence.next_deadline()

    @property
    def idle(self) -> bool:
        """No live client and nobody present: the session can be dropped."""
        return not self.presence.online() and self.presence.live_clients() == 0
