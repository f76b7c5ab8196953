"""Turn any decoded client message into a :class:`Command` or a typed error.

Accepts the envelope shape ``{"type", "id"?, "payload"?}`` and the legacy flat
shape ``{"type":"vote","sessionId":"s1","userId":"u1","vote":"5"}``: every
field other than type/id/sessionId/userId/timestamp moves into ``payload``.
Values no codec can carry (:mod:`.values`) are refused here, at the edge.
Never raises; returns :class:`~bridge.exceptions.ProtocolError` instances.
"""

from __future__ import annotations

from typing import Any

from ..exceptions import BadMessage, Forbidden, ProtocolError
from .types import ENVELOPE_FIELDS, MAX_COMMAND_ID, Command
from .values import problem


def _message_id(raw: dict[Any, Any]) -> str | None:
    """The command id, when it is one the bridge can echo in an ack."""
    value = raw.get("id")
    if isinstance(value, str) and 0 < len(value) <= MAX_COMMAND_ID and problem(value) is None:
        return value
    return None


def normalise(raw: object, session_id: str, user_id: str) -> Command | ProtocolError:
    """Validate ``raw`` for a connection bound to ``session_id``/``user_id``."""
    if not isinstance(raw, dict):
        return BadMessage("a message must be a map with a 'type'")
    mid = _message_id(raw)
    mtype = raw.get("type")
    if not isinstance(mtype, str) or not mtype:
        return BadMessage("'type' must be a non-empty string", id=mid)
    if "id" in raw and raw["id"] is not None and mid is None:
        return BadMessage(f"'id' must be a string of 1-{MAX_COMMAND_ID} characters")
    wrong = problem(raw)
    if wrong is not None:  # it would break an encoder on its way (see values.py)
        return BadMessage(f"cannot carry this message: {wrong}", id=mid)
    if "sessionId" in raw and raw["sessionId"] != session_id:
        return Forbidden("the message names another session", id=mid)
    if "userId" in raw and raw["userId"] != user_id:
        return Forbidden("the message names another user", id=mid)
    payload = raw.get("payload")
    if payload is None:
        merged: dict[str, Any] = {}
    elif isinstance(payload, dict):
        merged = dict(payload)
    else:
        return BadMessage("'payload' must be a map", id=mid)
    for key, value in raw.items():
        if key not in ENVELOPE_FIELDS:
            merged.setdefault(str(key), value)
    return Command(type=mtype, id=mid, payload=merged, timestamp=raw.get("timestamp"))
