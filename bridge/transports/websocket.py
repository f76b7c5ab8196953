"""WebSocket transport at ``paths.websocket`` (RFC 6455 via aiohttp).

This adapter only moves bytes and owns its timers; the runtime decides what
to send. Stream entries are written as pre-built frames (built once per
codec, see ``Entry.ws_frame``) straight to the socket's transport when the
connection negotiated no compression; with permessage-deflate each frame is
compressed by aiohttp's writer from a bounded per-connection queue.
Either way a client whose unsent bytes pass ``limits.send_queue_bytes`` is
closed with 1013 and resumes later; it never delays anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import WSMsgType, web

from ..core.replay import Entry
from ..protocol.codecs import JSON, SUBPROTOCOLS, Codec
from ..protocol.frames import OP_BINARY, OP_TEXT, frame
from ..protocol.types import Message
from ..runtime import Bridge, Identity, Refusal
from .common import BRIDGE, ClientConnection, SendQueue, admit, json_error, transport_disabled

log = logging.getLogger("bridge.transports.websocket")

PONG = '{"type":"pong"'
FLUSH_CHECK = 0.05  # seconds between looks at a slow consumer's socket


class WebSocketConnection(ClientConnection):
    __slots__ = (
        "ws", "codec", "_bridge", "_tr", "_direct", "_cap", "_queue", "_drainer",
        "_op", "_held", "_held_since",
    )  # fmt: skip

    transport = "websocket"
    sends_pings = True
    rx_timeout = True

    def __init__(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        bridge: Bridge,
        who: Identity,
        codec: Codec,
        now: float,
    ) -> None:
        super().__init__(who, now, count=bridge.count_task_error)
        self.ws = ws
        self.codec = codec
        self._bridge = bridge
        self._tr = request.transport
        self._direct = not ws.compress and self._tr is not None
        self._cap = bridge.cfg.limits.send_queue_bytes
        self._queue = SendQueue(self._cap)
        self._drainer: asyncio.Task[None] | None = None
        self._op = OP_BINARY if codec.binary else OP_TEXT
        self._held: dict[str, Entry] | None = None
        self._held_since = 0.0

    # -- writing
    def _write_frame(self, data: bytes) -> bool:
        tr = self._tr
        if tr is None or tr.is_closing():
            self.closed = True
            return False
        if tr.get_write_buffer_size() + len(data) > self._cap:
            self._slow()
            return False
        tr.write(data)
        return True

    def _enqueue(self, payload: bytes, kind: str | None = None) -> bool:
        accepted, collapsed = self._queue.put(payload, kind)
        if collapsed:
            self._bridge.metrics.slow_consumer_collapses.labels("websocket").inc()
        if not accepted:
            self._slow()
            return False
        if self._drainer is None:
            self._drainer = self.tasks.spawn(self._drain(), "writing to a websocket")
        return True

    async def _drain(self) -> None:
        try:
            while self._queue:
                payload = self._queue.get()
                await self.ws.send_frame(payload, WSMsgType(self._op))
        except (ConnectionError, RuntimeError):
            self.closed = True
        finally:
            self._drainer = None

    def _slow(self) -> None:
        self._bridge.metrics.slow_consumer_closes.labels("websocket").inc()
        self.close(1013, "slow consumer: send queue full", "slow_consumer")

    def start(self, welcome: Message, backlog: list[Entry]) -> None:
        self.send(welcome)
        for entry in backlog:
            self.deliver(entry)

    def deliver(self, entry: Entry) -> bool:
        if self.closed:
            return False
        if self._direct:
            if self._held is not None:
                return self._hold(entry)
            tr = self._tr
            if tr is not None and tr.get_write_buffer_size() > self._cap // 2:
                # Past the high-water mark: stream messages are held, newest per type only
                # (each is a whole snapshot), until the socket drains.
                now = time.monotonic()
                self._held = {}
                self._held_since = now
                self._bridge.schedule(("flush", self), now + FLUSH_CHECK)
                return self._hold(entry)
            return self._write_frame(entry.ws_frame(self.codec))
        return self._enqueue(entry.encoded(self.codec), entry.type)

    def _hold(self, entry: Entry) -> bool:
        assert self._held is not None
        if entry.type in self._held:
            self._bridge.metrics.slow_consumer_collapses.labels("websocket").inc()
        self._held[entry.type] = entry
        return True

    def flush_held(self, now: float) -> float | None:
        """Called by the bridge's ticker while snapshots are held: write them once the
        socket drained below the low-water mark; close with 1013 if it stays stuck.
        Returns when to look again (None: done)."""
        held = self._held
        tr = self._tr
        if held is None or self.closed or tr is None or tr.is_closing():
            self._held = None
            return None
        if tr.get_write_buffer_size() <= self._cap // 8:
            self._held = None
            for entry in sorted(held.values(), key=lambda e: e.seq):
                if not self._write_frame(entry.ws_frame(self.codec)):
                    break
            return None
        if now - self._held_since > 2 * self._bridge.cfg.heartbeat.interval:
            self._held = None
            self._slow()
            return None
        return now + FLUSH_CHECK

    def send(self, message: Message) -> None:
        if self.closed:
            return
        payload = self.codec.encode(message)
        if self._direct:
            self._write_frame(frame(payload, self._op))
        else:
            self._enqueue(payload)

    def close(self, code: int, reason: str, label: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = label or _label_for(code)
        self.tasks.spawn(self._close(code, reason), "closing a websocket")

    async def _close(self, code: int, reason: str) -> None:
        drainer = self._drainer
        if drainer is not None:  # what was queued before the close goes first
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(drainer), 2.0)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.close(code=code, message=reason.encode("utf-8")[:120])


def _label_for(code: int) -> str:
    return {
        1000: "replaced",
        1001: "shutdown",
        1012: "drain",
        1013: "overload",
        4408: "heartbeat_timeout",
    }.get(code, "server")


async def websocket_handler(request: web.Request) -> web.StreamResponse:
    """Admit (join upstream if needed), upgrade, welcome, then read until the client goes."""
    bridge = request.app[BRIDGE]
    cfg = bridge.cfg
    if (off := transport_disabled(bridge, "websocket")) is not None:
        return off
    protocols = [p for p, c in SUBPROTOCOLS.items() if c is JSON or cfg.codecs.msgpack]
    ws = web.WebSocketResponse(
        protocols=protocols,
        compress=cfg.codecs.websocket_deflate,
        max_msg_size=cfg.limits.max_message_bytes,
        autoping=False,
    )
    if not ws.can_prepare(request).ok:
        return json_error(400, "bad_request", "expected a WebSocket upgrade request")
    admitted = await admit(request, "websocket")
    if isinstance(admitted, Refusal):
        # Browsers cannot read an HTTP status on a failed upgrade: refuse with a close code.
        await ws.prepare(request)
        await ws.close(code=admitted.close_code, message=admitted.message.encode()[:120])
        return ws
    with admitted:  # released unless attached: prepare() may fail (the client went away)
        await ws.prepare(request)
        codec = SUBPROTOCOLS.get(ws.ws_protocol or "", JSON)
        conn = WebSocketConnection(ws, request, bridge, admitted.who, codec, time.monotonic())
        admitted.attach(conn)
    del admitted  # attached: the connection holds what it needs (not kept for its lifetime)
    bridge.watch(conn)
    try:
        # Reading never waits for work: commands go to the connection's worker
        # (runtime/commands.py), so pongs and other frames keep being read.
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if msg.data.startswith(PONG):  # every client, every interval: keep it cheap
                    bridge.pong(conn, msg.data)
                else:
                    bridge.receive(conn, msg.data)
            elif msg.type is WSMsgType.BINARY:
                bridge.receive(conn, msg.data)
            elif msg.type is WSMsgType.PING:
                conn.last_rx = time.monotonic()
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                conn.last_rx = time.monotonic()
            elif msg.type is WSMsgType.ERROR:
                conn.close_reason = "protocol_error"
    except Exception:
        log.exception("closing a connection of session %s after an internal error", conn.session_id)
        conn.close_reason = "internal_error"
        conn.closed = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close(code=1011, message=b"internal error")
    finally:
        conn.closed = True
        bridge.unwatch(conn)
        bridge.detach(conn, conn.close_reason)
        # the command upstream finishes (its ack is kept for the client's retry);
        # the close handshake and the writer end; cancelled, they are cancelled too
        await conn.tasks.join()
    return ws
