"""Which values every codec can carry, checked before they go anywhere.

A message or a state travels as JSON (to SSE and poll clients, to the legacy
app, into Redis) and as msgpack. Both must be able to encode it, or the
encoder raises wherever it meets the value first: in a poller, in the middle
of a fan-out. So values are checked where they enter (a client's message, an
upstream state) and refused there:

- numbers: finite floats only (JSON has no ``NaN``/``Infinity``, though
  Python's decoder reads ``1e999`` as infinity); integers within
  msgpack's range, ``-2**63 .. 2**64 - 1``;
- strings that are valid Unicode (a lone surrogate such as ``"\\ud800"``,
  which JSON can spell and UTF-8 cannot encode, is refused), booleans, null;
  lists; maps with such string keys (what a JSON object is; msgpack binary
  values and other keys are refused);
- at most ``MAX_DEPTH`` levels of nesting.

:func:`problem` never raises: it returns what is wrong, or None.
"""

from __future__ import annotations

import math
from typing import Any

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
MAX_DEPTH = 100


def _encodable(text: str) -> bool:
    """UTF-8 can encode it (every str but one holding a lone surrogate)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def problem(value: Any, max_depth: int = MAX_DEPTH) -> str | None:
    """Why ``value`` cannot be encoded by every codec, or None when it can."""
    # Iterative, so a deep value costs no recursion; each item is (value, depth).
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return "a string is not valid Unicode (a lone surrogate)"
            continue
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                return "an integer does not fit in 64 bits"
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                return "a number is not finite (NaN or infinity)"
            continue
        if depth > max_depth:
            return f"nested deeper than {max_depth} levels"
        if isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            for key, v in item.items():
                if not isinstance(key, str):
                    return "a map key is not a string"
                if not _encodable(key):
                    return "a string is not valid Unicode (a lone surrogate)"
                stack.append((v, depth + 1))
        else:
            return f"a value of type {type(item).__name__} is not allowed"
    return None
