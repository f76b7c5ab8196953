"""The command de-dupe window: (userId, id) → the ack, for ``window`` seconds.

A command seen for the first time is forwarded (``New``); a repeat while the
first is still upstream must wait for its ack (``Pending``: the caller keeps
the waiting, the window only knows the state); a repeat after it gets the
cached ack (``Done``). Upstream thus sees each id at most once.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..protocol.types import Message


@dataclass(slots=True)
class _Record:
    expires: float
    ack: Message | None = None


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

    def begin(self, user: str, command_id: str, now: float) -> New | Pending | Done:
        """Register a command; says whether to forward it."""
        self.expire(now)
        key = (user, command_id)
        record = self._records.get(key)
        if record is None:
            self._records[key] = _Record(expires=now + self.window)
            return New()
        if record.ack is None:
            return Pending()
        return Done(record.ack)

    def finish(self, user: str, command_id: str, ack: Message, now: float) -> None:
        """Store the ack of a forwarded command (repeats now get it)."""
        record = self._records.pop((user, command_id), None)
        if record is None:
            return
        record.ack = ack
        record.expires = now + self.window
        # Re-inserted at the end, so the dict stays ordered by expiry.
        self._records[(user, command_id)] = record

    def forget(self, user: str, command_id: str) -> None:
        """The command's outcome is unknown (interrupted): let a repeat be forwarded."""
        self._records.pop((user, command_id), None)

    def expire(self, now: float) -> None:
        records = self._records
        while records:
            key = next(iter(records))
            record = records[key]
            if record.expires > now or record.ack is None:
                break
            del records[key]
