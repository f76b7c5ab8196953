"""What the three test backends share: the request record, JSON errors and ETags."""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware


@dataclass
class RequestLog:
    """Every request an app was asked, as (method, route name), in order."""

    requests: list[tuple[str, str]] = field(default_factory=list)
    #: the query of each request, in the same order
    queries: list[dict[str, str]] = field(default_factory=list)
    #: route names answered 500 (a fault a test turns on and off)
    failing: set[str] = field(default_factory=set)
    #: route name → seconds each request of it waits before it is handled
    slow: dict[str, float] = field(default_factory=dict)

    def record(self, method: str, name: str, query: dict[str, str] | None = None) -> None:
        self.requests.append((method, name))
        self.queries.append(query or {})

    def count(self, name: str, method: str | None = None) -> int:
        """How many requests went to the route (or action) called ``name``."""
        return sum(1 for m, n in self.requests if n == name and (method is None or m == method))


class Fail(Exception):
    """Raised by a handler: the request is answered ``status`` ``{"detail": detail}``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail


def recording_middleware(key: web.AppKey[Any]) -> Middleware:
    """A middleware appending (method, route name) to ``app[key].requests`` (a request
    that matched no route is recorded under its path) and answering :class:`Fail`
    as JSON, without logging anything."""

    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        log: RequestLog = request.app[key]
        name = request.match_info.route.name or request.path
        log.record(request.method, name, dict(request.query))
        if name in log.slow:
            await asyncio.sleep(log.slow[name])
        if name in log.failing:
            return web.json_response({"detail": "a fault of the test"}, status=500)
        try:
            return await handler(request)
        except Fail as e:
            return web.json_response({"detail": e.detail}, status=e.status)

    return record


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def etag_of(body: str) -> str:
    return '"' + hashlib.sha256(body.encode()).hexdigest()[:32] + '"'


def _matches(if_none_match: str, etag: str) -> bool:
    tags = [t.strip() for t in if_none_match.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def json_with_etag(request: web.Request, data: Any) -> web.Response:
    """``data`` as JSON with an ETag (a hash of the body); 304 when If-None-Match has it."""
    body = dumps(data)
    etag = etag_of(body)
    if _matches(request.headers.get("If-None-Match", ""), etag):
        return web.Response(status=304, headers={"ETag": etag})
    return web.Response(text=body, content_type="application/json", headers={"ETag": etag})


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request's JSON body, which must be an object (else 422)."""
    try:
        body = json.loads(await request.text())
    except ValueError:
        raise Fail(422, "body must be JSON") from None
    if not isinstance(body, dict):
        raise Fail(422, "body must be a JSON object")
    return body


def string_field(data: Any, name: str) -> str:
    """``data[name]``, which must be a non-empty string (else 422 "<name> is required")."""
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise Fail(422, f"{name} is required")
    return value
