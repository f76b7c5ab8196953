"""The long-poll transport: ``GET paths.poll`` answers ``{"messages", "cursor"}``,
``POST paths.messages`` carries commands.

The first poll of a client without a token (or one the bridge must resume)
starts with a ``welcome``; a client the bridge still holds gets none, it
simply resumes (a *synthetic* welcome stands in for it). At most one poll
is outstanding, and none while a WebSocket upgrade is being opened: a poll
that reached the bridge after the WebSocket would replace it again.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from .errors import ClientError
from .transport import HttpTransport, http_refusal


class PollTransport(HttpTransport):
    kind = "poll"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor: int | None = None
        self._pending: list[dict[str, Any]] = []

    async def _open(self) -> dict[str, Any]:
        owner = self.owner
        self._pending = await self._poll(first=True)
        for msg in self._pending:
            if msg.get("type") == "welcome":
                return msg
        return {"type": "welcome", "resumed": True, "epoch": owner.epoch, "synthetic": True,
                "clientId": owner.client_id, "resumeToken": owner.token}  # fmt: skip

    async def _read(self) -> ClientError:
        pending, self._pending = self._pending, []
        for msg in pending:
            await self._deliver(msg)
        while True:
            await self.owner._polls_allowed.wait()
            for msg in await self._poll(first=False):
                await self._deliver(msg)

    async def _poll(self, first: bool) -> list[dict[str, Any]]:
        owner = self.owner
        q = self._connect_query(resume=not first or owner.token is not None)
        q.pop("lastSeq", None)
        if self.cursor is not None:
            q["cursor"] = str(self.cursor)
        elif owner.token and owner.epoch:
            q["cursor"] = str(owner.seq)
        if not first:
            q["wait"] = str(owner.poll_wait)
        codec = owner.wire
        async with owner.http.get(
            self._url("poll"), params=q, headers={**owner.headers, "Accept": codec.content_type},
            timeout=aiohttp.ClientTimeout(total=owner.poll_wait + 10),
        ) as r:  # fmt: skip
            if r.status != 200:
                raise await http_refusal(r, self.carried_token)
            raw = await r.read()
        body = codec.decode(raw)
        if not isinstance(body, dict):
            raise ClientError("bad_message", f"poll: {body}")
        messages, cursor = body.get("messages"), body.get("cursor")
        if not isinstance(messages, list) or not isinstance(cursor, int):
            raise ClientError("bad_message", "poll: not a {messages, cursor} answer")
        self.cursor = cursor
        return [m for m in messages if isinstance(m, dict)]

    async def _close_io(self) -> None:
        """Nothing to release: an outstanding poll ends with :meth:`run`'s reader."""
