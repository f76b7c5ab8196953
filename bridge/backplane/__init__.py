"""Backplanes: what bridge instances share. ``memory`` (one process) or ``redis`` (many).

See :mod:`bridge.backplane.base` for the port between the runtime and a backplane.
"""

from __future__ import annotations

from ..config import Config
from ..metrics import Metrics
from .base import Backplane, BackplaneUnavailable, Events, SessionView
from .memory import MemoryBackplane

__all__ = [
    "Backplane",
    "BackplaneUnavailable",
    "Events",
    "MemoryBackplane",
    "SessionView",
    "make_backplane",
]


def make_backplane(cfg: Config, metrics: Metrics, events: Events) -> Backplane:
    if cfg.backplane.kind == "redis":
        from .redis import RedisBackplane  # redis-py is only imported when used

        return RedisBackplane(cfg, metrics, events)
    return MemoryBackplane(events)
