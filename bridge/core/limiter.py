"""How many requests the legacy app gets at once: an adaptive limit, sans-I/O.

Rules (AIMD with a latency signal, as TCP Vegas and Netflix's
concurrency-limits do it):

1. At most ``int(limit)`` requests are in flight; ``limit`` stays between
   ``min_limit`` and ``max_limit`` and starts at ``max_limit``. Not adaptive:
   it stays there.
2. **Overload** (the app answered 429 or 503, timed out, or could not be
   reached) cuts the limit in half. **Queueing** (a success that took over
   ``TOLERANCE`` × the no-load latency, and over ``MIN_QUEUEING`` seconds)
   cuts it by a tenth. Either happens once per flight: only a request that
   started after the last cut may cut again, so a burst of failures from
   requests sent together counts once.
3. A success with no queueing, of a request sent while the limit was in use
   (``saturated``), grows the limit by ``1/limit`` (one per limit's worth of
   such successes). A success while the app was not held back says nothing
   about more, and changes nothing.
4. The no-load latency is the shortest latency seen, drifting slowly (by
   ``DRIFT`` of the difference per success) towards the latencies seen, so an
   app that got slower for good is not read as queueing for ever.
5. :meth:`Limiter.pause` (the app's ``Retry-After``) lets nothing start
   before the given time, whatever the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: a success this many times the no-load latency is queueing
TOLERANCE = 2.0
#: ... and only if it is also this long (seconds): jitter of fast apps is not queueing
MIN_QUEUEING = 0.01
#: the share of the difference the no-load latency moves towards each success's latency
DRIFT = 0.001
#: what overload keeps of the limit
BACKOFF = 0.5
#: what queueing keeps of the limit
EASE = 0.9

Outcome = Literal["ok", "overload", "other"]


@dataclass(frozen=True, slots=True)
class Ticket:
    """A started request: hand it back to :meth:`Limiter.done`."""

    #: the number of cuts when it started (rule 2)
    cuts: int
    #: the limit was in use when it started (rule 3)
    saturated: bool


class Limiter:
    __slots__ = ("max_limit", "min_limit", "adaptive", "limit", "in_flight", "cuts", "best",
                 "paused_until")  # fmt: skip

    def __init__(self, max_limit: int, min_limit: int = 1, adaptive: bool = True) -> None:
        self.max_limit = max_limit
        self.min_limit = min(min_limit, max_limit)
        self.adaptive = adaptive
        self.limit = float(max_limit)
        self.in_flight = 0
        self.cuts = 0
        #: the no-load latency (None: no success seen yet)
        self.best: float | None = None
        self.paused_until = 0.0

    @property
    def allowed(self) -> int:
        """How many may be in flight now."""
        return int(self.limit)

    def ready(self, now: float) -> bool:
        """Whether one more request may start now."""
        return now >= self.paused_until and self.in_flight < self.allowed

    def start(self) -> Ticket:
        """A request starts (after :meth:`ready`)."""
        saturated = self.in_flight + 1 >= self.allowed
        self.in_flight += 1
        return Ticket(self.cuts, saturated)

    def done(self, ticket: Ticket, outcome: Outcome, latency: float) -> None:
        """A request ended: ``ok`` (2xx-3xx, or a 4xx: the app answered in time),
        ``overload`` (429, 503, a timeout, unreachable) or ``other`` (says nothing
        about capacity: a 500 of one session, cancelled)."""
        self.in_flight = max(0, self.in_flight - 1)
        if not self.adaptive:
            return
        if outcome == "overload":
            self._cut(ticket, BACKOFF)
        elif outcome == "ok":
            best = self.best
            if best is not None and latency > TOLERANCE * best and latency > MIN_QUEUEING:
                self._cut(ticket, EASE)
            elif ticket.saturated:
                self.limit = min(float(self.max_limit), self.limit + 1.0 / self.limit)
            self.best = latency if best is None else min(latency, best + (latency - best) * DRIFT)

    def _cut(self, ticket: Ticket, keep: float) -> None:
        if ticket.cuts != self.cuts:  # sent before the last cut: that flight was counted
            return
        self.cuts += 1
        self.limit = max(float(self.min_limit), self.limit * keep)

    def pause(self, until: float) -> None:
        """Nothing starts before ``until`` (the app's Retry-After)."""
        self.paused_until = max(self.paused_until, until)

    def resize(self, max_limit: int, adaptive: bool) -> None:
        """A reloaded ``upstream.max_in_flight`` / ``adaptive``."""
        self.max_limit = max_limit
        self.min_limit = min(self.min_limit, max_limit)
        self.adaptive = adaptive
        self.limit = float(max_limit) if not adaptive else min(self.limit, float(max_limit))
