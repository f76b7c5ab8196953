"""Circuit breaker for the upstream, sans-I/O.

Rules (one table):

========== ================================== ==================================
state      on failure                         on success / time / release
========== ================================== ==================================
closed     evidence (rule 2) → open           success: forget every failure
open       —                                  after ``recovery`` → half_open
half_open  → open (recovery again)            success → closed; a released or
                                              overdue trial frees the slot
========== ================================== ==================================

1. While open, requests are refused without being sent. In half_open one trial
   request at a time is let through: :meth:`allow` returns a :class:`Permit`
   whose ``trial`` is set.
2. The breaker guards the app *as a whole* (``shared/design/upstream.md``,
   "Failure isolation"). An unscoped failure (connection refused, timeout,
   502/503/504) is evidence about the whole app; a failure with a ``scope``
   (one session's route answering 500, say) is not, until failures of at least
   ``SPREAD`` different scopes have been seen. The breaker opens once
   ``failures`` failures in a row (no success in between) include that evidence.
3. A trial never holds the slot for good: a trial whose caller went away
   without an outcome (cancelled) is :meth:`release`\\ d, and one still out
   after ``trial_timeout`` is given up on, so a new trial may go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]
STATE_VALUES: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}

#: Scoped failures (one session's route) count as evidence from this many scopes on.
SPREAD = 2


@dataclass(frozen=True, slots=True)
class Permit:
    """A request may go. ``trial`` is the number of the half-open trial it is
    (0: not a trial); hand the permit back to :meth:`CircuitBreaker.release`
    when the request ends without an outcome."""

    trial: int = 0


_FREE = Permit()


class CircuitBreaker:
    def __init__(self, *, failures: int, recovery: float, trial_timeout: float = 30.0) -> None:
        self.threshold = failures
        self.recovery = recovery
        self.trial_timeout = trial_timeout
        self._state: State = "closed"
        self._failures = 0
        #: the run of failures since the last success holds an unscoped one
        self._unscoped = False
        self._scopes: set[str] = set()
        self._opened_at = 0.0
        #: the trial under way (its number), 0 when none; and when it is given up on
        self._trial = 0
        self._trial_until = 0.0
        self._trials = 0

    def state(self, now: float) -> State:
        if self._state == "open" and now >= self._opened_at + self.recovery:
            self._state = "half_open"
            self._trial = 0
        return self._state

    def _trial_busy(self, now: float) -> bool:
        return self._trial != 0 and now < self._trial_until

    def allow(self, now: float) -> Permit | None:
        """May a request go out now? In half_open, only one trial at a time."""
        state = self.state(now)
        if state == "closed":
            return _FREE
        if state == "half_open" and not self._trial_busy(now):
            self._trials += 1
            self._trial = self._trials
            self._trial_until = now + self.trial_timeout
            return Permit(self._trial)
        return None

    def release(self, permit: Permit) -> None:
        """The request of ``permit`` ended with no outcome (it was cancelled):
        if it was the trial under way, the next request may be the trial."""
        if permit.trial != 0 and permit.trial == self._trial:
            self._trial = 0

    def retry_in(self, now: float) -> float:
        """Seconds until a request may be tried (0 when one may go now)."""
        state = self.state(now)
        if state == "closed" or (state == "half_open" and not self._trial_busy(now)):
            return 0.0
        if state == "open":
            return self._opened_at + self.recovery - now
        # a trial is under way: look again soon (and no later than its deadline)
        return min(self.recovery / 10, self._trial_until - now)

    def success(self) -> None:
        self._state = "closed"
        self._failures = 0
        self._unscoped = False
        self._scopes.clear()
        self._trial = 0

    def failure(self, now: float, scope: str | None = None) -> None:
        """A request failed; ``scope`` names what it concerned when the failure
        says nothing about the app as a whole (rule 2), e.g. the session id."""
        self._failures += 1
        if scope is None:
            self._unscoped = True
        elif len(self._scopes) < SPREAD:  # only whether SPREAD were seen matters
            self._scopes.add(scope)
        evidence = self._unscoped or len(self._scopes) >= min(SPREAD, self.threshold)
        if self._state == "half_open" or (evidence and self._failures >= self.threshold):
            self._state = "open"
            self._opened_at = now
            self._trial = 0
