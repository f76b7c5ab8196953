"""Circuit breaker for the upstream, sans-I/O.

Rules (one table):

========== ================================== ==================================
state      on failure that is evidence        on success / time / release
========== ================================== ==================================
closed     ``failures`` in a row → open       success: forget the run
open       (a request sent before it opened)  after ``recovery`` → half_open
           the run is still evidence:
           ``recovery`` starts again
half_open  → open (recovery again)            success → closed; a released or
                                              overdue trial frees the slot
========== ================================== ==================================

1. While open, requests are refused without being sent. In half_open one trial
   request at a time is let through: :meth:`allow` returns a :class:`Permit`
   whose ``trial`` is set.
2. The breaker guards the app *as a whole* (``shared/design/upstream.md``,
   "Failure isolation"), so only evidence about the whole app counts:

   - an unscoped failure (the connection refused, a timeout, 502/503/504);
   - a failure scoped to one session (its route answering 500, say) from a
     session that has worked before (a success with that scope): it opens the
     breaker only when the run of ``failures`` failures comes from that many
     different such sessions. A session that never worked (a room that only
     errors, one made up by a client) never counts, whatever its number.

   A failure that is no evidence changes nothing: it neither counts nor
   breaks the run.
3. A trial never holds the slot for good: a trial whose caller went away
   without an outcome (cancelled, or answered in a way that says nothing, a
   429) is :meth:`release`\\ d, one that failed without evidence frees the slot
   too, and one still out after ``trial_timeout`` is given up on.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

State = Literal["closed", "open", "half_open"]
STATE_VALUES: dict[State, int] = {"closed": 0, "half_open": 1, "open": 2}

#: sessions remembered as having worked (least recently successful forgotten first)
KNOWN_GOOD = 4096


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
        #: the run: failures that are evidence since the last success
        self._failures = 0
        self._unscoped = False
        self._scopes: set[str] = set()
        self._good: OrderedDict[str, None] = OrderedDict()
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

    def success(self, scope: str | None = None) -> None:
        """A request went through; ``scope`` (a session id) has now worked."""
        self._state = "closed"
        self._failures = 0
        self._unscoped = False
        self._scopes.clear()
        if scope is not None:
            self._good[scope] = None
            self._good.move_to_end(scope)
            if len(self._good) > KNOWN_GOOD:
                self._good.popitem(last=False)

    def failure(self, now: float, scope: str | None = None) -> None:
        """A request failed; ``scope`` names the session it concerned when the
        failure says nothing about the app as a whole by itself (rule 2)."""
        if scope is not None and scope not in self._good:
            # no evidence (rule 2); a trial that ends so says nothing either (rule 3)
            if self._state == "half_open":
                self._trial = 0
            return
        self._failures += 1
        if scope is None:
            self._unscoped = True
        else:  # a session that worked (so at most KNOWN_GOOD of them)
            self._scopes.add(scope)
        evidence = self._unscoped or len(self._scopes) >= self.threshold
        if self._state == "half_open" or (evidence and self._failures >= self.threshold):
            self._state = "open"
            self._opened_at = now  # (the trial slot is reset when half_open begins)
