"""The memory backplane: one process owns every session it serves.

Seqs, presence and the de-dupe window live in each session's
:class:`~bridge.core.hub.SessionHub`; nothing is shared, so nothing can fail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.dedupe import Done, New, Pending

if TYPE_CHECKING:
    from ..runtime import Bridge, Session


class MemoryBackplane:
    kind = "memory"
    shared = False

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def open(self, session: Session) -> None:
        return None

    def closed(self, session: Session) -> None:
        return None

    def owns(self, session: Session) -> bool:
        return bool(session.conns)  # polled while anyone is connected

    def grace_over(self, session: Session, user: str) -> None:
        self.bridge.spawn(session, self.bridge.send_leave(session, user))

    def keep(self, session: Session) -> bool:
        return False

    async def publish_state(self, session: Session, payload: Any, now: float) -> int | None:
        entry = session.hub.state(payload, now)
        if entry is None:
            return None
        self.bridge.broadcast(session, entry, now)
        return entry.seq

    async def push_elsewhere(self, session_id: str, payload: Any) -> tuple[bool, int | None]:
        return False, None  # nobody is connected to it

    async def claim_user(self, session: Session, user: str, context: dict[str, Any]) -> bool:
        return session.hub.needs_join(user)

    async def unclaim_user(self, session: Session, user: str) -> None:
        return None

    async def joined(self, session: Session, user: str) -> None:
        return None  # the presence entry is appended when the client attaches

    async def left(self, session: Session, user: str) -> None:
        entry = session.hub.leave(user, self.bridge.clock())
        if entry is not None:
            self.bridge.broadcast(session, entry)

    async def begin_command(
        self, session: Session, user: str, command_id: str, now: float
    ) -> New | Pending | Done:
        return session.hub.command(user, command_id, now)

    async def finish_command(
        self, session: Session, user: str, command_id: str, ack: dict[str, Any], now: float
    ) -> None:
        session.hub.command_done(user, command_id, ack, now)

    def abandon_command(self, session: Session, user: str, command_id: str) -> None:
        session.hub.command_abandoned(user, command_id)

    def status(self) -> dict[str, Any]:
        return {"kind": "memory", "healthy": True}
