"""One task for every deadline of the process: heartbeats, held snapshots,
each session's presence timers (graces, keep-alives).

It sleeps on a future woken by ``call_at`` (or by an earlier :meth:`Ticker.schedule`)
and fires everything due within ``TICK_SLACK`` at once, so 10k connections'
heartbeats cost a few wake-ups a second instead of 10k sleeping tasks.
Handlers are registered per kind (``"hb"``, ``"flush"``, ``"session"``); one
that raises is logged with its traceback and the ticker goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ..core.timers import TimerQueue

log = logging.getLogger("bridge.runtime")

TICK_SLACK = 0.05  # timers may fire this much early, so one wake-up serves many

Handler = Callable[[Any, float], None]


class Ticker:
    def __init__(self) -> None:
        self.timers: TimerQueue[tuple[str, Any]] = TimerQueue()
        self._handlers: dict[str, Handler] = {}
        self._waiter: asyncio.Future[None] | None = None
        self._sleep_until: float | None = None

    def on(self, kind: str, handler: Handler) -> None:
        """``handler(target, now)`` runs when a ``(kind, target)`` key is due."""
        self._handlers[kind] = handler

    def schedule(self, key: tuple[str, Any], when: float) -> None:
        """Fire ``key`` at ``when`` (up to TICK_SLACK early, batched with its neighbours)."""
        self.timers.schedule(key, when)
        if self._sleep_until is None or when < self._sleep_until - TICK_SLACK:
            self._wake()

    def cancel(self, key: tuple[str, Any]) -> None:
        self.timers.cancel(key)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            deadline = self.timers.next_deadline()
            if deadline is None or deadline > time.monotonic() + TICK_SLACK:
                self._waiter = loop.create_future()
                self._sleep_until = deadline if deadline is not None else float("inf")
                handle = None if deadline is None else loop.call_at(deadline, self._wake)
                try:
                    await self._waiter
                finally:
                    if handle is not None:
                        handle.cancel()
                    self._waiter = None
                    self._sleep_until = None
            now = time.monotonic() + TICK_SLACK
            for kind, target in self.timers.pop_due(now):
                try:
                    self._handlers[kind](target, now)
                except Exception:  # a bug must not stop every other timer
                    log.exception("timer %s failed", kind)
