"""The command de-dupe window: (userId, id) → the ack, for ``window`` seconds.

A command seen for the first time is forwarded (``New``); a repeat while the
first is still upstream waits for its ack (``Pending``); a repeat after it
gets the cached ack (``Done``). Upstream thus sees each id at most once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..protocol.types import Message


@dataclass(slots=True)
class _Record:
    expires: float
    ack: Message | None = None
    waiters: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class New:
    pass


@dataclass(frozen=True, slots=True)
class Pending:
    pass


@dataclass(frozen=True, slots=True)
class Done:
    ack: Message


class Dedupe:
    def __init__(self, window: float) -> None:
        self.window = window
        self._records: dict[tuple[str, str], _Record] = {}

    def __len__(self) -> int:
        return len(self._records)

    def begin(self, user: str, command_id: str, client: str, now: float) -> New | Pending | Done:
        """Register a command from ``client``; says whether to forward it."""
        self.expire(now)
        key = (user, command_id)
        record = self._records.get(key)
        if record is None:
            self._records[key] = _Record(expires=now + self.window, waiters=[client])
            return New()
        if record.ack is None:
            if client not in record.waiters:
                record.waiters.append(client)
            return Pending()
        return Done(record.ack)

    def finish(self, user: str, command_id: str, ack: Message, now: float) -> list[str]:
        """Store the ack; returns the clients waiting for it."""
        record = self._records.get((user, command_id))
        if record is None:
            return []
        record.ack = ack
        record.expires = now + self.window
        # Re-insert so the dict stays ordered by expiry (the window is constant).
        del self._records[(user, command_id)]
        self._records[(user, command_id)] = record
        waiters, record.waiters = record.waiters, []
        return waiters

    def forget(self, user: str, command_id: str) -> None:
        """Drop a command that was never forwarded (so a retry is forwarded)."""
        self._records.pop((user, command_id), None)

    def expire(self, now: float) -> None:
        records = self._records
        while records:
            key = next(iter(records))
            record = records[key]
            if record.expires > now or record.ack is None:
                break
            del records[key]
