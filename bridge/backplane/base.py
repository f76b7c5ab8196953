"""The interface between the runtime and a backplane.

A backplane decides four things for a session: where its stream seqs come
from (``publish_state`` / ``publish_presence``), whether a user is already
present (``claim_user``), whether a command id was seen (``begin_command``),
and which instance polls the upstream and keeps users alive (``owns``).
The memory backplane answers from this process; the Redis one from Redis, so
that any instance can serve any client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from ..core.dedupe import Done, New, Pending
from ..exceptions import BackplaneUnavailable

__all__ = ["Backplane", "BackplaneUnavailable"]

if TYPE_CHECKING:
    from ..runtime import Session


class Backplane(Protocol):
    kind: str
    #: True when other instances share the sessions (the local log is a mirror).
    shared: bool

    @property
    def healthy(self) -> bool:
        """False while the shared store cannot be reached (/readyz answers 503)."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Release what this instance holds (leases) and close connections."""

    async def open(self, session: Session) -> None:
        """Before a session's first client attaches here: load its log, follow its
        stream. Raises BackplaneUnavailable when that cannot be done."""

    def closed(self, session: Session) -> None:
        """The session was dropped here: stop following it."""

    def owns(self, session: Session) -> bool:
        """Whether this instance polls the upstream and keeps users alive for it."""

    def grace_over(self, session: Session, user: str) -> None:
        """The grace of a user with no client left here ran out (on this instance)."""

    def keep(self, session: Session) -> bool:
        """Whether the session must stay here although no client is connected
        (e.g. it holds the lease while users of other instances are in grace)."""

    async def publish_state(self, session: Session, payload: Any, now: float) -> int | None:
        """New upstream state: the seq it got, or None when it did not change."""

    async def push_elsewhere(self, session_id: str, payload: Any) -> tuple[bool, int | None]:
        """State pushed for a session this instance does not serve: (live, seq)."""

    async def claim_user(
        self, session: Session, user: str, context: dict[str, Any]
    ) -> bool:  # fmt: skip
        """A client of ``user`` is connecting: True when the user was not present
        (so this caller sends the upstream join)."""

    async def unclaim_user(self, session: Session, user: str) -> None:
        """The join of a claimed user was refused."""

    async def joined(self, session: Session, user: str) -> None:
        """The claimed user's join succeeded: publish the new presence."""

    async def left(self, session: Session, user: str) -> None:
        """An explicit leave was forwarded: the user is gone now."""

    async def begin_command(
        self, session: Session, user: str, command_id: str, now: float
    ) -> New | Pending | Done: ...

    async def finish_command(
        self, session: Session, user: str, command_id: str, ack: dict[str, Any], now: float
    ) -> None: ...

    def abandon_command(self, session: Session, user: str, command_id: str) -> None: ...

    def status(self) -> dict[str, Any]:
        """What /readyz shows about the backplane."""
