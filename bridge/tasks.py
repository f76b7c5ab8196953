"""Every background task has an owner: one :class:`TaskOwner` per bridge,
backplane, session and connection (``shared/design/style.md``, "Lifecycle").

The owner starts the task, keeps it until it ends, and on its end observes
its outcome: an exception (never a cancellation) is logged with what the task
was doing and counted in ``bridge_task_errors_total{owner}``, so none is ever
only "Task exception was never retrieved". :meth:`TaskOwner.aclose` cancels
what is left and waits for all of it, as an ``asyncio.TaskGroup`` would when
its block ends; :meth:`TaskOwner.join` waits for the tasks to end on their own
and, if the waiting is cancelled, cancels them too.

Tasks started with ``keeps_alive=False`` (a session's poller) end with their
owner but do not keep it alive: :attr:`TaskOwner.busy` ignores them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("bridge.tasks")

T = TypeVar("T")


class TaskOwner:
    """The tasks of one owner. ``owner`` is a metrics label (bridge, backplane,
    session, connection) and, with ``what``, the tasks' names; ``about`` says
    which one in logs (``session s1``); ``on_idle`` runs when the last task that keeps the
    owner alive has ended; ``count`` counts a task's exception."""

    __slots__ = ("owner", "about", "_tasks", "_quiet", "on_idle", "_count", "_closed")
    # (one per connection: kept small — a dict and a count, no set)

    def __init__(
        self,
        owner: str,
        *,
        about: str = "",
        on_idle: Callable[[], None] | None = None,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self.owner = owner
        #: what the owner is, for logs (a session id, say); not in task names
        self.about = about
        #: task → (what it does, whether it keeps the owner alive)
        self._tasks: dict[asyncio.Task[Any], tuple[str, bool]] = {}
        self._quiet = 0
        self.on_idle = on_idle
        self._count = count
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def busy(self) -> bool:
        """Some task that keeps the owner alive is still running."""
        return len(self._tasks) > self._quiet

    @property
    def closed(self) -> bool:
        return self._closed

    def spawn(
        self, coro: Coroutine[Any, Any, T], what: str, *, keeps_alive: bool = True
    ) -> asyncio.Task[T]:
        """Run ``coro`` as a task of this owner; ``what`` names it in logs.

        After :meth:`aclose` none of the coroutine runs: the task is cancelled
        before its first step."""
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}: {what}")
        if self._closed:
            task.cancel()  # cancelled before its first step: none of it runs
            return task
        self._tasks[task] = (what, keeps_alive)
        if not keeps_alive:
            self._quiet += 1
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        what, keeps_alive = self._tasks.pop(task, ("?", True))
        if not keeps_alive:
            self._quiet -= 1
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                log.error(
                    "%s task failed (%s%s): %s: %s", self.owner, what,
                    f", {self.about}" if self.about else "", type(exc).__name__, exc,
                    exc_info=exc,
                )  # fmt: skip
                if self._count is not None:
                    self._count(self.owner)
        if keeps_alive and not self.busy and self.on_idle is not None and not self._closed:
            self.on_idle()

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def join(self) -> None:
        """Wait until every task has ended on its own. Cancelled while waiting:
        cancels them, waits for them, and re-raises the cancellation."""
        try:
            while self._tasks:
                await asyncio.wait(list(self._tasks))
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Cancel every task and wait for all of them; no task starts after this."""
        self._closed = True
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            # outcomes are observed by _done; a cancellation of aclose() itself
            # still propagates (gather is not shielded)
            await asyncio.gather(*tasks, return_exceptions=True)
