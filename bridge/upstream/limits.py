"""The queue in front of the legacy app: at most the adaptive limit
(``core/limiter.py``) of the bridge's requests at the app at once.

- **Priorities**: commands (join and leave included) go before keep-alives,
  which go before state polls.
- **Fair across sessions**: within a priority, sessions take turns (one
  request each, round robin), so one busy session cannot starve the others.
- **Bounded**: past ``upstream.max_queue`` waiting requests a new one is
  refused at once (:class:`UpstreamBusy`, ack ``upstream_busy``), unless a
  waiter of a lower priority is there: the newest of those is refused instead.
- The wait in the queue is not part of ``upstream.timeout`` (that is the
  app's own answer's budget, per try).
- A ``Retry-After`` from the app pauses every start, for every session.

Cancellation-safe: a waiter cancelled before its turn leaves the queue; one
cancelled as its turn came gives the slot back.

Closed (:meth:`UpstreamLimits.close`, the bridge stopping) nothing starts any
more: every waiter, and every later request, is refused ``UpstreamUnavailable``.
Without that, each request cut short by the stop would hand its slot to the
next waiter, whose request the app gets an instant before it too is cut: the
app was left with many more abandoned requests than the limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from typing import Literal

from ..config import Upstream
from ..core.limiter import Limiter, Outcome, Ticket
from ..exceptions import UpstreamBusy, UpstreamUnavailable
from ..metrics import Metrics

Kind = Literal["command", "keepalive", "poll"]
PRIORITY: dict[Kind, int] = {"command": 0, "keepalive": 1, "poll": 2}
#: the kinds by priority (a queue's index)
KINDS: tuple[Kind, ...] = tuple(sorted(PRIORITY, key=PRIORITY.__getitem__))


def kind_of(name: str) -> Kind:
    """The priority class of a request by its route name."""
    if name == "keepalive":
        return "keepalive"
    if name == "state" or name.startswith("state."):
        return "poll"
    return "command"


class Waiter:
    __slots__ = ("future", "queued_at")

    def __init__(self, future: asyncio.Future[Ticket], queued_at: float) -> None:
        self.future = future
        self.queued_at = queued_at


class UpstreamLimits:
    def __init__(self, cfg: Upstream, metrics: Metrics) -> None:
        self.metrics = metrics
        self.limiter = Limiter(cfg.max_in_flight, adaptive=cfg.adaptive)
        self.max_queue = cfg.max_queue
        #: priority → session → its waiters, sessions in turn order
        self._queues: list[OrderedDict[str, deque[Waiter]]] = [OrderedDict() for _ in PRIORITY]
        self.waiting = 0
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False
        self._gauges()

    def reconfigure(self, cfg: Upstream) -> None:
        self.limiter.resize(cfg.max_in_flight, cfg.adaptive)
        self.max_queue = cfg.max_queue
        self._dispatch()

    def _gauges(self) -> None:
        self.metrics.upstream_in_flight.set(self.limiter.in_flight)
        self.metrics.upstream_limit.set(self.limiter.limit)

    async def acquire(self, kind: Kind, scope: str | None) -> Ticket:
        """Wait for a turn. Raises UpstreamBusy when the queue is full,
        UpstreamUnavailable once closed."""
        if self.closed:
            raise UpstreamUnavailable("the bridge is stopping")
        now = time.monotonic()
        if not self.waiting and self.limiter.ready(now):
            return self._start(now, now)
        if self.waiting >= self.max_queue and not self._evict_below(PRIORITY[kind]):
            self.metrics.upstream_requests.labels(kind, "busy").inc()
            raise UpstreamBusy(f"{self.waiting} requests are waiting for the app already")
        fut: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
        queue = self._queues[PRIORITY[kind]].setdefault(scope or "", deque())
        waiter = Waiter(fut, now)
        queue.append(waiter)
        self.waiting += 1
        self._dispatch()
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                if fut.exception() is None:  # our turn came as we were cancelled
                    self.release(fut.result(), "other", 0.0)
            else:
                self._forget(waiter, kind, scope or "")
            raise

    def _evict_below(self, priority: int) -> bool:
        """The queue is full: a request of ``priority`` takes the place of the
        newest waiter of the lowest priority below it (refused ``upstream_busy``),
        so polls, however many, never keep a command out. False: none below."""
        for level in range(len(self._queues) - 1, priority, -1):
            queues = self._queues[level]
            while queues:
                scope, queue = next(reversed(queues.items()))  # the last in turn
                waiter = queue.pop()
                if not queue:
                    del queues[scope]
                self.waiting -= 1
                if waiter.future.done():  # cancelled meanwhile: its place is free anyway
                    return True
                self.metrics.upstream_requests.labels(KINDS[level], "busy").inc()
                waiter.future.set_exception(UpstreamBusy("a more urgent request took its place"))
                return True
        return False

    def _forget(self, waiter: Waiter, kind: Kind, scope: str) -> None:
        queues = self._queues[PRIORITY[kind]]
        queue = queues.get(scope)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            self.waiting -= 1
            if not queue:
                del queues[scope]

    def _start(self, now: float, queued_at: float) -> Ticket:
        ticket = self.limiter.start()
        self.metrics.upstream_queue.observe(now - queued_at)
        self._gauges()
        return ticket

    def release(self, ticket: Ticket, outcome: Outcome, latency: float) -> None:
        """A request ended (see Limiter.done); the next waiters go."""
        self.limiter.done(ticket, outcome, latency)
        self._gauges()
        self._dispatch()

    def close(self) -> None:
        """Nothing starts from now on; every waiter is refused at once."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for queues in self._queues:
            for queue in queues.values():
                for waiter in queue:
                    if not waiter.future.done():
                        waiter.future.set_exception(UpstreamUnavailable("the bridge is stopping"))
            queues.clear()
        self.waiting = 0

    def pause(self, seconds: float) -> None:
        """The app said Retry-After: nothing starts for that long (capped by the caller)."""
        self.limiter.pause(time.monotonic() + seconds)

    def _dispatch(self) -> None:
        if self.closed:
            return
        now = time.monotonic()
        while self.waiting and self.limiter.ready(now):
            waiter = self._next()
            if waiter is None:  # pragma: no cover - waiting counts what the queues hold
                break
            if waiter.future.done():  # cancelled meanwhile (its task removes nothing then)
                continue
            waiter.future.set_result(self._start(now, waiter.queued_at))
        paused = self.limiter.paused_until
        if self.waiting and paused > now and self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(paused - now, self._unpause)

    def _unpause(self) -> None:
        self._timer = None
        self._dispatch()

    def _next(self) -> Waiter | None:
        """The first waiter of the first session in turn, of the highest priority;
        that session goes to the end of the turn order."""
        for queues in self._queues:
            if not queues:
                continue
            scope, queue = next(iter(queues.items()))
            waiter = queue.popleft()
            self.waiting -= 1
            del queues[scope]
            if queue:
                queues[scope] = queue  # to the end: the next session's turn
            return waiter
        return None
