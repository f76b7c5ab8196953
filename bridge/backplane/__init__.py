"""Backplanes: what bridge instances share. ``memory`` (one process) or ``redis`` (many).

See :mod:`bridge.backplane.base` for the interface the runtime uses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Backplane, BackplaneUnavailable
from .memory import MemoryBackplane

if TYPE_CHECKING:
    from ..runtime import Bridge

__all__ = ["Backplane", "BackplaneUnavailable", "MemoryBackplane", "make_backplane"]


def make_backplane(bridge: Bridge) -> Backplane:
    if bridge.cfg.backplane.kind == "redis":
        from .redis import RedisBackplane  # redis-py is only imported when used

        return RedisBackplane(bridge)
    return MemoryBackplane(bridge)
