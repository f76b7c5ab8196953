"""Long-poll transport at ``paths.poll``: ``{"messages": [...], "cursor": N}``.

Same shape as the other adapters, but a poll client's "connection" outlives
each request: a :class:`PollConnection` is held per client between polls and
ends when no poll arrives for ``heartbeat.timeout`` (then the user's grace
starts, as for a dropped socket).

Stream messages are not queued per client: a poll reads them from the
session's replay log after its ``cursor``, so a lost response costs nothing —
the client polls again with the same cursor. Each message's encoding is cached
once per codec; a reply only joins them (``encode_batch``).

Rules of one poll (protocol.md, "Poll reply"):

- The first poll of a client (no token), or one for a client this instance
  does not hold, starts with ``welcome`` and the backlog (resumed from the
  cursor and epoch, or the latest state).
- A poll whose epoch is not the session's, or whose cursor has left the log,
  gets ``welcome{resumed:false}`` and the latest state.
- Otherwise it answers at once when messages after the cursor exist, else
  holds until one arrives or ``wait`` (capped by ``limits.max_poll_wait``)
  ends, then answers an empty batch.
- At most one outstanding poll per client: a newer poll ends the older one at
  once with an empty batch and its own cursor (the older request's client has
  moved on, so whatever it would have returned is read by the newer one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

from aiohttp import web

from ..core.replay import Entry, Resumed
from ..protocol.codecs import JSON, Codec, encode_batch
from ..protocol.types import Message
from ..runtime import Bridge, Identity, Refusal, Session, parse_connect
from .common import (
    BRIDGE,
    ClientConnection,
    admit,
    json_error,
    origin_allowed,
    refusal_response,
    transport_disabled,
)
from .http import accept_codec, encoded_response

#: Control messages (welcome, errors, reconnect) kept for a client between polls.
MAX_CONTROL = 64


class PollConnection(ClientConnection):
    __slots__ = ("lingering", "vanished", "_bridge", "_control", "_backlog", "_waiter")

    transport = "poll"
    codec = JSON
    sends_pings = False  # every poll is an exchange; nothing to ping
    rx_timeout = True  # no poll for heartbeat.timeout ends the transport

    def __init__(self, bridge: Bridge, who: Identity, now: float) -> None:
        super().__init__(who, now, close_reason="timeout", count=bridge.count_task_error)
        self.lingering = False
        #: its client went away in the middle of a held poll: not coming back soon
        self.vanished = False
        self._bridge = bridge
        self._control: deque[Message] = deque(maxlen=MAX_CONTROL)
        self._backlog: list[Entry] | None = None
        self._waiter: asyncio.Future[bool] | None = None

    # -- the Connection protocol (called by the runtime)
    def start(self, welcome: Message, backlog: list[Entry]) -> None:
        self._control.append(welcome)
        self._backlog = list(backlog)

    def deliver(self, entry: Entry) -> bool:
        self._wake(True)
        return not self.closed

    def send(self, message: Message) -> None:
        if message.get("type") == "ping":
            return
        self._control.append(message)
        self._wake(True)

    def close(self, code: int, reason: str, label: str | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = label or {
            4408: "timeout", 1000: "replaced", 1001: "shutdown"
        }.get(code, "server")  # fmt: skip
        if code in (1012, 1013) and self._waiter is None and self._control:
            # Between two polls: stay until the next poll has carried the notice
            # (reconnect) to the client, then go (see poll_handler).
            self.lingering = True
            return
        self._wake(True)
        self.finish()

    def finish(self) -> None:
        """The transport is over: stop its timer and leave the session."""
        self.lingering = False
        self._bridge.unwatch(self)
        self._bridge.detach(self, self.close_reason)

    def _wake(self, data: bool) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(data)

    # -- one poll
    def supersede(self) -> None:
        """A newer poll arrived: the held one ends now with an empty batch."""
        self._wake(False)

    async def answer(
        self, session: Session, epoch: str | None, cursor: int | None, wait: float, codec: Codec
    ) -> tuple[bytes, int]:
        log = session.hub.log
        control: list[Message] = []
        entries: list[Entry] = []
        if self._backlog is not None:  # the first answer after attach
            entries, self._backlog = self._backlog, None
            cursor = max([e.seq for e in entries] + [int(self._control[0].get("seq", 0))])
            epoch = log.epoch
        read = log.read(epoch, cursor, time.monotonic())
        if isinstance(read, Resumed):
            entries += read.entries
        else:
            # Another epoch or a cursor past the log: start over from the latest state.
            self._control.appendleft(self._bridge.welcome(session, self, False, log.head))
            entries = read.entries
            cursor = log.head
        if not entries and not self._control and wait > 0 and not self.closed:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            self.busy = True
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        fresh = await waiter
                        if fresh:
                            read = log.read(log.epoch, cursor, time.monotonic())
                            if isinstance(read, Resumed):
                                entries = read.entries
            except asyncio.CancelledError:
                self.vanished = True  # (its client hung up, or the server stops)
                raise
            finally:
                if self._waiter is waiter:  # not yet replaced by a newer poll
                    self._waiter = None
                    self.busy = False
                self.last_rx = time.monotonic()
        while self._control:
            control.append(self._control.popleft())
        items = [codec.encode(msg) for msg in control] + [e.encoded(codec) for e in entries]
        if entries:
            cursor = entries[-1].seq
        return encode_batch(codec, items, cursor or 0), len(entries)


def _wait_seconds(raw: str | None, cap: float) -> float | None:
    if raw is None or raw == "":
        return cap
    try:
        value = float(raw)
    except ValueError:
        return None
    if not value >= 0:  # also rejects NaN
        return None
    return min(value, cap)


async def poll_handler(request: web.Request) -> web.StreamResponse:
    """``GET paths.poll``: one batch of messages after ``cursor``."""
    bridge = request.app[BRIDGE]
    cfg = bridge.cfg
    if (off := transport_disabled(bridge, "poll")) is not None:
        return off
    codec = accept_codec(request, cfg)
    if codec is None:
        return json_error(406, "bad_request", "Accept application/json or application/msgpack")
    wait = _wait_seconds(request.query.get("wait"), cfg.limits.max_poll_wait)
    if wait is None:
        return json_error(400, "bad_request", "wait must be a number of seconds >= 0")
    if not origin_allowed(cfg, request.headers.get("Origin")):
        return refusal_response(Refusal(1008, "forbidden", "origin not allowed", "origin"))
    req = parse_connect(
        request.query, request.headers, cfg.upstream.forward_headers, seq_param="cursor"
    )
    conn: PollConnection | None = None
    session = None
    if not isinstance(req, Exception) and req.token is not None:
        auth = bridge.authenticate(req)
        if isinstance(auth, Exception):
            bridge.metrics.connections_rejected.labels("poll", "unauthorized").inc()
            return json_error(401, auth.code, auth.message)
        session = bridge.sessions.get(req.session_id)
        held = session.conns.get(auth[0]) if session is not None else None
        if isinstance(held, PollConnection) and (not held.closed or held.lingering):
            conn = held
    if conn is None or session is None:
        admitted = await admit(request, "poll", seq_param="cursor")
        if isinstance(admitted, Refusal):
            return refusal_response(admitted, cfg.reconnect.initial)
        req, session = admitted.req, admitted.session
        with admitted:
            conn = PollConnection(bridge, admitted.who, time.monotonic())
            admitted.attach(conn)
        bridge.watch(conn)
        wait = 0.0  # the first poll answers at once with its welcome
    else:
        assert not isinstance(req, Exception)
        conn.supersede()
        conn.last_rx = time.monotonic()
    body, delivered = await conn.answer(session, req.epoch, req.last_seq, wait, codec)
    if conn.lingering:
        conn.finish()
    if delivered:
        bridge.metrics.deliveries.labels("poll").inc(delivered)
    return await encoded_response(request, cfg, body, codec, count=bridge.count_wire("poll"))
