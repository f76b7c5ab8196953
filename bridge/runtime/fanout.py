"""Fan-out: one stream entry to every connection of a session.

The entry is encoded once per codec (``Entry.encoded``/``ws_frame``) and the
same bytes go to every connection. Writing never waits: each connection
queues what it cannot write at once, and one past its send-queue cap closes
itself with 1013. A connection that fails to take an entry (a bug in its
adapter) is closed with 1011 and logged; the others still get it.
"""

from __future__ import annotations

import logging
import time

from ..core.replay import Entry
from ..metrics import Metrics
from .session import Session

log = logging.getLogger("bridge.runtime")


class Fanout:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def broadcast(self, session: Session, entry: Entry, seen_at: float | None = None) -> None:
        """Write one stream entry to every connection of the session."""
        counts: dict[tuple[str, str], int] = {}
        for conn in list(session.conns.values()):
            try:
                delivered = conn.deliver(entry)
            except Exception:
                log.exception(
                    "delivering seq %d of session %s to a %s client failed; closing it",
                    entry.seq, session.id, conn.transport,
                )  # fmt: skip
                conn.close(1011, "internal error", "internal_error")
                continue
            if delivered:
                key = (conn.transport, conn.codec.name)
                counts[key] = counts.get(key, 0) + 1
        for (transport, codec), n in counts.items():
            self.metrics.deliveries.labels(transport).inc(n)
            self.metrics.messages.labels("out", entry.type, codec).inc(n)
            self.metrics.wire_bytes.labels(transport, "encoded").inc(
                n * len(entry.encoded_as(codec))
            )
        if seen_at is not None:
            self.metrics.delivery_latency.observe(time.monotonic() - seen_at)
        evicted = session.hub.log.evictions - session.evictions_seen
        if evicted:
            session.evictions_seen += evicted
            self.metrics.replay_evictions.inc(evicted)
