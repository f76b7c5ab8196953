"""SSE transport at ``paths.events`` (WHATWG server-sent events, via aiohttp-sse).

Same shape as the WebSocket adapter: admit, welcome, stream, end. The
request handler itself is the connection's writer: it waits for queued
events and writes them, so an SSE client costs no task of its own. Stream
events are formatted once per message (``Entry.sse_event``). The client
sends commands with ``POST paths.messages``.

Liveness: an ``event: ping`` every heartbeat interval (a named event the page
can see, not a comment EventSource hides); a failed write ends the transport.
aiohttp-sse's own comment pings are pushed out of the way (the bridge's ticker
sends the pings), and its TCP_USER_TIMEOUT makes the kernel give up on a peer
that stops acknowledging.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from ..core.replay import Entry
from ..protocol import sse
from ..protocol.codecs import JSON
from ..protocol.types import Message
from ..runtime import Bridge, Identity, Refusal
from .common import (
    BRIDGE,
    ClientConnection,
    SendQueue,
    admit,
    cors_headers,
    refusal_response,
    transport_disabled,
)

log = logging.getLogger("bridge.transports.sse")

#: aiohttp-sse pings by comment every N s; the bridge sends its own ping events.
NO_LIBRARY_PINGS = 365 * 24 * 3600.0


class SSEConnection(ClientConnection):
    __slots__ = ("_bridge", "_queue", "_wake")

    transport = "sse"
    codec = JSON
    sends_pings = True
    rx_timeout = False  # the client speaks over POST; a failed write ends the stream

    def __init__(self, bridge: Bridge, who: Identity, now: float) -> None:
        super().__init__(who, now, count=bridge.count_task_error)
        self._bridge = bridge
        self._queue = SendQueue(bridge.cfg.limits.send_queue_bytes)
        self._wake = asyncio.Event()

    def _enqueue(self, data: bytes, kind: str | None = None) -> bool:
        if self.closed:
            return False
        accepted, collapsed = self._queue.put(data, kind)
        if collapsed:
            self._bridge.metrics.slow_consumer_collapses.labels("sse").inc()
        if not accepted:
            self._bridge.metrics.slow_consumer_closes.labels("sse").inc()
            self.close(1013, "slow consumer: send queue full", "slow_consumer")
            return False
        self._wake.set()
        return True

    def start(self, welcome: Message, backlog: list[Entry]) -> None:
        retry_ms = int(self._bridge.cfg.reconnect.initial * 1000)
        self._enqueue(sse.retry(retry_ms) + sse.event("welcome", JSON.encode(welcome)))
        for entry in backlog:
            self.deliver(entry)

    def deliver(self, entry: Entry) -> bool:
        return self._enqueue(entry.sse_event(), entry.type)

    def send(self, message: Message) -> None:
        self._enqueue(sse.event(str(message["type"]), JSON.encode(message)))

    def close(self, code: int, reason: str, label: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = label or {1001: "shutdown", 1000: "replaced"}.get(code, "server")
        self._wake.set()

    async def run(self, resp: EventSourceResponse) -> None:
        """Write queued events until the connection is closed or a write fails."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                data = self._queue.get()
                try:
                    await resp.write(data)
                except (ConnectionError, RuntimeError):
                    self.closed = True
                    self.close_reason = "client"
                    return
            if self.closed:
                return


async def events_handler(request: web.Request) -> web.StreamResponse:
    """``GET paths.events``: an event stream; welcome first, then the session's stream."""
    bridge = request.app[BRIDGE]
    if (off := transport_disabled(bridge, "sse")) is not None:
        return off
    admitted = await admit(request, "sse", last_seq_header=request.headers.get("Last-Event-ID"))
    if isinstance(admitted, Refusal):
        return refusal_response(admitted, bridge.cfg.reconnect.initial)
    resp = EventSourceResponse(
        ping_interval=NO_LIBRARY_PINGS,
        sep="\n",
        headers=cors_headers(bridge.cfg, request.headers.get("Origin")),
    )
    with admitted:  # released unless attached: prepare() may fail (the client went away)
        await resp.prepare(request)
        conn = SSEConnection(bridge, admitted.who, time.monotonic())
        admitted.attach(conn)
    del admitted  # attached: the connection holds what it needs (not kept for its lifetime)
    bridge.watch(conn)
    try:
        await conn.run(resp)
    except Exception:
        log.exception("SSE stream of session %s failed", conn.session_id)
        conn.close_reason = "internal_error"
    finally:
        conn.closed = True
        bridge.unwatch(conn)
        bridge.detach(conn, conn.close_reason)
        resp.stop_streaming()
        await conn.tasks.join()
    if request.transport is not None and not request.transport.is_closing():
        try:
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass
    return resp
