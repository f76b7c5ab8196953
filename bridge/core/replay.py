"""The per-session replay log: seq → message, bounded by count, bytes and age.

Rules:

1. Seqs are assigned here, from 1, strictly increasing within one ``epoch``.
2. The log always keeps the latest message of each stream type, even past
   its bounds: a client that cannot resume gets those as its snapshot.
3. A reader resumes from ``last_seq`` only when every seq after it is still
   here, contiguously; otherwise it gets a reset (the snapshot). Never a gap.
4. A message is encoded once per codec (``Entry.encoded``), whoever reads it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..protocol import sse
from ..protocol.codecs import JSON, Codec
from ..protocol.frames import OP_BINARY, OP_TEXT, frame
from ..protocol.messages import stream
from ..protocol.types import Message


@dataclass(slots=True, eq=False)
class Entry:
    """One stream message, with its encodings cached per codec."""

    seq: int
    type: str
    message: Message
    at: float
    json: bytes
    _encoded: dict[str, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.json)

    def encoded(self, codec: Codec) -> bytes:
        if codec.name == "json":
            return self.json
        data = self._encoded.get(codec.name)
        if data is None:
            data = self._encoded[codec.name] = codec.encode(self.message)
        return data

    def encoded_as(self, codec_name: str) -> bytes:
        """The encoding cached for ``codec_name`` (JSON when it was never asked for)."""
        return self._encoded.get(codec_name, self.json)

    def sse_event(self) -> bytes:
        """The whole SSE event (``event:``, ``id: <seq>``, ``data: <json>``), built once."""
        data = self._encoded.get("sse")
        if data is None:
            data = self._encoded["sse"] = sse.event(self.type, self.json, self.seq)
        return data

    def ws_frame(self, codec: Codec) -> bytes:
        """The whole WebSocket frame (header + payload), built once per codec."""
        key = "ws:" + codec.name
        data = self._encoded.get(key)
        if data is None:
            op = OP_BINARY if codec.binary else OP_TEXT
            data = self._encoded[key] = frame(self.encoded(codec), op)
        return data


@dataclass(frozen=True, slots=True)
class Resumed:
    """Every entry after the reader's last_seq, in order (possibly none)."""

    entries: list[Entry]


@dataclass(frozen=True, slots=True)
class Reset:
    """The reader must drop its stream state; ``entries`` is the snapshot."""

    entries: list[Entry]
    reason: str


class ReplayLog:
    def __init__(self, epoch: str, *, max_messages: int, max_bytes: int, max_age: float) -> None:
        self.epoch = epoch
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.head = 0
        self.evictions = 0
        self._entries: deque[Entry] = deque()
        self._latest: dict[str, Entry] = {}
        # Latest-of-type entries that fell off the front of the contiguous window.
        self._pinned: list[Entry] = []
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries) + len(self._pinned)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def first_seq(self) -> int:
        """The lowest seq of the contiguous window (head + 1 when it is empty)."""
        return self._entries[0].seq if self._entries else self.head + 1

    def latest(self, type_: str) -> Entry | None:
        return self._latest.get(type_)

    def append(self, type_: str, payload: Any, now: float) -> Entry:
        """Assign the next seq to a stream message and keep it."""
        return self._add(self.head + 1, type_, payload, now)

    def accept(self, seq: int, type_: str, payload: Any, now: float) -> Entry | None:
        """Keep a message whose seq was assigned elsewhere (a shared backplane).

        A seq at or below the head is a repeat: None. A seq past ``head + 1``
        means the ones between are not coming: the contiguous window restarts
        at ``seq`` (the latest of each type stays), so a reader whose last_seq
        falls in the hole gets a reset, never a gap.
        """
        if seq <= self.head:
            return None
        if seq > self.head + 1:
            while self._entries:
                self._drop_front()
        return self._add(seq, type_, payload, now)

    def _add(self, seq: int, type_: str, payload: Any, now: float) -> Entry:
        # encoded before anything changes: a payload the encoder refuses leaves
        # the log as it was (no seq is used up, no hole in the window)
        message = stream(type_, seq, payload)
        entry = Entry(seq, type_, message, now, JSON.encode(message))
        self.head = seq
        old = self._latest.get(type_)
        if old is not None and old in self._pinned:
            self._pinned.remove(old)
            self._bytes -= old.size
            self.evictions += 1
        self._latest[type_] = entry
        self._entries.append(entry)
        self._bytes += entry.size
        self.trim(now)
        return entry

    def _over(self, now: float) -> bool:
        front = self._entries[0]
        return (
            len(self._entries) > self.max_messages
            or self._bytes > self.max_bytes
            or front.at < now - self.max_age
        )

    def trim(self, now: float) -> None:
        """Drop entries past the bounds, oldest first, keeping the latest of each type."""
        while self._entries and self._over(now):
            self._drop_front()

    def _drop_front(self) -> None:
        """The oldest entry leaves the contiguous window (pinned if it is the
        latest of its type)."""
        entry = self._entries.popleft()
        if self._latest.get(entry.type) is entry:
            self._pinned.append(entry)
        else:
            self._bytes -= entry.size
            self.evictions += 1

    def snapshot(self) -> list[Entry]:
        """The latest entry of each type, in seq order."""
        return sorted(self._latest.values(), key=lambda e: e.seq)

    def read(self, epoch: str | None, last_seq: int | None, now: float) -> Resumed | Reset:
        """What a reader that has processed ``last_seq`` of ``epoch`` gets next."""
        self.trim(now)
        if epoch is None or last_seq is None:
            return Reset(self.snapshot(), "fresh")
        if epoch != self.epoch:
            return Reset(self.snapshot(), "epoch")
        if not self.first_seq - 1 <= last_seq <= self.head:
            return Reset(self.snapshot(), "expired" if last_seq < self.head else "ahead")
        start = last_seq - self.first_seq + 1
        return Resumed([self._entries[i] for i in range(start, len(self._entries))])
