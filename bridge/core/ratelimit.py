"""A token bucket, sans-I/O: ``rate`` tokens a second, at most ``burst`` saved.

One per client for ``limits.commands_per_second``: a client may send a burst
(its outbox flushing after a reconnect), then ``rate`` commands a second.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("rate", "burst", "_tokens", "_at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; False means over the limit."""
        elapsed = max(0.0, now - self._at)
        self._at = max(self._at, now)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def retry_after(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are there (0 when they are)."""
        missing = cost - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def full(self, now: float) -> bool:
        """True when the bucket has refilled to ``burst`` by ``now``: it is then the
        same as a new one, so its owner may forget it (and make a new one later)."""
        return self._tokens + max(0.0, now - self._at) * self.rate >= self.burst
