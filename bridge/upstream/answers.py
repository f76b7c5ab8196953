"""What the bridge takes from an answer of the app (docs/configuration.md, "Routes").

Pure functions; :mod:`bridge.upstream.client` calls them on every 2xx of a
route that uses its answer (``capture``, ``reject_when``, and every state route):

- :func:`decode_json`: strict — the content type must say JSON and the body
  must be JSON (HTML with a 200 is a failure, not ``ok``);
- :func:`rejection`: the message when ``reject_when``'s path holds a truthy value;
- :func:`take_captures`: the values to capture, each at most
  :data:`MAX_CAPTURE_BYTES` as compact JSON and carried by every codec.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import Capture
from ..exceptions import UpstreamUnreadable
from ..protocol.values import problem
from .templates import MISSING, lookup

#: the largest value a capture may hold (compact JSON)
MAX_CAPTURE_BYTES = 4096


class Unusable(UpstreamUnreadable):
    """A 2xx answer the route cannot use; ``reason`` is the metric label."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Captured:
    user: dict[str, Any] = field(default_factory=dict)
    session: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.user or self.session)


def decode_json(name: str, headers: Mapping[str, str], body: bytes) -> Any:
    """The answer as JSON. Raises Unusable when it is not JSON by its content type
    or by its bytes."""
    ctype = headers.get("Content-Type", "")
    media = ctype.split(";", 1)[0].strip().lower()
    if not (media.endswith("/json") or media.endswith("+json")):
        shown = media or "no content type"
        raise Unusable(f"{name}: expected a JSON answer, got {shown}", "content_type")
    try:
        return json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError included
        raise Unusable(f"{name}: the answer is not valid JSON ({exc})", "invalid") from None


def _path(dotted: str) -> tuple[str, ...]:
    return tuple(dotted.split("."))


def rejection(decoded: Any, reject_when: str | None) -> str | None:
    """The rejection message when ``reject_when`` holds a truthy value, else None."""
    if reject_when is None:
        return None
    value = lookup(decoded, _path(reject_when))
    if value is MISSING or not value:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def take_captures(name: str, decoded: Any, capture: Capture | None) -> Captured:
    """The values ``capture`` names. Raises Unusable when one is missing, too big,
    or a value no codec can carry."""
    out = Captured()
    if capture is None:
        return out
    for scope, wanted in (("user", capture.user), ("session", capture.session)):
        target: dict[str, Any] = getattr(out, scope)
        for key, dotted in wanted.items():
            value = lookup(decoded, _path(dotted))
            if value is MISSING:
                raise Unusable(f"{name} answer has no {dotted}", "capture")
            wrong = problem(value)
            if wrong is not None:
                raise Unusable(f"{name} answer's {dotted} cannot be kept: {wrong}", "capture")
            size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())
            if size > MAX_CAPTURE_BYTES:
                raise Unusable(
                    f"{name} answer's {dotted} is {size} bytes (over {MAX_CAPTURE_BYTES})",
                    "capture",
                )
            target[key] = value
    return out
