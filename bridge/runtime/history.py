"""What happened lately that an operator looks for first: drains and reconnect
waves (for the admin page). Cheap enough to keep always: a drain is two
entries, a connect is one counter step; the last :data:`KEPT` entries stay.

A **reconnect wave** is a run of seconds in each of which at least
:data:`WAVE` clients connected (a restart or a drain elsewhere sends its
clients here, a network blip brings everyone back at once).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

#: connects in one second that make it part of a wave
WAVE = 20
#: entries kept
KEPT = 50


@dataclass
class Entry:
    kind: str  # "drain" | "wave"
    #: wall-clock start (seconds since the epoch)
    at: float
    #: how long it lasted (a drain: until done; a wave: its seconds)
    seconds: float = 0.0
    #: a drain: connections told to reconnect; a wave: connects in it
    count: int = 0
    #: a drain: connections left at its end; a wave: of the connects, resumes
    other: int = 0
    done: bool = False

    def view(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


class History:
    def __init__(self) -> None:
        self.entries: deque[Entry] = deque(maxlen=KEPT)
        self._second = 0
        self._count = 0
        self._resumed = 0

    # -- drains
    def drain_started(self, connections: int) -> Entry:
        entry = Entry("drain", time.time(), count=connections)
        self.entries.append(entry)
        return entry

    @staticmethod
    def drain_ended(entry: Entry, left: int) -> None:
        entry.seconds = time.time() - entry.at
        entry.other = left
        entry.done = True

    # -- waves
    def connected(self, resumed: bool, now: float | None = None) -> None:
        second = int(time.time() if now is None else now)
        if second != self._second:
            self._close(self._second, self._count, self._resumed)
            self._second, self._count, self._resumed = second, 0, 0
        self._count += 1
        self._resumed += resumed

    def _close(self, second: int, count: int, resumed: int) -> None:
        if count < WAVE:
            return
        last = self.entries[-1] if self.entries else None
        if last is not None and last.kind == "wave" and int(last.at + last.seconds) == second:
            last.seconds += 1.0  # the wave goes on
            last.count += count
            last.other += resumed
            return
        self.entries.append(Entry("wave", float(second), 1.0, count, resumed, done=True))

    def recent(self, now: float | None = None) -> list[dict[str, Any]]:
        """Newest first; a second still under way counts if it is a wave already."""
        second = int(time.time() if now is None else now)
        if second != self._second:  # the last second is over: settle it
            self._close(self._second, self._count, self._resumed)
            self._second, self._count, self._resumed = second, 0, 0
        views = [e.view() for e in reversed(self.entries)]
        if self._count >= WAVE:
            last = self.entries[-1] if self.entries else None
            if last is not None and last.kind == "wave" and int(last.at + last.seconds) == second:
                views[0].update(seconds=last.seconds + 1.0, count=last.count + self._count,
                                other=last.other + self._resumed, done=False)  # fmt: skip
            else:
                views.insert(0, Entry("wave", float(second), 1.0, self._count,
                                      self._resumed).view())  # fmt: skip
        return views
