"""Presence: which users of a session are here, with grace and keep-alive deadlines.

Rules:

1. A user is present while any of their clients has a live transport, and for
   ``grace`` seconds after the last one goes (so a flapping network causes no
   leave and no presence churn).
2. A user becoming present needs one upstream ``join``; a grace running out
   needs one upstream ``leave``; an explicit leave ends presence at once.
3. While present, the user is kept alive upstream every ``keepalive`` seconds,
   once per user whatever their number of clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .timers import TimerQueue


@dataclass(slots=True)
class _User:
    clients: set[str] = field(default_factory=set)
    grace_until: float | None = None


@dataclass(frozen=True, slots=True)
class Due:
    """What ``tick`` found due: users whose grace ran out, users to keep alive."""

    left: list[str]
    keepalive: list[str]


class Presence:
    def __init__(self, *, grace: float, keepalive: float | None) -> None:
        self.grace = grace
        self.keepalive = keepalive
        self._users: dict[str, _User] = {}
        self._client_user: dict[str, str] = {}
        self._timers: TimerQueue[tuple[str, str]] = TimerQueue()

    # -- queries
    def online(self) -> list[str]:
        """Present users, sorted (the payload of a presence message)."""
        return sorted(self._users)

    def is_present(self, user: str) -> bool:
        return user in self._users

    def clients_of(self, user: str) -> set[str]:
        u = self._users.get(user)
        return set(u.clients) if u else set()

    def live_clients(self) -> int:
        return len(self._client_user)

    def in_grace(self, user: str) -> bool:
        u = self._users.get(user)
        return u is not None and u.grace_until is not None

    def next_deadline(self) -> float | None:
        return self._timers.next_deadline()

    # -- transitions
    def connect(self, client: str, user: str, now: float) -> bool:
        """A client's transport is live. True when the user just became present."""
        self._client_user[client] = user
        u = self._users.get(user)
        joined = u is None
        if u is None:
            u = self._users[user] = _User()
            if self.keepalive is not None:
                self._timers.schedule(("keepalive", user), now + self.keepalive)
        u.clients.add(client)
        if u.grace_until is not None:
            u.grace_until = None
            self._timers.cancel(("grace", user))
        return joined

    def hold(self, user: str, now: float) -> bool:
        """The user is present upstream without a live client (their join went
        through, their transport did not): present until ``now + grace``, like a
        user whose last client just went. True when they just became present."""
        if user in self._users:
            return False
        self._users[user] = _User(grace_until=now + self.grace)
        self._timers.schedule(("grace", user), now + self.grace)
        if self.keepalive is not None:
            self._timers.schedule(("keepalive", user), now + self.keepalive)
        return True

    def disconnect(self, client: str, now: float) -> None:
        """A client's last transport went away; the grace starts if it was the user's last."""
        user = self._client_user.pop(client, None)
        if user is None:
            return
        u = self._users.get(user)
        if u is None:
            return
        u.clients.discard(client)
        if not u.clients:
            u.grace_until = now + self.grace
            self._timers.schedule(("grace", user), u.grace_until)

    def leave(self, user: str) -> bool:
        """Explicit leave: the user is gone now. True if they were present."""
        u = self._users.pop(user, None)
        if u is None:
            return False
        for client in u.clients:
            self._client_user.pop(client, None)
        self._timers.cancel(("grace", user))
        self._timers.cancel(("keepalive", user))
        return True

    def tick(self, now: float) -> Due:
        """What is due by ``now``, in deadline order: a keep-alive that fell due
        while its user was present is sent (and the next one scheduled), one that
        falls due after their grace ended in this same tick is not."""
        left: list[str] = []
        keepalive: list[str] = []
        for kind, user in self._timers.pop_due(now):
            if kind == "grace":
                self.leave(user)  # also cancels a keep-alive rescheduled in this tick
                left.append(user)
            elif user in self._users:  # (popped with the grace: leave() cannot cancel it)
                assert self.keepalive is not None
                keepalive.append(user)
                self._timers.schedule(("keepalive", user), now + self.keepalive)
        return Due(left, keepalive)
