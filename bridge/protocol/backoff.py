"""How long to wait before trying again, sans-I/O: no clock, no randomness.

Two pure functions, for every retry loop in the project:

- :func:`delay`: exponential backoff with jitter,
  ``min(maximum, initial × factor^(attempt−1)) × (1 − jitter × rnd)``.
  Unit-free: ``initial`` and ``maximum`` in seconds give seconds (upstream
  retries, Redis reconnects), in milliseconds give milliseconds (the
  welcome's ``reconnect`` block). The caller draws ``rnd`` from [0, 1) and
  keeps the attempt counter.
- :func:`reconnect_delay`: what a client waits once its transport ended,
  given that backoff, the bridge's ``retry_after`` hint and why it ended
  (:func:`ending`, from the close code, the HTTP status or the ``reconnect``
  message's reason). protocol.md, "Close codes": after a drain (1012) a
  uniform draw from (0, retry_after), so that the clients of a draining
  instance do not come back all at once; after an overload (1013, 503) at
  least retry_after.
"""

from __future__ import annotations

import enum
import math
from typing import Final

#: ``factor^(attempt−1)`` stops growing at 2^1000: a float overflows past ~2^1024,
#: and no maximum is reached later than that from any initial delay worth having.
MAX_GROWTH_LOG2: Final = 1000


def delay(
    attempt: int,
    initial: float,
    maximum: float,
    *,
    factor: float = 2.0,
    jitter: float = 0.0,
    rnd: float = 0.0,
) -> float:
    """The wait before try ``attempt`` (≥ 1: the first retry waits about ``initial``).

    ``factor`` ≥ 1; ``jitter`` in [0, 1] takes up to that fraction off the
    delay, ``rnd`` in [0, 1] (a uniform draw the caller made) says how much.
    Raises ValueError for arguments out of those ranges.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be in [0, 1], got {jitter}")
    if not 0 <= rnd <= 1:
        raise ValueError(f"rnd must be in [0, 1], got {rnd}")
    exponent = attempt - 1
    if factor > 1:
        exponent = min(exponent, int(MAX_GROWTH_LOG2 / math.log2(factor)))
    return min(maximum, initial * factor**exponent) * (1 - jitter * rnd)


class Ending(enum.Enum):
    """Why a transport ended (or a connect failed), as far as the wait is concerned."""

    #: anything else: a network failure, a timeout, 1001, 1011, 4408 ...: plain backoff
    LOST = "lost"
    #: close 1012, or a ``reconnect`` message with reason ``draining``
    DRAINING = "draining"
    #: close 1013, HTTP 503, or a ``reconnect`` message with another reason
    OVERLOADED = "overloaded"


def ending(
    close_code: int | None = None, status: int | None = None, reason: str | None = None
) -> Ending:
    """Classify an end: the ``reconnect`` message's ``reason`` when one came, else
    the WebSocket close code, else the HTTP status of the refused request."""
    if reason is not None:
        return Ending.DRAINING if reason == "draining" else Ending.OVERLOADED
    if close_code == 1012:
        return Ending.DRAINING
    if close_code == 1013 or status == 503:
        return Ending.OVERLOADED
    return Ending.LOST


def reconnect_delay(backoff: float, hint: float | None, why: Ending, rnd: float) -> float:
    """The wait before reconnecting.

    ``backoff``: :func:`delay` for this attempt; ``hint``: the bridge's
    ``retry_after`` (the ``reconnect`` message's ``retry_after_ms`` or a
    ``Retry-After`` header, in the unit of ``backoff``), None when it gave
    none; ``rnd``: a uniform draw from [0, 1). Draining: ``hint × rnd``;
    overloaded: ``max(backoff, hint)``; lost, or no hint: ``backoff``.
    """
    if why is Ending.LOST or hint is None:
        return backoff
    if why is Ending.DRAINING:
        return hint * rnd
    return max(backoff, hint)
