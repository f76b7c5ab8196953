"""The Redis backplane (``backplane.kind: redis``): see :mod:`.backplane`.

- :mod:`.keys`: every key and channel of a session;
- :mod:`.scripts`: the Lua scripts, each behind a method with named arguments;
- :mod:`.backplane`: :class:`RedisBackplane`, the port's Redis side.
"""

from .backplane import RedisBackplane
from .keys import Keys

__all__ = ["Keys", "RedisBackplane"]
