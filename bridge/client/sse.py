"""The SSE transport: ``GET paths.events`` (``text/event-stream``) in,
``POST paths.messages`` out.

Each event's data is one whole message as JSON (SSE is JSON only, whatever
the client's codec for POSTs); :class:`bridge.protocol.sse.EventParser`
turns the byte stream into events. ``Last-Event-ID`` is not used: the
reconnect carries token, epoch and lastSeq in the query like every transport.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import aiohttp

from ..protocol.codecs import JSON
from ..protocol.sse import EventParser
from .errors import ClientError
from .transport import HttpTransport, http_refusal, log


class SSETransport(HttpTransport):
    kind = "sse"
    resp: aiohttp.ClientResponse | None = None

    async def _open(self) -> dict[str, Any]:
        owner = self.owner
        self._parser = EventParser()
        self._events: deque[dict[str, Any]] = deque()
        self.resp = await owner.http.get(
            self._url("events"), params=self._connect_query(resume=True),
            headers={**owner.headers, "Accept": "text/event-stream"},
        )  # fmt: skip
        if self.resp.status != 200:
            raise await http_refusal(self.resp, self.carried_token)
        msg = await self._next()
        if msg is None or msg.get("type") != "welcome":
            raise ClientError("sse_error", "the event stream ended before its welcome")
        return msg

    async def _read(self) -> ClientError:
        while True:
            async with asyncio.timeout(self.owner.heartbeat_timeout):
                msg = await self._next()
            if msg is None:
                return ClientError("sse_error", "the event stream ended")
            await self._deliver(msg)

    async def _next(self) -> dict[str, Any] | None:
        """The next message, or None when the stream ended."""
        assert self.resp is not None
        while not self._events:
            chunk = await self.resp.content.readany()
            if not chunk:
                return None
            for event in self._parser.feed(chunk):
                msg = JSON.decode(event.data)
                if isinstance(msg, dict):
                    self._events.append(msg)
                else:
                    log.debug("sse: dropped an undecodable event: %s", msg)
            if self._parser.error is not None:
                raise ClientError("bad_message", f"sse: {self._parser.error.message}")
        return self._events.popleft()

    async def _close_io(self) -> None:
        if self.resp is not None:
            self.resp.close()
