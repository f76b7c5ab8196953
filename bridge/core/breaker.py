"""Circuit breaker for the upstream, sans-I/O.

Rules (one table):

========== ============================ ==================================
state      on failure                   on success / time
========== ============================ ==================================
closed     ``failures`` in a row → open reset the count
open       —                            after ``recovery`` → half_open
half_open  → open (recovery again)      → closed
========== ============================ ==================================

While open, requests are refused without being sent. In half_open one trial
request at a time is let through.
"""

from __future__ import annotations

from typing import Literal

State = Literal["closed", "open", "half_open"]
STATE_VALUES: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}


class CircuitBreaker:
    def __init__(self, *, failures: int, recovery: float) -> None:
        self.threshold = failures
        self.recovery = recovery
        self._state: State = "closed"
        self._failures = 0
        self._opened_at = 0.0
        self._trial = False

    def state(self, now: float) -> State:
        if self._state == "open" and now >= self._opened_at + self.recovery:
            self._state = "half_open"
            self._trial = False
        return self._state

    def allow(self, now: float) -> bool:
        """May a request go out now? In half_open, only one trial at a time."""
        state = self.state(now)
        if state == "closed":
            return True
        if state == "half_open" and not self._trial:
            self._trial = True
            return True
        return False

    def retry_in(self, now: float) -> float:
        """Seconds until a request may be tried (0 when one may go now)."""
        state = self.state(now)
        if state == "closed" or (state == "half_open" and not self._trial):
            return 0.0
        if state == "open":
            return self._opened_at + self.recovery - now
        return self.recovery / 10  # a trial is under way: look again soon

    def success(self) -> None:
        self._state = "closed"
        self._failures = 0
        self._trial = False

    def failure(self, now: float) -> None:
        self._failures += 1
        if self._state == "half_open" or self._failures >= self.threshold:
            self._state = "open"
            self._opened_at = now
            self._trial = False
