"""A deadline queue: schedule keys at times, pop the ones that are due.

One queue serves thousands of timers (heartbeats, graces, keep-alives) with a
single sleeping task in the caller, instead of one sleeping task per timer.
Re-scheduling a key replaces its deadline; stale heap entries are skipped.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TimerQueue(Generic[K]):
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, int] = {}
        self._counter = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def schedule(self, key: K, when: float) -> None:
        """Fire ``key`` at ``when`` (replacing any earlier schedule of it)."""
        n = next(self._counter)
        self._live[key] = n
        heapq.heappush(self._heap, (when, n, key))
        if len(self._heap) > 64 and len(self._heap) > 4 * len(self._live):
            self._compact()

    def cancel(self, key: K) -> None:
        self._live.pop(key, None)

    def _prune(self) -> None:
        heap = self._heap
        while heap and self._live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if self._live.get(e[2]) == e[1]]
        heapq.heapify(self._heap)

    def next_deadline(self) -> float | None:
        self._prune()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: float) -> list[K]:
        """Remove and return every key whose deadline is <= ``now``, earliest first."""
        due: list[K] = []
        heap = self._heap
        while heap:
            when, n, key = heap[0]
            if self._live.get(key) != n:
                heapq.heappop(heap)
                continue
            if when > now:
                break
            heapq.heappop(heap)
            del self._live[key]
            due.append(key)
        return due
