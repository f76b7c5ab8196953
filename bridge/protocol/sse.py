"""Server-sent events framing (WHATWG HTML, "Server-sent events", §9.2.6).

Each bridge message is one event: ``event: <type>``, ``id: <seq>`` for stream
messages only, and one ``data:`` line holding the whole message as JSON (our
JSON encoder escapes newlines inside strings, so the data is one line).
Formatted once per stream message and written to every SSE connection.
"""

from __future__ import annotations


def event(type_: str, data: bytes, id: int | None = None) -> bytes:
    """One complete event, terminated by the blank line that dispatches it."""
    head = b"event: " + type_.encode("ascii", "replace") + b"\n"
    if id is not None:
        head += b"id: %d\n" % id
    return head + b"data: " + data + b"\n\n"


#: Sent first on every stream: how long EventSource waits before its own reconnect.
def retry(milliseconds: int) -> bytes:
    return b"retry: %d\n\n" % milliseconds
