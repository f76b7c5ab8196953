"""Identifiers and envelope types of protocol v1."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NewType

SessionId = NewType("SessionId", str)
UserId = NewType("UserId", str)
ClientId = NewType("ClientId", str)
Seq = NewType("Seq", int)

Message = dict[str, Any]
"""A decoded wire message: a map with at least ``type``."""

ID_RE = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
MAX_COMMAND_ID = 64

#: Query parameters with a meaning of their own; every other one is a client param.
RESERVED_PARAMS = frozenset(
    {"sessionId", "userId", "resumeToken", "lastSeq", "epoch", "cursor", "wait", "transport"}
)
#: Envelope fields that stay at the top level when normalising the legacy flat shape.
ENVELOPE_FIELDS = frozenset({"type", "id", "sessionId", "userId", "timestamp", "payload"})
#: Message types with seq, kept in the replay log.
STREAM_TYPES = ("session", "presence")
#: Client message types the bridge answers itself and never forwards.
CONTROL_TYPES = frozenset({"heartbeat", "pong", "ping"})


def valid_id(value: object) -> bool:
    """True for a sessionId/userId: 1-128 chars of ``[A-Za-z0-9._:@-]``."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Command:
    """A normalised client message: ``payload`` holds everything but the envelope."""

    type: str
    id: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)
    timestamp: Any = None

    @property
    def is_control(self) -> bool:
        return self.type in CONTROL_TYPES
