"""How many requests the legacy app gets at once: an adaptive limit, sans-I/O.

Rules (AIMD with a latency signal, as TCP Vegas and Netflix's
concurrency-limits do it):

1. At most ``int(limit)`` requests are in flight; ``limit`` stays between
   ``min_limit`` and ``max_limit`` and starts at ``max_limit``. Not adaptive:
   it stays there.
2. **Overload** (the app answered 429 or 503, timed out, or could not be
   reached) cuts the limit in half. **Queueing** cuts it by a tenth: a success
   whose latency says that more than ``QUEUE`` requests were waiting at the app
   (Vegas' estimate: ``company × (1 − no_load / latency)``, ``company`` being
   the requests in flight when it started, itself included) and that waited
   over ``MIN_QUEUEING`` seconds more than the no-load latency (jitter of fast
   apps is not queueing). Either happens once per flight: only a request that
   started after the last cut may cut again, so a burst of failures from
   requests sent together counts once.
3. A success with no queueing, of a request sent while the limit was in use
   (``saturated``), grows the limit by ``1/limit`` (one per limit's worth of
   such successes). A success while the app was not held back says nothing
   about more, and changes nothing.
4. The no-load latency is the shortest latency of the last two windows of
   ``WINDOW`` successes (a windowed minimum, as BBR keeps its min RTT): a
   sample taken while the app queued never raises it, and an app that got
   slower for good is seen as it is within two windows.
5. :meth:`Limiter.pause` (the app's ``Retry-After``) lets nothing start
   before the given time, whatever the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: more requests than this waiting at the app (Vegas' estimate) is queueing
QUEUE = 2.0
#: ... and only if it also waited this much longer than no-load (seconds)
MIN_QUEUEING = 0.01
#: successes per window of the no-load latency's windowed minimum
WINDOW = 500
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
    #: requests in flight when it started, itself included (rule 2)
    company: int = 1


class Limiter:
    __slots__ = ("max_limit", "min_limit", "adaptive", "limit", "in_flight", "cuts", "best",
                 "paused_until", "_window_best", "_window_seen")  # fmt: skip

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
        #: the shortest latency of the current window, and its successes so far
        self._window_best: float | None = None
        self._window_seen = 0

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
        return Ticket(self.cuts, saturated, self.in_flight)

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
            if self._queueing(ticket, latency):
                self._cut(ticket, EASE)
            elif ticket.saturated:
                self.limit = min(float(self.max_limit), self.limit + 1.0 / self.limit)
            self._sample(latency)

    def _queueing(self, ticket: Ticket, latency: float) -> bool:
        best = self.best
        if best is None or latency - best <= MIN_QUEUEING:
            return False
        return ticket.company * (1.0 - best / latency) > QUEUE

    def _sample(self, latency: float) -> None:
        """Rule 4: the windowed minimum."""
        window = self._window_best
        window = latency if window is None else min(window, latency)
        self.best = latency if self.best is None else min(self.best, latency)
        self._window_seen += 1
        if self._window_seen >= WINDOW:  # the older window ends: the minimum is this one's
            self.best = window
            window = None
            self._window_seen = 0
        self._window_best = window

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
