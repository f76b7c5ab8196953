"""Liveness of client transports (protocol.md, "Liveness").

Each watched connection has one timer on the :class:`~.ticker.Ticker`. When it
fires, the connection is closed 4408 if nothing arrived for
``heartbeat.timeout`` (transports with ``rx_timeout``), and a ``ping`` is sent
when one is due (transports with ``sends_pings``). Rule (style.md, 18): the
next ping is due one interval after the *previous due time*, never after a
time already past, and the timer is never set in the past — so a late tick
sends one ping, not a burst, and nothing fires in a loop. A connection that
is ``busy`` (a held poll) is alive while it is held.
"""

from __future__ import annotations

import json
import time

from ..config import Config
from ..metrics import Metrics
from ..protocol import messages as m
from ..protocol.types import Message
from .connection import Connection
from .ticker import TICK_SLACK, Ticker

#: the soonest a heartbeat timer is set again after it fired
MIN_RECHECK = 2 * TICK_SLACK


class Heartbeats:
    def __init__(self, cfg: Config, ticker: Ticker, metrics: Metrics) -> None:
        self.cfg = cfg
        self.ticker = ticker
        self.metrics = metrics
        self._pongs_in = metrics.messages.labels("in", "pong", "json")
        # one ping message for every connection due in the same tick
        self._ping: tuple[float, Message] = (-1.0, m.ping(0))
        ticker.on("hb", self._check)

    def watch(self, conn: Connection) -> None:
        """Start the connection's heartbeat timer (pings and/or its receive timeout)."""
        hb = self.cfg.heartbeat
        now = time.monotonic()
        conn.next_ping = now + hb.interval
        self.ticker.schedule(("hb", conn), now + min(hb.interval, hb.timeout))

    def unwatch(self, conn: Connection) -> None:
        self.ticker.cancel(("hb", conn))

    def _check(self, conn: Connection, now: float) -> None:
        if conn.closed:
            return
        hb = self.cfg.heartbeat
        alive_until = (now if conn.busy else conn.last_rx) + hb.timeout
        if conn.rx_timeout and now >= alive_until:
            self.metrics.heartbeat_timeouts.labels(conn.transport).inc()
            conn.close(4408, "heartbeat timeout")
            return
        when = alive_until
        if conn.sends_pings:
            if now >= conn.next_ping:
                conn.send(self._ping_for(now))
                # from its own due time; a tick that came late skips the pings it missed
                missed = int((now - conn.next_ping) // hb.interval) + 1
                conn.next_ping += missed * hb.interval
            when = min(conn.next_ping, alive_until) if conn.rx_timeout else conn.next_ping
        self.ticker.schedule(("hb", conn), max(when, now + MIN_RECHECK))

    def _ping_for(self, now: float) -> Message:
        at, ping = self._ping
        if at != now:
            ping = m.ping(int(time.time() * 1000))
            self._ping = (now, ping)
        return ping

    def pong(self, conn: Connection, data: str) -> None:
        """A ``pong`` answer to our ping: liveness, and its round trip (the fast path)."""
        conn.last_rx = time.monotonic()
        self._pongs_in.inc()
        try:
            ts = json.loads(data).get("ts")
        except (ValueError, AttributeError):
            return
        self.observe_rtt(ts)

    def observe_rtt(self, ts: object) -> None:
        """``ts`` is the ping's wall-clock milliseconds, echoed by the client."""
        if isinstance(ts, int) and not isinstance(ts, bool):
            rtt = time.time() - ts / 1000
            if 0 <= rtt < 600:
                self.metrics.heartbeat_rtt.observe(rtt)
