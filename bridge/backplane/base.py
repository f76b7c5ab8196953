"""The port between the runtime and a backplane.

A backplane decides, for each session this instance serves: where its stream
seqs come from (:meth:`Backplane.publish_state`), whether a user is already
present somewhere (:meth:`Backplane.claim_user`), whether a command id was
already seen by any instance (:meth:`Backplane.begin_command`), and which
instance polls the upstream and keeps users alive (:meth:`Backplane.owns`).
The memory backplane answers from this process; the Redis one from Redis, so
that any instance can serve any client.

The two sides meet only through the three protocols here:

- :class:`SessionView` is all a backplane may see of a session (the runtime's
  ``Session`` implements it); it never writes to one;
- :class:`Backplane` is what the runtime calls;
- :class:`Events` is what a backplane reports; the runtime implements it
  (``bridge/runtime/events.py``). A backplane never imports the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..exceptions import BackplaneUnavailable

__all__ = [
    "Backplane",
    "BackplaneUnavailable",
    "Events",
    "LoggedEntry",
    "SessionView",
    "SharedNew",
    "SharedDone",
]


class SessionView(Protocol):
    """A session served here, read-only."""

    @property
    def id(self) -> str: ...

    @property
    def epoch(self) -> str:
        """The epoch of this instance's copy of the session's log."""

    @property
    def head(self) -> int:
        """The highest seq in this instance's copy of the log."""

    @property
    def has_clients(self) -> bool:
        """Some client has a live transport to this instance."""

    @property
    def followed(self) -> bool:
        """The app's own frontend polls it through this instance (state.intercept)."""

    def users_here(self) -> list[str]:
        """Present users with a live transport to this instance."""

    def users_kept(self) -> list[str]:
        """The users this instance keeps present (users_here, and those whose join
        is in progress here)."""

    def online(self) -> list[str]:
        """Present users as this instance knows them (sorted)."""

    def is_present(self, user: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class LoggedEntry:
    """One message of a session's stream as a shared backplane stores it."""

    seq: int
    type: str
    payload: Any


@dataclass(frozen=True, slots=True)
class SharedNew:
    """No instance has seen this command id: forward it."""


@dataclass(frozen=True, slots=True)
class SharedDone:
    """Some instance forwarded this command id; its ack."""

    ack: dict[str, Any]


class Events(Protocol):
    """What a backplane reports about the sessions served here."""

    def publish_local(self, session: SessionView, payload: Any, now: float) -> int | None:
        """Seqs come from this instance: append the state to the session's own
        log (if it changed) and fan it out. Returns its seq, None if unchanged."""

    def diverge(self, session: SessionView) -> None:
        """The shared log cannot be reached: from now on the session's log here
        goes on under an epoch of this instance's own."""

    def stream_entry(
        self, session: SessionView, entry: LoggedEntry, seen_at: float | None = None
    ) -> None:
        """The next message of the shared stream (seq assigned by the backplane):
        keep it in the session's log here and fan it out. ``seen_at``: when the
        change was seen (this process' monotonic clock), for the delivery latency."""

    def log_loaded(self, session: SessionView, epoch: str, entries: Sequence[LoggedEntry]) -> None:
        """The session's log, as the shared backplane has it, replaces the one here."""

    def resume_all(self, session: SessionView, reason: str) -> None:
        """The log here changed under its clients: ask them to reconnect and resume."""

    def ownership_changed(self, session: SessionView, owned: bool) -> None:
        """This instance now does (or no longer does) the polling for the session."""

    def user_request(
        self,
        session: SessionView,
        user: str,
        name: Literal["leave", "keepalive"],
        context: dict[str, Any] | None,
    ) -> None:
        """Send the upstream leave or keep-alive for ``user``, with the context
        stored when they joined (None: the one this instance has, if any)."""

    def settle(self, session: SessionView) -> None:
        """Something a session's lifetime depends on changed: drop it if idle."""


class Backplane(Protocol):
    kind: str
    #: True when other instances share the sessions (the local log is a mirror).
    shared: bool

    @property
    def healthy(self) -> bool:
        """False while the shared store cannot be reached (/readyz answers 503)."""

    async def start(self) -> None: ...

    async def stop(self) -> None:
        """Release what this instance holds (leases), end every task, disconnect."""

    def reconfigure(self, cfg: Any) -> None:
        """A reloaded configuration (:class:`bridge.config.Config`)."""

    async def open(self, session: SessionView) -> None:
        """Before a session's first client attaches here: load its log, follow its
        stream. Raises BackplaneUnavailable when that cannot be done."""

    def closed(self, session: SessionView) -> None:
        """The session was dropped here: stop following it."""

    def owns(self, session: SessionView) -> bool:
        """Whether this instance polls the upstream and keeps users alive for it."""

    def grace_over(self, session: SessionView, user: str) -> bool:
        """The grace of a user with no client left here ran out here: True when
        this instance sends their leave now (else another instance, once, later)."""

    def keep(self, session: SessionView) -> bool:
        """Whether the session must stay here although no client is connected
        (e.g. it holds the lease while users of other instances are in grace)."""

    async def publish_state(self, session: SessionView, payload: Any, now: float) -> int | None:
        """New upstream state: the seq it got, or None when it did not change.
        Raises BackplaneUnavailable."""

    async def push_elsewhere(self, session_id: str, payload: Any) -> tuple[bool, int | None]:
        """State pushed for a session this instance does not serve: (live, seq)."""

    async def claim_user(self, session: SessionView, user: str, context: dict[str, Any]) -> bool:
        """A client of ``user`` is connecting: True when the user was not present
        anywhere (so this caller sends the upstream join). Raises BackplaneUnavailable."""

    async def unclaim_user(self, session: SessionView, user: str) -> None:
        """The join of a claimed user did not happen (or may not have)."""

    async def present(self, session: SessionView, user: str) -> bool:
        """Whether ``user`` is present on any instance (this one's view when the
        shared store cannot be reached)."""

    async def joined(self, session: SessionView, user: str) -> None:
        """The claimed user's join succeeded: publish the new presence."""

    async def left(self, session: SessionView, user: str) -> None:
        """An explicit leave was forwarded: the user is gone now."""

    async def context(
        self, session: SessionView, user: str
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """What was captured for ``user`` and for the session on any instance
        (None: nothing shared, or the shared store cannot be reached)."""

    async def remember(
        self, session: SessionView, user: str | None, values: dict[str, Any],
        shared: dict[str, Any],
    ) -> None:  # fmt: skip
        """Captured values, for every instance: the user's (kept while they are
        present or in grace) and the session's. Raises BackplaneUnavailable."""

    def command_slot(self, session: SessionView) -> AbstractAsyncContextManager[None]:
        """Held around each command request of the session (after this instance's own
        gate): with a shared backplane, the session's gate across every instance."""

    async def begin_command(
        self, session: SessionView, user: str, command_id: str
    ) -> SharedNew | SharedDone:
        """This instance has not seen the command: has any other? May wait for
        another instance's ack."""

    async def finish_command(
        self, session: SessionView, user: str, command_id: str, ack: dict[str, Any]
    ) -> None: ...

    def abandon_command(self, session: SessionView, user: str, command_id: str) -> None: ...

    def status(self) -> dict[str, Any]:
        """What /readyz shows about the backplane."""
