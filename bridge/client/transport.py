"""What every client transport is: the interface, and what they share.

A transport is one connection attempt and, once welcomed, one live stream.
:class:`BridgeClient` (connection.py) drives it the same way whatever its
kind:

1. ``welcome = await t.start()``: open, and return the first ``welcome``
   (raises :class:`ClientError` when refused or not in time);
2. ``why = await t.run()``: hand every message to ``owner._receive`` until
   the transport is over, then return why (a :class:`ClientError`, never raised);
3. ``await t.send(messages)``: deliver commands; False when they did not go;
4. ``t.fail(error)``: end it from outside with that reason (a ``reconnect``
   notice, a POST refused for its token); ``await t.close()``: end it, quietly.

websocket.py, sse.py and poll.py are the three kinds; sse.py and poll.py send
over ``POST /api/messages`` (:class:`HttpTransport` here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import aiohttp

from ..protocol.codecs import Codec
from .errors import ClientError

log = logging.getLogger("bridge.client")

#: Close codes after which the bridge will refuse this client again (protocol.md).
STOP_CLOSE_CODES = frozenset({1008, 4400, 4401, 4404})


class Owner(Protocol):
    """What a transport needs from its client (:class:`BridgeClient`)."""

    http: aiohttp.ClientSession
    base_url: str
    paths: dict[str, str]
    headers: dict[str, str]
    wire: Codec
    open_timeout: float
    welcome_timeout: float
    heartbeat_timeout: float
    poll_wait: float
    client_id: str | None
    token: str | None
    epoch: str | None
    seq: int
    _polls_allowed: asyncio.Event

    def query(self, resume: bool) -> dict[str, str]: ...

    def _receive(
        self, msg: dict[str, Any], t: Transport, from_post: bool = False
    ) -> None: ...  # fmt: skip


class Transport:
    """The common part: timeouts on start, the run loop, fail and close."""

    kind: ClassVar[str]

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.closed = False
        #: why the transport was ended from outside (fail), if it was
        self.failure: ClientError | None = None
        #: whether the connect request carried the resume token
        self.carried_token = False
        self._ended = asyncio.Event()

    async def start(self) -> dict[str, Any]:
        """Open, and return the welcome (or raise ClientError)."""
        timeout = self.owner.open_timeout + self.owner.welcome_timeout
        try:
            async with asyncio.timeout(timeout):
                return await self._open()
        except TimeoutError:
            raise ClientError("timeout", f"{self.kind}: no welcome within {timeout}s") from None
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise ClientError("unreachable", f"{self.kind}: {exc}") from None

    async def run(self) -> ClientError:
        """Read until the transport is over; returns why."""
        reading = asyncio.create_task(self._read_guarded())
        ended = asyncio.create_task(self._ended.wait())
        try:
            await asyncio.wait({reading, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reading, ended):
                task.cancel()
            await asyncio.gather(reading, ended, return_exceptions=True)
        if self.failure is not None:
            return self.failure
        if reading.done() and not reading.cancelled():
            return reading.result()
        return ClientError("closed", f"{self.kind}: closed")

    async def _read_guarded(self) -> ClientError:
        try:
            return await self._read()
        except TimeoutError:
            return ClientError("heartbeat_timeout", "nothing received in time")
        except ClientError as exc:
            return exc
        except (aiohttp.ClientError, ConnectionError, ValueError) as exc:
            return ClientError("lost", f"{self.kind}: {exc}")

    def fail(self, error: ClientError) -> None:
        """End the transport: :meth:`run` returns ``error`` (the first one given)."""
        if self.failure is None:
            self.failure = error
        self._ended.set()

    async def close(self) -> None:
        """End the transport and release its connection; :meth:`run` returns ``closed``."""
        self.closed = True
        self._ended.set()
        await self._close_io()

    # -- what each kind implements
    async def _open(self) -> dict[str, Any]:
        """Connect and return the welcome."""
        raise NotImplementedError

    async def _read(self) -> ClientError:
        """Hand messages to the owner until the stream ends; return why it ended."""
        raise NotImplementedError

    async def send(self, messages: list[dict[str, Any]]) -> bool:
        raise NotImplementedError

    async def _close_io(self) -> None:
        raise NotImplementedError

    # -- shared helpers
    async def _deliver(self, msg: dict[str, Any]) -> None:
        """Hand ``msg`` to the owner. After an ack, let its waiter run before the
        next message is handled: callers see acks and stream messages in wire order."""
        self.owner._receive(msg, self)
        if msg.get("type") == "ack":
            await asyncio.sleep(0)

    def _connect_query(self, resume: bool) -> dict[str, str]:
        q = self.owner.query(resume=resume)
        self.carried_token = "resumeToken" in q
        return q

    def _url(self, path: str) -> str:
        return self.owner.base_url + self.owner.paths[path]


def refused(
    code: str, message: str, *, carried_token: bool, close_code: int | None = None,
    status: int | None = None, retry_after: float | None = None,
) -> ClientError:  # fmt: skip
    """The error for a refused connect (or stream), final or not.

    4401 / 401 on a request that carried the resume token means the token is
    no good (e.g. a restarted bridge without ``security.token_secret``): not
    final, the client connects afresh. Without a token it is final (the app
    refused the join), like 1008, 4400, 4404 and HTTP 400, 403, 404.
    """
    unauthorized = close_code == 4401 or status == 401
    if unauthorized and carried_token:
        fatal = False
    elif close_code is not None:
        fatal = close_code in STOP_CLOSE_CODES
    else:
        fatal = status in (400, 401, 403) or (status == 404 and code != "transport_disabled")
    return ClientError(
        code, message, fatal=fatal, close_code=close_code, status=status,
        retry_after=retry_after, token_refused=unauthorized and carried_token,
    )  # fmt: skip


async def http_refusal(resp: aiohttp.ClientResponse, carried_token: bool) -> ClientError:
    """The error for an HTTP answer other than 200 (its JSON body names the code)."""
    code = f"http_{resp.status}"
    with contextlib.suppress(Exception):  # not JSON, or not the bridge's error shape
        code = str((await resp.json())["error"]["code"])
    retry_after = None
    if resp.status == 503:
        retry_after = _seconds(resp.headers, 1.0)
    return refused(
        code, f"HTTP {resp.status}", carried_token=carried_token, status=resp.status,
        retry_after=retry_after,
    )  # fmt: skip


def _seconds(headers: Mapping[str, str], default: float) -> float:
    try:
        return max(0.0, float(headers.get("Retry-After", default)))
    except ValueError:
        return default


class HttpTransport(Transport):
    """SSE and poll: commands go by ``POST /api/messages``; its answer holds the acks."""

    async def send(self, messages: list[dict[str, Any]]) -> bool:
        owner = self.owner
        token = owner.token
        if not token or self.failure is not None:
            return False
        codec = owner.wire
        try:
            async with owner.http.post(
                self._url("messages"), params={"resumeToken": token}, data=codec.encode(messages),
                headers={**owner.headers, "Content-Type": codec.content_type,
                         "Accept": codec.content_type},
            ) as r:  # fmt: skip
                if r.status == 401 and token == owner.token:
                    # The token is no good here (expired, a restarted bridge, another
                    # secret): retrying would be refused forever. End the transport;
                    # the client connects afresh, keeping these commands.
                    self.fail(await http_refusal(r, carried_token=True))
                    return False
                if r.status != 200:
                    log.debug("POST of %d commands answered %d", len(messages), r.status)
                    return False
                raw = await r.read()
        except (aiohttp.ClientError, ConnectionError) as exc:
            log.debug("POST of %d commands failed: %s", len(messages), exc)
            return False
        answer = codec.decode(raw)
        if not isinstance(answer, dict):
            return False
        for m in list(answer.get("acks", [])) + list(answer.get("errors", [])):
            if isinstance(m, dict):
                owner._receive(m, self, from_post=True)
        return True
