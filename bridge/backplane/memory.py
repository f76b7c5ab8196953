"""The memory backplane: one process owns every session it serves.

Seqs, presence and the de-dupe window live in each session's
:class:`~bridge.core.hub.SessionHub` here; nothing is shared, so nothing can fail.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .base import Events, SessionView, SharedDone, SharedNew

_NEW = SharedNew()


class MemoryBackplane:
    kind = "memory"
    shared = False

    def __init__(self, events: Events) -> None:
        self.events = events

    @property
    def healthy(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def reconfigure(self, cfg: Any) -> None:
        return None

    async def open(self, session: SessionView) -> None:
        return None

    def closed(self, session: SessionView) -> None:
        return None

    def owns(self, session: SessionView) -> bool:
        return session.has_clients or session.followed  # polled while anyone follows it

    def grace_over(self, session: SessionView, user: str) -> bool:
        return True  # this is the only instance: it sends the leave

    def keep(self, session: SessionView) -> bool:
        return False

    async def publish_state(self, session: SessionView, payload: Any, now: float) -> int | None:
        return self.events.publish_local(session, payload, now)

    async def push_elsewhere(self, session_id: str, payload: Any) -> tuple[bool, int | None]:
        return False, None  # nobody is connected to it

    async def claim_user(self, session: SessionView, user: str, context: dict[str, Any]) -> bool:
        return not session.is_present(user)

    async def unclaim_user(self, session: SessionView, user: str) -> None:
        return None

    async def present(self, session: SessionView, user: str) -> bool:
        return session.is_present(user)

    async def joined(self, session: SessionView, user: str) -> None:
        return None  # the presence entry is appended when the client attaches

    async def left(self, session: SessionView, user: str) -> None:
        return None  # the runtime's hub already ended the user's presence

    async def context(
        self, session: SessionView, user: str
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        return None  # the session here holds all there is

    async def remember(
        self, session: SessionView, user: str | None, values: dict[str, Any],
        shared: dict[str, Any],
    ) -> None:  # fmt: skip
        return None

    @asynccontextmanager
    async def command_slot(self, session: SessionView) -> AsyncIterator[None]:
        yield  # the session's own gate is all there is

    async def begin_command(
        self, session: SessionView, user: str, command_id: str
    ) -> SharedNew | SharedDone:
        return _NEW  # the session's own de-dupe window is the only one

    async def finish_command(
        self, session: SessionView, user: str, command_id: str, ack: dict[str, Any]
    ) -> None:
        return None

    def abandon_command(self, session: SessionView, user: str, command_id: str) -> None:
        return None

    def status(self) -> dict[str, Any]:
        return {"kind": "memory", "healthy": True}
