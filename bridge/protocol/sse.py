"""Server-sent events framing (WHATWG HTML, "Server-sent events", §9.2.6).

Each bridge message is one event: ``event: <type>``, ``id: <seq>`` for stream
messages only, and one ``data:`` line holding the whole message as JSON (our
JSON encoder escapes newlines inside strings, so the data is one line).
Formatted once per stream message and written to every SSE connection.

:class:`EventParser` is the other direction, for clients: bytes in, in any
chunks, complete events out, by the rules of §9.2.6 "Interpreting an event
stream" (any event stream, not only the bridge's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from ..exceptions import MessageTooBig


def event(type_: str, data: bytes, id: int | None = None) -> bytes:
    """One complete event, terminated by the blank line that dispatches it."""
    head = b"event: " + type_.encode("ascii", "replace") + b"\n"
    if id is not None:
        head += b"id: %d\n" % id
    return head + b"data: " + data + b"\n\n"


#: Sent first on every stream: how long EventSource waits before its own reconnect.
def retry(milliseconds: int) -> bytes:
    return b"retry: %d\n\n" % milliseconds


#: A line ends at CR LF, LF or CR (§9.2.5 "end-of-line").
_EOL: Final = re.compile(rb"\r\n?|\n")
_BOM: Final = b"\xef\xbb\xbf"
#: Default cap on an unfinished line and on one event's data, in bytes/characters.
MAX_SIZE: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event, as an EventSource would hand it to a listener.

    ``type``: the ``event`` field, ``"message"`` without one; ``data``: the
    ``data`` lines joined with LF; ``id``: the stream's last event ID when it
    was dispatched (``id`` fields persist across events, ``""`` before any);
    ``retry``: the reconnection time in ms the stream last set, None if never.
    """

    type: str
    data: str
    id: str = ""
    retry: int | None = None


class EventParser:
    """Incremental event-stream parser: :meth:`feed` bytes, get the events they complete.

    Never raises on input. An unfinished line, or one event's data, longer
    than ``max_size`` stops it: :attr:`error` is set, every later :meth:`feed`
    returns nothing, and the caller should drop the stream. Bytes after the
    last line end wait for the next chunk; an unfinished event at the end of
    the stream is never dispatched (§9.2.6).
    """

    def __init__(self, max_size: int = MAX_SIZE) -> None:
        self.max_size = max_size
        #: the last event ID buffer: what ``Last-Event-ID`` would send on a reconnect
        self.last_event_id = ""
        #: the reconnection time (ms) the stream set with ``retry``, None until then
        self.retry: int | None = None
        self.error: MessageTooBig | None = None
        self._line = bytearray()  # the unfinished line
        self._after_cr = (
            False  # the last chunk ended with CR: a LF opening the next one is its pair
        )
        self._first = True  # a byte order mark may open the first line only
        self._type = "message"  # the event type buffer; empty means "message"
        self._data: list[str] = []
        self._data_size = 0

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by ``chunk`` (maybe none), in stream order."""
        events: list[Event] = []
        if self.error is not None or not chunk:
            return events
        start = 1 if self._after_cr and chunk[:1] == b"\n" else 0
        self._after_cr = chunk[-1:] == b"\r"
        for end in _EOL.finditer(chunk, start):
            self._line += chunk[start : end.start()]
            ok = self._field(bytes(self._line), events)
            self._line.clear()
            if not ok:
                return events
            start = end.end()
        self._line += chunk[start:]
        if len(self._line) > self.max_size:
            self._fail(f"an unfinished line is over {self.max_size} bytes")
        return events

    def _field(self, raw: bytes, events: list[Event]) -> bool:
        """Interpret one complete line; False once the parser has stopped."""
        if self._first:
            self._first = False
            raw = raw.removeprefix(_BOM)
        line = raw.decode(errors="replace")  # UTF-8, invalid bytes as U+FFFD
        if not line:
            self._dispatch(events)
            return True
        # A line starting with ":" is a comment: its field name is empty, which is
        # none of the names below, so it is ignored like any unknown field.
        name, colon, value = line.partition(":")  # no colon: the line is the name, value ""
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value or "message"
        elif name == "data":
            self._data.append(value)
            self._data_size += len(value) + 1
            if self._data_size > self.max_size:
                self._fail(f"an event's data is over {self.max_size} characters")
                return False
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry = int(value)
        # any other field is ignored
        return True

    def _dispatch(self, events: list[Event]) -> None:
        if self._data:
            data = "\n".join(self._data)
            events.append(Event(self._type, data, self.last_event_id, self.retry))
        self._type = "message"
        self._data = []
        self._data_size = 0

    def _fail(self, message: str) -> None:
        self.error = MessageTooBig(message)
        self._line.clear()
        self._data = []
