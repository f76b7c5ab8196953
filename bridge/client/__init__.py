"""The Python asyncio client: the same semantics as the browser's ConnectionManager.

::

    async with aiohttp.ClientSession() as http:
        client = BridgeClient("http://127.0.0.1:8080", "s1", "u1", params={"name": "Ada"})
        client.on_session = lambda state, seq: print(seq, state)
        await client.connect()            # returns after the first welcome
        ack = await client.send_vote("5")  # returns the ack; raises CommandFailed on an error ack
        await client.close()

- Transports in order (default WebSocket → SSE → poll), each with an open
  and a welcome timeout; on a fallback WebSocket is retried every
  ``upgrade_interval`` and takes over when it welcomes.
- Reconnects with the bridge's advertised backoff
  ``min(max, initial·factor^(n−1))·(1 − jitter·U)``, 1012/1013/503-aware,
  the counter reset after 10 s up.
- Commands wait in an outbox (bounded, expiring) until acked, are flushed
  after every welcome and re-sent with the same id (the bridge de-duplicates).
- Resume with token + epoch + lastSeq; ``resumed: false`` drops the stream
  state, the snapshot that follows rebuilds it. JSON or msgpack.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgpack

log = logging.getLogger("bridge.client")

TRANSPORTS = ("websocket", "sse", "poll")
STOP_CLOSE_CODES = frozenset({1008, 4400, 4401, 4404})
UP_RESET_SECONDS = 10.0
POST_RETRY_INITIAL = 0.25  # a failed POST of commands is retried after this, doubling
POST_RETRY_MAX = 5.0


class ClientError(Exception):
    """Base of the client's errors. ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str, *, fatal: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fatal = fatal
        self.close_code: int | None = None
        self.retry_after: float | None = None


class CommandFailed(ClientError):
    """The bridge acked the command with an error (``ack.error``)."""


def backoff(attempt: int, cfg: dict[str, float], rnd: float) -> float:
    """Seconds before reconnect attempt ``attempt`` (≥ 1)."""
    exp = min(max(attempt - 1, 0), 60)
    ms = min(cfg["max_ms"], cfg["initial_ms"] * cfg["factor"] ** exp) * (1 - cfg["jitter"] * rnd)
    return float(ms) / 1000


@dataclass
class _Item:
    id: str
    message: dict[str, Any]
    future: asyncio.Future[dict[str, Any]]
    at: float
    sent: bool = False


@dataclass
class _Transport:
    kind: str
    client: BridgeClient
    closed: bool = False
    ws: aiohttp.ClientWebSocketResponse | None = None
    resp: aiohttp.ClientResponse | None = None
    pending: list[dict[str, Any]] = field(default_factory=list)
    cursor: int | None = None

    # -- connecting
    async def start(self) -> dict[str, Any]:
        """Open, and return the welcome (or raise ClientError)."""
        c = self.client
        timeout = c.open_timeout + c.welcome_timeout
        try:
            starter = {
                "websocket": self._start_websocket,
                "sse": self._start_sse,
                "poll": self._start_poll,
            }[self.kind]
            async with asyncio.timeout(timeout):
                return await starter()
        except TimeoutError:
            raise ClientError("timeout", f"{self.kind}: no welcome within {timeout}s") from None
        except aiohttp.ClientError as exc:
            raise ClientError("unreachable", f"{self.kind}: {exc}") from None

    async def _start_websocket(self) -> dict[str, Any]:
        c = self.client
        self.ws = await c.http.ws_connect(
            c.base_url + c.paths["websocket"], params=c.query(resume=True),
            protocols=(f"bridge.v1.{c.codec}",), headers=c.headers, autoping=True,
        )  # fmt: skip
        msg = await self._ws_read()
        if msg is None or msg.get("type") != "welcome":
            raise self._ws_closed_error()
        return msg

    def _ws_closed_error(self) -> ClientError:
        assert self.ws is not None
        code = self.ws.close_code or 1006
        err = ClientError(f"close_{code}", "websocket closed", fatal=code in STOP_CLOSE_CODES)
        err.close_code = code
        return err

    async def _ws_read(self) -> dict[str, Any] | None:
        assert self.ws is not None
        while True:
            msg = await self.ws.receive()
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                data = (
                    msgpack.unpackb(msg.data)
                    if self.client.codec == "msgpack"
                    else json.loads(msg.data)
                )
                if isinstance(data, dict):
                    return data
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                              aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):  # fmt: skip
                return None

    async def _start_sse(self) -> dict[str, Any]:
        c = self.client
        self.resp = await c.http.get(
            c.base_url + c.paths["events"], params=c.query(resume=True),
            headers={**c.headers, "Accept": "text/event-stream"},
        )  # fmt: skip
        if self.resp.status != 200:
            raise await _http_error(self.resp)
        msg = await self._sse_read()
        if msg is None or msg.get("type") != "welcome":
            raise ClientError("sse_error", "the event stream ended before its welcome")
        return msg

    async def _sse_read(self) -> dict[str, Any] | None:
        assert self.resp is not None
        data: bytes | None = None
        while True:
            line = await self.resp.content.readline()
            if not line:
                return None
            line = line.rstrip(b"\r\n")
            if line.startswith(b"data: "):
                data = line[6:]
            elif not line and data is not None:
                return dict(json.loads(data))

    async def _start_poll(self) -> dict[str, Any]:
        c = self.client
        messages = await self._poll(first=True)
        self.pending = messages
        for msg in messages:
            if msg.get("type") == "welcome":
                return msg
        # A client the bridge still holds gets no new welcome: it just resumes.
        return {"type": "welcome", "resumed": True, "epoch": c.epoch, "clientId": c.client_id,
                "resumeToken": c.token, "synthetic": True}  # fmt: skip

    async def _poll(self, first: bool) -> list[dict[str, Any]]:
        c = self.client
        q = c.query(resume=not first or c.token is not None)
        q.pop("lastSeq", None)
        if self.cursor is not None:
            q["cursor"] = str(self.cursor)
        elif c.token and c.epoch:
            q["cursor"] = str(c.seq)
        if not first:
            q["wait"] = str(c.poll_wait)
        accept = "application/msgpack" if c.codec == "msgpack" else "application/json"
        async with c.http.get(
            c.base_url + c.paths["poll"], params=q, headers={**c.headers, "Accept": accept},
            timeout=aiohttp.ClientTimeout(total=c.poll_wait + 10),
        ) as r:  # fmt: skip
            if r.status != 200:
                raise await _http_error(r)
            raw = await r.read()
        body = msgpack.unpackb(raw) if c.codec == "msgpack" else json.loads(raw)
        self.cursor = int(body["cursor"])
        return list(body["messages"])

    # -- running
    async def run(self) -> ClientError:
        """Read until the transport is lost; returns why."""
        c = self.client
        try:
            if self.kind == "poll":
                for msg in self.pending:
                    c._receive(msg, self)
                self.pending = []
                while not self.closed:
                    # No new poll while a WebSocket upgrade is being opened: a poll that
                    # reached the bridge after the WebSocket would replace it again.
                    await c._polls_allowed.wait()
                    for msg in await self._poll(first=False):
                        c._receive(msg, self)
            while not self.closed:
                async with asyncio.timeout(c.heartbeat_timeout):
                    got = await (self._ws_read() if self.kind == "websocket" else self._sse_read())
                if got is None:
                    if self.ws is not None:
                        return self._ws_closed_error()
                    return ClientError("sse_error", "the event stream ended")
                c._receive(got, self)
        except TimeoutError:
            return ClientError("heartbeat_timeout", "nothing received in time")
        except ClientError as exc:
            return exc
        except (aiohttp.ClientError, ConnectionError, ValueError) as exc:
            return ClientError("lost", f"{self.kind}: {exc}")
        return ClientError("closed", "closed")

    async def send(self, messages: list[dict[str, Any]]) -> bool:
        c = self.client
        if self.kind == "websocket":
            if self.ws is None or self.ws.closed:
                return False
            for m in messages:
                if c.codec == "msgpack":
                    await self.ws.send_bytes(msgpack.packb(m))
                else:
                    await self.ws.send_str(json.dumps(m, separators=(",", ":")))
            return True
        if not c.token:
            return False
        if c.codec == "msgpack":
            body, ctype = msgpack.packb(messages), "application/msgpack"
        else:
            body, ctype = json.dumps(messages).encode(), "application/json"
        try:
            async with c.http.post(
                c.base_url + c.paths["messages"], params={"resumeToken": c.token}, data=body,
                headers={**c.headers, "Content-Type": ctype, "Accept": ctype},
            ) as r:  # fmt: skip
                if r.status != 200:
                    return False
                raw = await r.read()
        except aiohttp.ClientError:
            return False
        answer = msgpack.unpackb(raw) if c.codec == "msgpack" else json.loads(raw)
        for m in answer.get("acks", []) + answer.get("errors", []):
            c._receive(m, self, from_post=True)
        return True

    async def close(self) -> None:
        self.closed = True
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        if self.resp is not None:
            self.resp.close()


async def _http_error(resp: aiohttp.ClientResponse) -> ClientError:
    code = f"http_{resp.status}"
    with contextlib.suppress(Exception):
        code = (await resp.json())["error"]["code"]
    fatal = resp.status in (400, 401, 403) or (resp.status == 404 and code != "transport_disabled")
    err = ClientError(code, f"HTTP {resp.status}", fatal=fatal)
    if resp.status == 503:
        err.retry_after = float(resp.headers.get("Retry-After", "1"))
    return err


class BridgeClient:
    """One client (one 'tab') of one user in one session. See the module docstring."""

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
        if codec not in ("json", "msgpack"):
            raise ValueError("codec must be 'json' or 'msgpack'")
        for t in transports:
            if t not in TRANSPORTS:
                raise ValueError(f"unknown transport {t!r}")
        self.base_url = base_url.rstrip("/")
        self.session_id = session_id
        self.user_id = user_id
        self.params = dict(params or {})
        self.transports = tuple(transports)
        self.codec = codec
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
        self.outbox_limit = outbox_limit
        self.outbox_ttl = outbox_ttl
        self.open_timeout = open_timeout
        self.welcome_timeout = welcome_timeout
        self.poll_wait = poll_wait
        self.rng = rng
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
        self.delays: list[float] = []
        self.received: list[dict[str, Any]] = []
        self.on_session: Callable[[Any, int], None] | None = None
        self.on_presence: Callable[[list[str], int], None] | None = None
        self.on_connect: Callable[[dict[str, Any]], None] | None = None
        self.on_disconnect: Callable[[ClientError], None] | None = None
        self.on_error: Callable[[ClientError], None] | None = None
        self.on_transport: Callable[[str], None] | None = None
        self._active: _Transport | None = None
        self._outbox: list[_Item] = []
        self._ids = itertools.count()
        self._runner: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._polls_allowed = asyncio.Event()
        self._polls_allowed.set()
        self._fatal: ClientError | None = None
        self._closed = False
        self._up_since = 0.0
        self._retry_hint: float | None = None
        #: a POST of commands failed while its transport stayed up: try again after this
        self._post_retry = POST_RETRY_INITIAL
        self._post_timer: asyncio.TimerHandle | None = None
        self._post_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ public
    @property
    def connection_type(self) -> str:
        return self._active.kind if self._active is not None else "none"

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
            self._runner = asyncio.create_task(self._run())
        waiter = asyncio.create_task(self._connected.wait())
        done, _ = await asyncio.wait({waiter, self._runner}, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        waiter.cancel()
        if self._fatal is not None:
            raise self._fatal
        if not done:
            raise ClientError("timeout", "no transport connected in time")

    async def send(self, type_: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue a command until acked; returns the ack, raises CommandFailed on an error."""
        cid = f"{(self.client_id or 'py')[:16]}-{int(time.time() * 1000):x}-{next(self._ids):x}"
        item = _Item(cid, {"type": type_, "id": cid, "payload": payload or {}},
                     asyncio.get_running_loop().create_future(), time.monotonic())  # fmt: skip
        self._expire()
        if len(self._outbox) >= self.outbox_limit:
            dropped = self._outbox.pop(0)
            dropped.future.set_exception(ClientError("outbox_overflow", "oldest command dropped"))
        self._outbox.append(item)
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
        if self._post_timer is not None:
            self._post_timer.cancel()
            self._post_timer = None
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._runner
        if self._active is not None:
            await self._active.close()
            self._active = None
        for item in self._outbox:
            if not item.future.done():
                item.future.set_exception(ClientError("closed", "the client was closed"))
        if self._own_http:
            await self.http.close()

    # ------------------------------------------------------------------ internals
    def query(self, resume: bool) -> dict[str, str]:
        q = {"sessionId": self.session_id, "userId": self.user_id, **self.params}
        if self.last_transport:
            q["transport"] = self.last_transport  # for the bridge's fallback/upgrade counts
        if resume and self.token:
            q["resumeToken"] = self.token
            if self.epoch:
                q["epoch"] = self.epoch
                q["lastSeq"] = str(self.seq)
        return q

    async def _run(self) -> None:
        while not self._closed:
            established = await self._establish()
            if established is None:
                return
            transport, welcome = established
            await self._activate(transport, welcome)
            while True:
                reader = asyncio.create_task(transport.run())
                upgrade = None
                if transport.kind != "websocket" and "websocket" in self.transports:
                    upgrade = asyncio.create_task(self._upgrade())
                waiting = {reader} | ({upgrade} if upgrade else set())
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if upgrade is not None and upgrade in done:
                    reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await reader
                    await transport.close()
                    self._polls_allowed.set()
                    transport, welcome = upgrade.result()
                    await self._activate(transport, welcome)
                    continue
                if upgrade is not None:
                    upgrade.cancel()
                    self._polls_allowed.set()
                err = reader.result()
                await transport.close()
                self._lost(transport, err)
                break
            if self._fatal is not None:
                return
            await asyncio.sleep(self._next_delay(err))

    async def _establish(self) -> tuple[_Transport, dict[str, Any]] | None:
        """One transport in order until one welcomes; backoff between cycles."""
        while not self._closed:
            last: ClientError | None = None
            for kind in self.transports:
                t = _Transport(kind, self)
                try:
                    welcome = await t.start()
                except ClientError as exc:
                    await t.close()
                    self.last_transport = kind
                    last = exc
                    log.debug("%s failed: %s", kind, exc)
                    if exc.fatal:
                        self._fatal = exc
                        if self.on_error:
                            self.on_error(exc)
                        return None
                    if exc.retry_after is not None:
                        self._retry_hint = exc.retry_after
                    if exc.close_code in (1012, 1013) or exc.retry_after is not None:
                        break
                    continue
                return t, welcome
            self.reconnect_attempts += 1
            if last is not None and self.on_error:
                self.on_error(last)
            await asyncio.sleep(self._next_delay(last))
        return None

    async def _upgrade(self) -> tuple[_Transport, dict[str, Any]]:
        """While on a fallback: try WebSocket every upgrade_interval until it welcomes."""
        while True:
            await asyncio.sleep(self.reconnect_cfg["upgrade_interval_ms"] / 1000)
            t = _Transport("websocket", self)
            self._polls_allowed.clear()  # set again once the fallback is closed, or on failure
            try:
                return t, await t.start()
            except ClientError:
                await t.close()
                self._polls_allowed.set()
            except BaseException:  # cancelled: the fallback was lost meanwhile
                await t.close()
                raise

    def _next_delay(self, err: ClientError | None) -> float:
        delay = backoff(max(1, self.reconnect_attempts), self.reconnect_cfg, self.rng())
        hint = self._retry_hint
        if hint is not None:
            self._retry_hint = None
            code = err.close_code if err is not None else None
            delay = self.rng() * hint if code == 1012 else max(delay, hint)
        self.delays.append(delay)
        return delay

    async def _activate(self, t: _Transport, welcome: dict[str, Any]) -> None:
        previous_kind = self.connection_type
        self._active = t
        self.last_transport = t.kind
        if not welcome.get("synthetic"):
            self.client_id = welcome["clientId"]
            self.token = welcome["resumeToken"]
            self.reconnect_cfg.update(welcome.get("reconnect", {}))
            hb = welcome.get("heartbeat", {})
            if "timeout_ms" in hb:
                self.heartbeat_timeout = hb["timeout_ms"] / 1000
            if not welcome.get("resumed") or welcome.get("epoch") != self.epoch:
                self.seq = 0
            self.epoch = welcome["epoch"]
        self._up_since = time.monotonic()
        self._connected.set()
        if previous_kind != t.kind and self.on_transport:
            self.on_transport(t.kind)
        if self.on_connect:
            self.on_connect(welcome)
        for item in self._outbox:
            item.sent = False
        await self._flush()

    def _lost(self, t: _Transport, err: ClientError) -> None:
        if self._active is t:
            self._active = None
        self._connected.clear()
        if time.monotonic() - self._up_since >= UP_RESET_SECONDS:
            self.reconnect_attempts = 0
        self.reconnect_attempts += 1
        for item in self._outbox:
            item.sent = False
        if err.fatal:
            self._fatal = err
        if err.close_code in (1012, 1013) and self._retry_hint is None:
            self._retry_hint = self.reconnect_cfg["initial_ms"] / 1000
        if self.on_disconnect:
            self.on_disconnect(err)

    def _receive(self, msg: dict[str, Any], t: _Transport, from_post: bool = False) -> None:
        if not from_post and t is not self._active:
            return
        self.received.append(msg)
        kind = msg.get("type")
        if kind in ("session", "presence"):
            seq = msg.get("seq")
            if not isinstance(seq, int) or seq <= self.seq:
                return  # never twice, never backwards
            self.seq = seq
            if kind == "session":
                self.state = msg.get("payload")
                if self.on_session:
                    self.on_session(self.state, seq)
            else:
                self.online = list((msg.get("payload") or {}).get("online", []))
                if self.on_presence:
                    self.on_presence(self.online, seq)
        elif kind == "ack":
            for item in self._outbox:
                if item.id == msg.get("id"):
                    self._outbox.remove(item)
                    if not item.future.done():
                        item.future.set_result(msg)
                    break
        elif kind == "ping" and t.kind == "websocket":
            asyncio.get_running_loop().create_task(t.send([{"type": "pong", "ts": msg.get("ts")}]))
        elif kind == "error" and self.on_error:
            self.on_error(ClientError(str(msg.get("code")), str(msg.get("message"))))
        elif kind == "reconnect":
            self._retry_hint = float(msg.get("retry_after_ms", 1000)) / 1000
            t.closed = True

    def _expire(self) -> None:
        now = time.monotonic()
        for item in list(self._outbox):
            if now - item.at > self.outbox_ttl:
                self._outbox.remove(item)
                if not item.future.done():
                    item.future.set_exception(ClientError("expired", "not acked in time"))

    async def _flush(self) -> None:
        t = self._active
        if t is None:
            return
        items = [i for i in self._outbox if not i.sent]
        if not items:
            return
        for i in items:
            i.sent = True
        if not await t.send([i.message for i in items]):
            for i in items:
                i.sent = False
            # Nothing else may come along to send them again (the caller may be
            # waiting for this very ack, and the transport may stay up): retry.
            if not self._closed and self._post_timer is None:
                delay = 0.0 if self._active is not t else self._post_retry
                self._post_retry = min(self._post_retry * 2, POST_RETRY_MAX)
                self._post_timer = asyncio.get_running_loop().call_later(delay, self._retry_post)
        else:
            self._post_retry = POST_RETRY_INITIAL

    def _retry_post(self) -> None:
        self._post_timer = None
        if not self._closed:
            self._post_task = asyncio.get_running_loop().create_task(self._flush())
