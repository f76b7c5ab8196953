"""A session's gate: at most ``upstream.session_concurrency`` of its commands at
the app at once, let through in arrival order.

Read-modify-write apps (the whole room rewritten per vote, no locking) lose
concurrent updates; with the default of 1, ten votes sent at once reach such an
app one after the other and all ten are kept. The gate is this instance's; with
a shared backplane its slot is also taken in Redis (``Backplane.command_slot``)
so the order holds across every instance.

Cancellation-safe: a waiter cancelled before its turn leaves the queue; one
cancelled as its turn came passes the turn on.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Gate:
    __slots__ = ("limit", "_inside", "_waiting")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._inside = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def inside(self) -> int:
        return self._inside

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def acquire(self) -> None:
        if self._inside < self.limit and not self._waiting:
            self._inside += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # the turn came as we were cancelled: pass it on
            elif fut in self._waiting:
                self._waiting.remove(fut)
            raise

    def release(self) -> None:
        """One holder is done: the next waiter (in arrival order) goes in."""
        self._inside -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self._inside < self.limit:
            fut = self._waiting.popleft()
            if not fut.done():
                self._inside += 1
                fut.set_result(None)

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
