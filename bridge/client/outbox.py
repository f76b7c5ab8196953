"""Commands waiting for their ack (protocol.md, "Guarantees: Commands").

Rules:

1. A command stays until its ack arrives, whatever happens to transports;
   it is re-sent with the same id after every welcome (the bridge
   de-duplicates on (session, user, id), so a re-send is safe).
2. Bounded: past ``limit`` the oldest command is dropped and fails with
   ``outbox_overflow``; a command older than ``ttl`` seconds fails with
   ``expired``.
3. ``sent`` only says "handed to the current transport": a lost transport,
   a failed POST or a new welcome clear it, and the next flush sends again.

The outbox reads no clock: callers pass ``now`` (``time.monotonic()``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from .errors import ClientError


@dataclass
class Command:
    """One queued command; ``future`` gets its ack (or the error that ended it)."""

    id: str
    message: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]
    at: float
    sent: bool = False


class Outbox:
    def __init__(self, limit: int, ttl: float) -> None:
        self.limit = limit
        self.ttl = ttl
        self._items: list[Command] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, command: Command, now: float) -> None:
        """Queue ``command``, expiring old ones and dropping the oldest when full."""
        self.expire(now)
        if len(self._items) >= self.limit:
            dropped = self._items.pop(0)
            _fail(dropped, ClientError("outbox_overflow", "oldest command dropped"))
        self._items.append(command)

    def expire(self, now: float) -> None:
        for item in list(self._items):
            if now - item.at > self.ttl:
                self._items.remove(item)
                _fail(item, ClientError("expired", "not acked in time"))

    def take_unsent(self) -> list[Command]:
        """The commands not handed to the current transport yet, now marked sent."""
        items = [i for i in self._items if not i.sent]
        for i in items:
            i.sent = True
        return items

    @staticmethod
    def unsend(items: list[Command]) -> None:
        """The transport did not take them after all: the next flush sends them again."""
        for i in items:
            i.sent = False

    def requeue(self) -> None:
        """A new transport (or none): everything unacked is to be sent again."""
        self.unsend(self._items)

    def ack(self, message: dict[str, Any]) -> bool:
        """Release the command ``message`` (an ack) answers; False when none waits for it."""
        for item in self._items:
            if item.id == message.get("id"):
                self._items.remove(item)
                if not item.future.done():
                    item.future.set_result(message)
                return True
        return False

    def fail_all(self, error: ClientError) -> None:
        """The client stopped: nothing will be acked any more."""
        items, self._items = self._items, []
        for item in items:
            _fail(item, error)


def _fail(item: Command, error: ClientError) -> None:
    if not item.future.done():
        item.future.set_exception(error)
