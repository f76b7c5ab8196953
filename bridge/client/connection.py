"""BridgeClient: one client (one 'tab') of one user in one session.

The same semantics as the browser's ConnectionManager (docs/clients.md). Its
life, in :meth:`BridgeClient._run`::

    establish ──welcome──▶ serve: read, and upgrade to WebSocket meanwhile
        ▲                    │ the transport is over: why (a ClientError)
        └── wait ◀───────────┘ unless why is final: then stop

Rules:

1. *Establish*: each transport in order until one welcomes; a whole cycle
   failed waits the backoff. A connect refused with 1012, 1013 or 503 ends
   the cycle at once (the bridge is there, but busy).
2. *Resume refused*: a connect that carried the resume token and was
   refused 4401 / 401 (a bridge restarted without ``security.token_secret``,
   another instance's secret, an expired token) drops the token, epoch and
   lastSeq and connects once afresh, at once (``resumed: false``, the latest
   state follows); the outbox stays and is flushed after the new welcome.
   A POST of commands answered 401 ends the transport the same way. Only a
   refusal without a token (the app refused the join) is final.
3. *Final*: 1008, 4400, 4401 / 401 without a token, 4404, HTTP 400, 403,
   404: the client stops, fails its queued commands with that error and
   reports it (``on_error``, :attr:`BridgeClient.error`).
4. *Wait*: :func:`bridge.protocol.backoff.delay` with the welcome's
   ``reconnect`` block, then :func:`~bridge.protocol.backoff.reconnect_delay`:
   after a drain (1012, ``reconnect`` reason ``draining``) uniform(0,
   retry_after); after 1013 / 503 at least retry_after. The attempt counter
   resets once a connection stayed up 10 s.
5. *Outbox*: outbox.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from ..protocol.backoff import Ending, delay, ending, reconnect_delay
from ..protocol.codecs import CODECS, Codec
from ..protocol.types import STREAM_TYPES
from .errors import ClientError, CommandFailed
from .outbox import Command, Outbox
from .poll import PollTransport
from .sse import SSETransport
from .transport import Transport
from .websocket import WebSocketTransport

log = logging.getLogger("bridge.client")

TRANSPORTS = ("websocket", "sse", "poll")
TRANSPORT_CLASSES: dict[str, type[Transport]] = {
    "websocket": WebSocketTransport,
    "sse": SSETransport,
    "poll": PollTransport,
}
UP_RESET_SECONDS = 10.0
POST_RETRY_INITIAL = 0.25  # a failed POST of commands is retried after this, doubling
POST_RETRY_MAX = 5.0


def backoff(attempt: int, cfg: Mapping[str, float], rnd: float) -> float:
    """Seconds before reconnect attempt ``attempt`` (≥ 1), from the welcome's
    ``reconnect`` block (``initial_ms``, ``max_ms``, ``factor``, ``jitter``)."""
    ms = delay(
        max(1, attempt), cfg["initial_ms"], cfg["max_ms"], factor=cfg["factor"],
        jitter=cfg["jitter"], rnd=rnd,
    )  # fmt: skip
    return ms / 1000


class BridgeClient:
    """One client of one user in one session. See the package docstring.

    Callbacks (plain functions, called in the event loop): ``on_session(state,
    seq)``, ``on_presence(online, seq)``, ``on_connect(welcome)``,
    ``on_disconnect(error)``, ``on_error(error)``, ``on_transport(kind)``.
    """

    def __init__(
        self,
        base_url: str,
        session_id: str,
        user_id: str,
        *,
        params: dict[str, str] | None = None,
        transports: tuple[str, ...] | list[str] = TRANSPORTS,
        codec: str = "json",
        headers: dict[str, str] | None = None,
        paths: dict[str, str] | None = None,
        http: aiohttp.ClientSession | None = None,
        outbox_limit: int = 500,
        outbox_ttl: float = 600.0,
        open_timeout: float = 8.0,
        welcome_timeout: float = 5.0,
        poll_wait: float = 25.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if codec not in CODECS:
            raise ValueError("codec must be 'json' or 'msgpack'")
        for t in transports:
            if t not in TRANSPORT_CLASSES:
                raise ValueError(f"unknown transport {t!r}")
        self.base_url = base_url.rstrip("/")
        self.session_id = session_id
        self.user_id = user_id
        self.params = dict(params or {})
        self.transports = tuple(transports)
        self.codec = codec
        self.wire: Codec = CODECS[codec]
        self.headers = dict(headers or {})
        self.paths = {
            "websocket": "/api/websocket",
            "events": "/api/events",
            "poll": "/api/poll",
            "messages": "/api/messages",
            **(paths or {}),
        }
        self._own_http = http is None
        self.http: aiohttp.ClientSession = http or aiohttp.ClientSession()
        self.open_timeout = open_timeout
        self.welcome_timeout = welcome_timeout
        self.poll_wait = poll_wait
        self.rng = rng
        #: the welcome's ``reconnect`` block (ms), defaults until the first welcome
        self.reconnect_cfg: dict[str, float] = {
            "initial_ms": 1000,
            "max_ms": 30000,
            "factor": 2,
            "jitter": 0.5,
            "upgrade_interval_ms": 60000,
        }
        self.heartbeat_timeout = 60.0
        self.last_transport: str | None = None
        self.client_id: str | None = None
        self.token: str | None = None
        self.epoch: str | None = None
        self.seq = 0
        self.state: Any = None
        self.online: list[str] = []
        self.reconnect_attempts = 0
        #: every reconnect delay chosen (seconds), for debugging and tests
        self.delays: list[float] = []
        #: every message the active transport (or a POST answer) delivered
        self.received: list[dict[str, Any]] = []
        self.on_session: Callable[[Any, int], None] | None = None
        self.on_presence: Callable[[list[str], int], None] | None = None
        self.on_connect: Callable[[dict[str, Any]], None] | None = None
        self.on_disconnect: Callable[[ClientError], None] | None = None
        self.on_error: Callable[[ClientError], None] | None = None
        self.on_transport: Callable[[str], None] | None = None
        self._active: Transport | None = None
        self._outbox = Outbox(outbox_limit, outbox_ttl)
        self._ids = itertools.count()
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        #: cleared while a WebSocket upgrade is being opened: no poll meanwhile
        self._polls_allowed = asyncio.Event()
        self._polls_allowed.set()
        self._fatal: ClientError | None = None
        self._closed = False
        self._up_since = 0.0
        #: a POST of commands failed while its transport stayed up: try again after this
        self._post_retry = POST_RETRY_INITIAL
        self._post_retry_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ public
    @property
    def connection_type(self) -> str:
        return self._active.kind if self._active is not None else "none"

    @property
    def error(self) -> ClientError | None:
        """The final error that stopped the client; None while it runs (or retries)."""
        return self._fatal

    def get_state(self) -> dict[str, Any]:
        return {
            "isConnected": self._active is not None,
            "connectionType": self.connection_type,
            "reconnectAttempts": self.reconnect_attempts,
            "seq": self.seq,
            "epoch": self.epoch,
            "queued": len(self._outbox),
        }

    async def connect(self, timeout: float | None = 30.0) -> None:
        """Start (if needed) and wait for the first welcome. Raises ClientError if refused."""
        self._closed = False
        if self._runner is None or self._runner.done():
            self._fatal = None
            self._runner = asyncio.create_task(self._run())
        waiter = asyncio.create_task(self._connected.wait())
        try:
            done, _ = await asyncio.wait({waiter, self._runner}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            await _cancel(waiter)
        if self._fatal is not None:
            raise self._fatal
        if not done:
            raise ClientError("timeout", "no transport connected in time")
        if not self._connected.is_set():  # the runner ended without a welcome
            if not self._runner.cancelled():
                self._runner.result()  # a bug in it: raise that
            raise ClientError("closed", "the client was closed")

    async def send(self, type_: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue a command until acked; returns the ack, raises CommandFailed on an error.

        Raises the final error at once when the client has stopped, and
        TypeError/ValueError when the payload cannot be encoded.
        """
        if self._fatal is not None:
            raise self._fatal
        cid = f"{(self.client_id or 'py')[:16]}-{int(time.time() * 1000):x}-{next(self._ids):x}"
        message = {"type": type_, "id": cid, "payload": payload or {}}
        self.wire.encode(message)  # fail here, not later in a transport
        now = time.monotonic()
        item = Command(cid, message, asyncio.get_running_loop().create_future(), now)
        self._outbox.add(item, now)
        await self._flush()
        ack = await item.future
        if ack.get("status") != "ok":
            err = ack.get("error") or {}
            raise CommandFailed(err.get("code", "error"), err.get("message", "command failed"))
        return ack

    async def send_vote(self, vote: Any) -> dict[str, Any]:
        return await self.send("vote", {"vote": vote})

    async def send_reveal(self) -> dict[str, Any]:
        return await self.send("reveal")

    async def send_reset(self) -> dict[str, Any]:
        return await self.send("reset")

    async def close(self) -> None:
        self._closed = True
        await _cancel(self._post_retry_task, self._runner)
        if self._active is not None:
            await self._active.close()
            self._active = None
        self._outbox.fail_all(ClientError("closed", "the client was closed"))
        if self._own_http:
            await self.http.close()

    # ------------------------------------------------------------------ for the transports
    def query(self, resume: bool) -> dict[str, str]:
        """The connect parameters; with ``resume``, the token, epoch and lastSeq held."""
        q = {"sessionId": self.session_id, "userId": self.user_id, **self.params}
        if self.last_transport:
            q["transport"] = self.last_transport  # for the bridge's fallback/upgrade counts
        if resume and self.token:
            q["resumeToken"] = self.token
            if self.epoch:
                q["epoch"] = self.epoch
                q["lastSeq"] = str(self.seq)
        return q

    def _receive(self, msg: dict[str, Any], t: Transport, from_post: bool = False) -> None:
        """A message from ``t`` (only the active transport speaks; POST answers always count)."""
        if not from_post and t is not self._active:
            return
        self.received.append(msg)
        kind = msg.get("type")
        if kind in STREAM_TYPES:
            self._stream(msg)
        elif kind == "ack":
            self._outbox.ack(msg)
        elif kind == "error":
            if self.on_error:
                self.on_error(ClientError(str(msg.get("code")), str(msg.get("message"))))
        elif kind == "reconnect":
            ms = msg.get("retry_after_ms")
            hint = ms / 1000 if isinstance(ms, int | float) else None
            reason = msg.get("reason")
            reason = reason if isinstance(reason, str) else ""
            t.fail(ClientError("reconnect", f"the bridge asked to reconnect ({reason})",
                               retry_after=hint, reason=reason))  # fmt: skip

    # ------------------------------------------------------------------ the life of the client
    async def _run(self) -> None:
        while not self._closed:
            established = await self._establish()
            if established is None:
                return
            why = await self._serve(*established)
            if self._fatal is not None:
                return
            await asyncio.sleep(self._next_delay(why))

    async def _establish(self) -> tuple[Transport, dict[str, Any]] | None:
        """Transports in order until one welcomes, with a wait between cycles;
        None when the client stopped (or was closed)."""
        while not self._closed:
            last: ClientError | None = None
            for kind in tuple(self.transports):
                try:
                    return await self._open(kind)
                except ClientError as exc:
                    self.last_transport = kind
                    last = exc
                    log.debug("%s failed: %s", kind, exc)
                    if exc.fatal:
                        self._stop(exc)
                        return None
                    if _ending(exc) is not Ending.LOST:
                        break  # the bridge is there but busy: wait, don't fall back
            self.reconnect_attempts += 1
            if last is not None and self.on_error:
                self.on_error(last)
            await asyncio.sleep(self._next_delay(last))
        return None

    async def _open(self, kind: str) -> tuple[Transport, dict[str, Any]]:
        """Connect with ``kind``; a resume refused for its token is tried once afresh."""
        try:
            return await self._start(kind)
        except ClientError as exc:
            if not exc.token_refused:
                raise
            log.info("%s: the resume token was refused (%s): connecting afresh", kind, exc)
        self._forget_token()
        return await self._start(kind)

    async def _start(self, kind: str) -> tuple[Transport, dict[str, Any]]:
        t = TRANSPORT_CLASSES[kind](self)
        try:
            return t, await t.start()
        except BaseException:
            await t.close()
            raise

    async def _serve(self, transport: Transport, welcome: dict[str, Any]) -> ClientError:
        """Run ``transport`` until it is over (switching to a WebSocket that
        welcomes meanwhile); returns why it ended."""
        await self._activate(transport, welcome)
        while True:
            reader = asyncio.create_task(transport.run())
            upgrade = None
            if transport.kind != "websocket" and "websocket" in self.transports:
                upgrade = asyncio.create_task(self._upgrade())
            waiting: set[asyncio.Task[Any]] = {reader} | ({upgrade} if upgrade else set())
            done: set[asyncio.Task[Any]] = set()
            try:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not done:  # cancelled: the client is being closed
                    await _cancel(reader)
                if upgrade is not None and upgrade not in done:
                    await _cancel(upgrade)
                    self._polls_allowed.set()
            if upgrade is not None and upgrade in done:
                await _cancel(reader)
                await transport.close()
                self._polls_allowed.set()
                transport, welcome = upgrade.result()
                await self._activate(transport, welcome)
                continue
            why = reader.result()
            await transport.close()
            self._lost(transport, why)
            return why

    async def _upgrade(self) -> tuple[Transport, dict[str, Any]]:
        """While on a fallback: try WebSocket every upgrade_interval until it welcomes."""
        while True:
            await asyncio.sleep(self.reconnect_cfg["upgrade_interval_ms"] / 1000)
            self._polls_allowed.clear()  # set again once the fallback is closed, or on failure
            try:
                return await self._start("websocket")
            except ClientError as exc:
                log.debug("websocket still unavailable: %s", exc)
                self._polls_allowed.set()

    async def _activate(self, t: Transport, welcome: dict[str, Any]) -> None:
        previous_kind = self.connection_type
        self._active = t
        self.last_transport = t.kind
        if not welcome.get("synthetic"):
            self.client_id = welcome["clientId"]
            self.token = welcome["resumeToken"]
            reconnect = welcome.get("reconnect")
            if isinstance(reconnect, dict):
                self.reconnect_cfg.update(reconnect)
            hb = welcome.get("heartbeat") or {}
            if "timeout_ms" in hb:
                self.heartbeat_timeout = hb["timeout_ms"] / 1000
            if not welcome.get("resumed") or welcome.get("epoch") != self.epoch:
                self.seq = 0  # a snapshot follows
            self.epoch = welcome["epoch"]
        self._up_since = time.monotonic()
        self._connected.set()
        if previous_kind != t.kind and self.on_transport:
            self.on_transport(t.kind)
        if self.on_connect:
            self.on_connect(welcome)
        self._outbox.requeue()
        await self._flush()

    def _lost(self, t: Transport, why: ClientError) -> None:
        if self._active is t:
            self._active = None
        self._connected.clear()
        if time.monotonic() - self._up_since >= UP_RESET_SECONDS:
            self.reconnect_attempts = 0
        self.reconnect_attempts += 1
        self._outbox.requeue()
        if why.token_refused:
            log.info("%s: the resume token was refused (%s): connecting afresh", t.kind, why)
            self._forget_token()
        if self.on_disconnect:
            self.on_disconnect(why)
        if why.fatal:
            self._stop(why)

    def _forget_token(self) -> None:
        """The token is no good: the next connect is a fresh one (``resumed: false``)."""
        self.token = None
        self.epoch = None
        self.client_id = None
        self.seq = 0

    def _stop(self, error: ClientError) -> None:
        """Refused for good: nothing will be acked, and no connect is tried any more."""
        self._fatal = error
        self._outbox.fail_all(error)
        if self.on_error:
            self.on_error(error)

    def _next_delay(self, why: ClientError | None) -> float:
        wait = backoff(self.reconnect_attempts, self.reconnect_cfg, self.rng())
        if why is not None:
            cause = _ending(why)
            hint = why.retry_after
            if hint is None and cause is not Ending.LOST:
                hint = self.reconnect_cfg["initial_ms"] / 1000  # 1012/1013 without a notice
            wait = reconnect_delay(wait, hint, cause, self.rng())
        self.delays.append(wait)
        return wait

    # ------------------------------------------------------------------ stream and outbox
    def _stream(self, msg: dict[str, Any]) -> None:
        seq = msg.get("seq")
        if not isinstance(seq, int) or seq <= self.seq:
            return  # never twice, never backwards
        self.seq = seq
        if msg.get("type") == "session":
            self.state = msg.get("payload")
            if self.on_session:
                self.on_session(self.state, seq)
        else:
            self.online = list((msg.get("payload") or {}).get("online", []))
            if self.on_presence:
                self.on_presence(self.online, seq)

    async def _flush(self) -> None:
        t = self._active
        if t is None:
            return
        items = self._outbox.take_unsent()
        if not items:
            return
        if await t.send([i.message for i in items]):
            self._post_retry = POST_RETRY_INITIAL
            return
        Outbox.unsend(items)
        if self._closed or t.closed or t.failure is not None:
            return  # the transport is ending: the next welcome flushes them
        # Nothing else may come along to send them again (the caller may be
        # waiting for this very ack, and the transport may stay up): retry.
        retry_in = 0.0 if self._active is not t else self._post_retry
        self._post_retry = min(self._post_retry * 2, POST_RETRY_MAX)
        if self._post_retry_task is None or self._post_retry_task.done():
            self._post_retry_task = asyncio.create_task(self._flush_after(retry_in))

    async def _flush_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self._post_retry_task = None  # a failure in this flush may schedule the next one
        await self._flush()


def _ending(err: ClientError) -> Ending:
    return ending(err.close_code, err.status, err.reason)


async def _cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel and wait for each task (None: nothing)."""
    for task in tasks:
        if task is not None and not task.done():
            task.cancel()
    for task in tasks:
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
