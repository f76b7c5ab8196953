"""Pass-through: the bridge as the app's front door (``upstream.passthrough``).

Every request the bridge does not serve itself goes to ``upstream.url`` and
back (shared/design/upstream.md, "Pass-through"):

- method, path, query and body unchanged; the body streamed, capped at
  ``max_body`` (413); the answer streamed back as it comes (chunked, SSE, big
  files), its bytes untouched (no decompression, no cookie jar: ``Cookie`` and
  ``Set-Cookie`` pass as they are);
- hop-by-hop headers dropped both ways; ``X-Forwarded-For`` / ``-Proto`` /
  ``-Host`` set, an incoming ``X-Forwarded-*`` believed only from
  ``security.trusted_proxies``;
- a WebSocket upgrade to one of the app's paths is proxied frame by frame;
- the app unreachable → 502, silent past ``timeout`` → 504, each with the JSON
  error body.

Never an open proxy: the target is always ``upstream.url`` (an absolute-form
request target or a ``Host`` naming elsewhere changes nothing), ``CONNECT``
is 405, a path that climbs above ``/`` is 400, and the bridge's own paths and
``/bridge/…`` are never passed through, whatever their case or encoding.

It is a middleware: it sees the requests no route of the bridge matched
(aiohttp's 404), so pages a deployment adds to the bridge still win.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from .config import Config
from .exceptions import BodyTooBig
from .intercept import Intercept
from .metrics import Metrics, status_label
from .tasks import TaskOwner
from .transports.common import BRIDGE, client_ip, json_error

log = logging.getLogger("bridge.passthrough")

#: never forwarded, either way (RFC 9110 7.6.1), plus what the bridge sets itself
HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "proxy-connection", "host",
        "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
    }
)  # fmt: skip
#: what proxies say about the client: believed only from security.trusted_proxies
#: (from anyone else dropped, whatever the app would make of them)
FORWARDING = frozenset({"forwarded", "x-real-ip", "x-forwarded-port", "x-forwarded-prefix",
                        "x-forwarded-ssl", "x-forwarded-scheme", "x-forwarded-server",
                        "x-original-forwarded-for", "x-client-ip", "true-client-ip",
                        "cf-connecting-ip"})  # fmt: skip
#: the answer's headers the bridge does not copy (aiohttp writes its own)
_ANSWER_SKIP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "trailer", "transfer-encoding",
     "upgrade", "proxy-connection"}
)  # fmt: skip
_WS_SKIP = frozenset(
    {"sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol"}
)  # fmt: skip
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
CHUNK = 64 * 1024
#: how long the side that did not close first has to finish its close
CLOSE_WAIT = 5.0


def _climbs(raw_path: str) -> bool:
    """Whether a path's dot segments climb above ``/`` (``/a/../../etc``)."""
    depth = 0
    for seg in raw_path.split("?", 1)[0].split("/")[1:]:
        low = seg.lower()
        if low in ("..", "%2e%2e", ".%2e", "%2e."):
            depth -= 1
            if depth < 0:
                return True
        elif low not in ("", ".", "%2e"):
            depth += 1
    return False


def _forwarded(headers: Any, drop: frozenset[str]) -> CIMultiDict[str]:
    named = {h.strip().lower() for line in headers.getall("Connection", ())
             for h in line.split(",") if h.strip()}  # fmt: skip
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        low = key.lower()
        if low not in drop and low not in named:
            out.add(key, value)
    return out


class PassThrough:
    """One per app: its own HTTP client (no cookie jar, no decompression)."""

    def __init__(self, cfg: Config, metrics: Metrics) -> None:
        self.metrics = metrics
        self.http: aiohttp.ClientSession | None = None
        self.tasks = TaskOwner("passthrough")
        self.cfg = cfg

    @property
    def cfg(self) -> Config:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: Config) -> None:
        """A (reloaded) configuration, and the bridge's own paths it names."""
        self._cfg = cfg
        mine = {p.lower().rstrip("/") for p in vars(cfg.paths).values()}
        if cfg.upstream.push is not None:
            mine.add(cfg.upstream.push.path.lower().rstrip("/"))
        self._own = frozenset(mine)

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
        )

    async def stop(self) -> None:
        await self.tasks.aclose()  # the app's WebSockets still open are cut
        if self.http is not None:
            await self.http.close()

    # ------------------------------------------------------------------ what it serves
    def own(self, path: str) -> bool:
        """Whether a (decoded) path is the bridge's, whatever its case."""
        low = path.lower().rstrip("/") or "/"
        return low == "/bridge" or low.startswith("/bridge/") or low in self._own

    def target(self, request: web.Request) -> URL:
        """Always upstream.url: only the request's path and query are taken."""
        base = URL(self.cfg.upstream.url.rstrip("/"))
        raw = request.raw_path  # as the client sent it (encoded), origin-form or not
        if "://" in raw.split("?", 1)[0]:  # absolute-form: keep only its path and query
            url = URL(raw)
            raw = url.raw_path_qs
        return URL(str(base) + raw, encoded=True)

    def headers_for(self, request: web.Request) -> CIMultiDict[str]:
        headers = _forwarded(request.headers, HOP_BY_HOP)
        trusted = self.cfg.security.trusted_proxies
        peer = client_ip(request)
        if peer not in trusted:
            for key in list(headers):
                low = key.lower()
                if low in FORWARDING or low.startswith("x-forwarded-"):
                    del headers[key]
        incoming = ", ".join(request.headers.getall("X-Forwarded-For", ()))
        xff = f"{incoming}, {peer}" if peer in trusted and incoming else peer
        headers["X-Forwarded-For"] = xff
        believed = peer in trusted
        headers["X-Forwarded-Proto"] = (
            request.headers.get("X-Forwarded-Proto", request.scheme) if believed else request.scheme
        )
        headers["X-Forwarded-Host"] = (
            request.headers.get("X-Forwarded-Host", request.host) if believed else request.host
        )
        return headers

    # ------------------------------------------------------------------ HTTP
    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "CONNECT":
            return json_error(405, "method_not_allowed", "CONNECT is not passed through")
        if not request.raw_path.startswith("/") and "://" not in request.raw_path:
            # asterisk-form (OPTIONS *) or worse: about the bridge, not the app
            return json_error(400, "bad_request", "only origin-form request targets pass")
        if _climbs(request.raw_path):
            return json_error(400, "bad_request", "the path climbs above /")
        if self.own(request.path):
            return json_error(404, "not_found", f"no such path: {request.path}")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await self.websocket(request)
        pt = self.cfg.upstream.passthrough
        length = request.content_length
        if length is not None and length > pt.max_body:
            return self._fail(
                request, 413, "too_big", f"request bodies are limited to {pt.max_body} bytes"
            )
        assert self.http is not None
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=pt.timeout, sock_read=pt.timeout)
        over: list[bool] = []
        body: Any = self._body(request, pt.max_body, over) if request.body_exists else None
        try:
            async with self.http.request(
                request.method, self.target(request), headers=self.headers_for(request),
                data=body, allow_redirects=False, timeout=timeout,
            ) as answer:  # fmt: skip
                self.metrics.passthrough_duration.observe(time.monotonic() - started)
                return await self._relay(request, answer)
        except BodyTooBig:
            return self._fail(
                request, 413, "too_big", f"request bodies are limited to {pt.max_body} bytes"
            )
        except TimeoutError:
            return self._fail(
                request, 504, "upstream_timeout", f"the app did not answer within {pt.timeout:g}s"
            )
        except aiohttp.ClientConnectorError as exc:
            return self._fail(
                request, 502, "upstream_unavailable", f"cannot reach the app: {exc.os_error}"
            )
        except aiohttp.ClientError as exc:
            if over:
                return self._fail(
                    request, 413, "too_big", f"request bodies are limited to {pt.max_body} bytes"
                )
            return self._fail(
                request, 502, "upstream_error", f"the app's answer broke off: {type(exc).__name__}"
            )

    def _fail(self, request: web.Request, status: int, code: str, message: str) -> web.Response:
        resp = json_error(status, code, message)
        self._count(request, resp)
        return resp

    def _count(self, request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        method = request.method if request.method in METHODS else "other"
        self.metrics.passthrough_requests.labels(method, status_label(resp.status)).inc()
        return resp

    @staticmethod
    async def _body(request: web.Request, cap: int, over: list[bool]) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.content.iter_chunked(CHUNK):
            seen += len(chunk)
            if seen > cap:
                over.append(True)  # (the HTTP client may wrap what this raises)
                raise BodyTooBig(f"over {cap} bytes")
            yield chunk

    async def _relay(
        self, request: web.Request, answer: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        headers = _forwarded(answer.headers, _ANSWER_SKIP)
        # (no length: aiohttp sends it chunked to HTTP/1.1 clients, and to 1.0 ones
        # until it closes the connection)
        resp = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        self._count(request, resp)
        await resp.prepare(request)
        if request.method != "HEAD":
            try:
                async for chunk in answer.content.iter_any():
                    await resp.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # the head is sent: all that is left is to cut the answer short
                log.warning("pass-through answer to %s broke off: %s", request.path, exc)
                if request.transport is not None:
                    request.transport.close()
                return resp
        await resp.write_eof()
        return resp

    # ------------------------------------------------------------------ WebSocket
    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """The app's own WebSocket, frame by frame."""
        assert self.http is not None
        pt = self.cfg.upstream.passthrough
        protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                     if p.strip()]  # fmt: skip
        ws = web.WebSocketResponse(autoping=True, max_msg_size=pt.max_body)
        if not ws.can_prepare(request).ok:  # not a valid upgrade: nothing opened at the app
            return self._fail(request, 400, "bad_request", "not a valid WebSocket upgrade")
        headers = self.headers_for(request)
        for key in list(headers):
            if key.lower() in _WS_SKIP:
                del headers[key]
        try:
            async with asyncio.timeout(pt.timeout):
                upstream = await self.http.ws_connect(
                    self.target(request), headers=headers, protocols=protocols,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=pt.timeout),
                    autoping=True, max_msg_size=pt.max_body,
                )  # fmt: skip
        except TimeoutError:
            return self._fail(
                request, 504, "upstream_timeout",
                f"the app did not take the WebSocket within {pt.timeout:g}s",
            )  # fmt: skip
        except aiohttp.WSServerHandshakeError as exc:
            return self._fail(
                request,
                exc.status if 400 <= exc.status < 600 else 502,
                "upstream_rejected",
                f"the app refused the WebSocket: {exc.status}",
            )
        except aiohttp.ClientError as exc:
            return self._fail(
                request, 502, "upstream_unavailable", f"cannot reach the app: {type(exc).__name__}"
            )
        ws = web.WebSocketResponse(
            protocols=[upstream.protocol] if upstream.protocol else (),
            autoping=True, max_msg_size=pt.max_body,
        )  # fmt: skip
        self._count(request, web.Response(status=101))
        try:
            await ws.prepare(request)
        except BaseException:
            await upstream.close()
            raise
        # its own task, which closes both ends: a close code on its way to the
        # other side is still delivered when this handler is cancelled (its
        # client went away; aiohttp's test server cancels such handlers)
        await asyncio.shield(self.tasks.spawn(_pump_both(ws, upstream), "a WebSocket"))
        return ws


PASSTHROUGH: web.AppKey[PassThrough] = web.AppKey("passthrough", PassThrough)
INTERCEPT: web.AppKey[Intercept] = web.AppKey("intercept", Intercept)


async def _pump(src: Any, dst: Any) -> int | None:
    """Copy frames from ``src`` to ``dst`` until ``src`` closes; its close code."""
    async for msg in src:
        if msg.type is WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE, WSMsgType.CLOSING):
            break
    code: int | None = src.close_code
    return code


async def _pump_both(ws: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse) -> None:
    """Frames both ways until one side closes; its close code goes to the other
    side first (closing it ends the other pump's pending receive), then the other
    pump is awaited, not cancelled (a cancelled receive would turn the code it
    is about to hand on into 1006)."""
    down = asyncio.ensure_future(_pump(upstream, ws))
    up = asyncio.ensure_future(_pump(ws, upstream))
    try:
        done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        first = next(iter(done))
        code = first.result() if first.exception() is None else None
        # never sent in a close frame (RFC 6455 7.4.1): the peer went away, or said nothing
        code = {1005: 1000, 1006: 1001, 1015: 1001}.get(code or 1005, code)
        other = up if first is down else down
        with contextlib.suppress(Exception):
            if first is down:
                await ws.close(code=code or 1000)
            else:
                await upstream.close(code=code or 1000)
        async with asyncio.timeout(CLOSE_WAIT):
            await asyncio.gather(other, return_exceptions=True)
    except TimeoutError:
        pass  # the other side never finished closing: it is cut below
    finally:
        for task in (down, up):
            task.cancel()
        await asyncio.gather(down, up, return_exceptions=True)
        await upstream.close()
        if not ws.closed:
            await ws.close(code=upstream.close_code or 1000)


@web.middleware
async def passthrough_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Requests no route of the bridge matched: the app's own state polls answered
    from the bridge's copy (state.intercept), the rest passed to the app (when
    pass-through is on)."""
    exc = request.match_info.http_exception
    if not isinstance(exc, web.HTTPNotFound):
        if request.method == "CONNECT":
            return json_error(405, "method_not_allowed", "CONNECT is not passed through")
        response: web.StreamResponse = await handler(request)
        return response
    intercept = request.app.get(INTERCEPT)
    if intercept is not None:
        sid = intercept.session_of(request)
        if sid is not None:
            answer = await intercept.answer(request, request.app[BRIDGE], sid)
            if answer is not None:
                return answer
    passthrough = request.app.get(PASSTHROUGH)
    if passthrough is None or not passthrough.cfg.upstream.passthrough.enabled:
        response = await handler(request)
        return response
    return await passthrough.handle(request)
