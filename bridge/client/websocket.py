"""The WebSocket transport: one connection both ways, frames in the chosen codec.

The subprotocol names the codec (``bridge.v1.json``: text frames,
``bridge.v1.msgpack``: binary frames). The bridge's ``ping`` messages are
answered with ``pong`` here; aiohttp answers protocol-level pings itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from ..protocol.codecs import SUBPROTOCOLS
from .errors import ClientError
from .transport import Transport, log, refused

_CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING,
           aiohttp.WSMsgType.ERROR)  # fmt: skip


class WebSocketTransport(Transport):
    kind = "websocket"
    ws: aiohttp.ClientWebSocketResponse | None = None

    async def _open(self) -> dict[str, Any]:
        owner = self.owner
        subprotocol = next(name for name, c in SUBPROTOCOLS.items() if c is owner.wire)
        self.ws = await owner.http.ws_connect(
            self._url("websocket"), params=self._connect_query(resume=True),
            protocols=(subprotocol,), headers=owner.headers, autoping=True,
        )  # fmt: skip
        msg = await self._next()
        if msg is None or msg.get("type") != "welcome":
            raise self._closed_error()
        return msg

    async def _read(self) -> ClientError:
        while True:
            async with asyncio.timeout(self.owner.heartbeat_timeout):
                msg = await self._next()
            if msg is None:
                return self._closed_error()
            await self._deliver(msg)

    async def _next(self) -> dict[str, Any] | None:
        """The next message (pings answered on the way), or None once closed."""
        assert self.ws is not None
        while True:
            frame = await self.ws.receive()
            if frame.type in _CLOSED:
                return None
            if frame.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                continue
            msg = self.owner.wire.decode(frame.data)
            if not isinstance(msg, dict):
                log.debug("websocket: dropped an undecodable frame: %s", msg)
                continue
            if msg.get("type") == "ping":
                await self._write({"type": "pong", "ts": msg.get("ts")})
            return msg

    def _closed_error(self) -> ClientError:
        assert self.ws is not None
        code = self.ws.close_code or 1006
        return refused(f"close_{code}", "websocket closed", close_code=code,
                       carried_token=self.carried_token)  # fmt: skip

    async def send(self, messages: list[dict[str, Any]]) -> bool:
        if self.ws is None or self.ws.closed:
            return False
        try:
            for m in messages:
                await self._write(m)
        except ConnectionError:  # closing meanwhile: the reader reports the loss
            return False
        return True

    async def _write(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        data = self.owner.wire.encode(message)
        if self.owner.wire.binary:
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data.decode("utf-8"))

    async def _close_io(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
