"""Requests to the legacy app: templated commands and state fetches.

Retry rule (docs/configuration.md, "Retries"): ``retry.attempts`` counts every
try. A request is tried again only where a retry cannot apply it twice:

- the connection was refused / could not be opened (nothing was sent), or
- the app answered 502, 503 or 429 (it did not act on the request), or
- the route is ``idempotent: true`` (then also after other 5xx and timeouts).

Between tries the delay is ``min(max, initial·2^(n−1))·(1 − jitter·U[0,1))``,
or the app's ``Retry-After`` when that is shorter than ``retry.max``.

Circuit breaker (``core/breaker.py``): connection failures, timeouts and
502/503/504 are evidence that the app as a whole is unwell; any other 5xx
is scoped to its session, and counts only from sessions that worked before
and only when that many different ones fail in a row, so one session's (or
one client's made-up sessions') failing route never opens the breaker for
everyone. While it is open nothing is sent and :class:`CircuitOpen` is raised
at once. A request cancelled while it was the half-open trial, or answered
429, gives the trial back.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ..config import Route, StatePart, StateRoute, Upstream
from ..core.breaker import STATE_VALUES, CircuitBreaker
from ..core.limiter import Outcome
from ..exceptions import (
    CircuitOpen,
    UpstreamBusy,
    UpstreamError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreadable,
)
from ..metrics import Metrics, status_label
from ..protocol import backoff
from . import hooks
from .answers import Captured, Unusable, decode_json, rejection, take_captures
from .limits import UpstreamLimits, kind_of
from .templates import MISSING, lookup, render_fields, render_json, render_path

log = logging.getLogger("bridge.upstream")

NOT_APPLIED = frozenset({429, 502, 503})
#: answers that say the app (or what stands in front of it) is unwell as a whole
APP_WIDE = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    #: the decoded answer for a route that uses it (else None)
    body: Any
    headers: Mapping[str, str]
    captured: Captured = field(default_factory=Captured)
    #: the answer's bytes, when the route uses its answer
    raw: bytes = b""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A rendered route, ready to send."""

    method: str
    path: str
    query: list[tuple[str, str]]
    headers: CIMultiDict[str]
    data: bytes | None


@dataclass(frozen=True, slots=True)
class StateResult:
    """``changed`` False means 304: keep the last state."""

    changed: bool
    payload: Any = None
    etag: str | None = None
    last_modified: str | None = None
    captured: Captured = field(default_factory=Captured)
    #: the answer as the app sent it, and its content type (for state.intercept)
    raw: bytes = b""
    content_type: str = ""


def select(payload: Any, path: str | None) -> Any:
    """Follow a dotted path (``data.session``) into a JSON document."""
    if not path:
        return payload
    value = lookup(payload, tuple(path.split(".")))
    return None if value is MISSING else value


#: the longest a Retry-After holds every request (seconds)
MAX_PAUSE = 30.0


def _outcome(resp: Response) -> Outcome:
    """What an answer says about the app's capacity (core/limiter.py)."""
    if resp.status in (429, 502, 503, 504):
        return "overload"
    if resp.status < 500:
        return "ok"
    return "other"  # one session's 500


def _retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` (delay-seconds or an HTTP-date, RFC 9110
    10.2.3); None when there is none or it makes no sense (nan, inf, garbage)."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # an HTTP-date is GMT
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class UpstreamClient:
    """One per bridge process; safe to share between sessions."""

    def __init__(
        self, cfg: Upstream, http: aiohttp.ClientSession, metrics: Metrics,
        base_dir: str | None = None,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.http = http
        self.metrics = metrics
        self.base = cfg.url.rstrip("/")
        self.breaker = CircuitBreaker(
            failures=cfg.breaker.failures,
            recovery=cfg.breaker.recovery,
            trial_timeout=cfg.timeout + 1.0,  # a request never outlives its timeout
        )
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        self.limits = UpstreamLimits(cfg, metrics)
        #: the config file's folder (decode hooks are looked up there first)
        self.base_dir = base_dir
        metrics.breaker_state.set(0)

    def reconfigure(self, cfg: Upstream, base_dir: str | None = None) -> None:
        """Take a reloaded ``upstream`` section (routes, timeouts, retries) from now on.
        The breaker keeps its state; its thresholds change."""
        self.cfg = cfg
        self.base_dir = base_dir
        self.base = cfg.url.rstrip("/")
        self.breaker.threshold = cfg.breaker.failures
        self.breaker.recovery = cfg.breaker.recovery
        self.breaker.trial_timeout = cfg.timeout + 1.0
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        self.limits.reconfigure(cfg)

    def stop_starting(self) -> None:
        """The bridge is stopping: no request starts any more (upstream/limits.py)."""
        self.limits.close()

    def _update_breaker_gauge(self) -> None:
        self.metrics.breaker_state.set(STATE_VALUES[self.breaker.state(time.monotonic())])

    def breaker_state(self) -> str:
        return self.breaker.state(time.monotonic())

    async def _read(self, resp: aiohttp.ClientResponse, name: str) -> bytes:
        """The answer's body, up to ``upstream.max_response``. Raises Unusable."""
        cap = self.cfg.max_response
        if resp.content_length is not None and resp.content_length > cap:
            raise Unusable(f"{name}: the answer is over {cap} bytes", "too_big")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
            if size > cap:
                raise Unusable(f"{name}: the answer is over {cap} bytes", "too_big")
            chunks.append(chunk)
        return b"".join(chunks)

    async def _send_once(self, name: str, req: Prepared, uses_answer: bool) -> Response:
        started = time.monotonic()
        status: int | None = None
        try:
            async with self.http.request(
                req.method,
                URL(self.base + req.path, encoded=True),
                params=req.query or None,
                data=req.data,
                headers=req.headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                if not uses_answer or status >= 300:
                    try:
                        await self._read(resp, name)  # the connection can be used again
                    except Unusable:
                        resp.close()
                    return Response(status, None, resp.headers)
                try:
                    raw = await self._read(resp, name)
                except Unusable as exc:
                    self.metrics.upstream_unusable.labels(name, exc.reason).inc()
                    raise
                return Response(status, None, resp.headers, raw=raw)
        except TimeoutError:
            raise UpstreamTimeout(f"{name}: no answer within {self.cfg.timeout}s") from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnavailable(f"{name}: cannot connect: {exc.os_error}") from None
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(f"{name}: {type(exc).__name__}: {exc}") from None
        finally:
            elapsed = time.monotonic() - started
            self.metrics.upstream_duration.labels(name).observe(elapsed)
            self.metrics.upstream_requests.labels(name, status_label(status)).inc()

    async def _send_limited(
        self, name: str, req: Prepared, uses_answer: bool, scope: str | None
    ) -> Response:
        """One try, when its turn comes (upstream/limits.py); its outcome teaches
        the adaptive limit. Raises UpstreamBusy when the queue is full."""
        ticket = await self.limits.acquire(kind_of(name), scope)
        started = time.monotonic()
        try:
            resp = await self._send_once(name, req, uses_answer)
        except (UpstreamTimeout, UpstreamUnavailable):  # no answer in time, or none at all
            self.limits.release(ticket, "overload", time.monotonic() - started)
            raise
        except BaseException:  # cancelled, a broken answer: nothing learned
            self.limits.release(ticket, "other", time.monotonic() - started)
            raise
        self.limits.release(ticket, _outcome(resp), time.monotonic() - started)
        if resp.status in (429, 503):
            hint = _retry_after(resp.headers)
            if hint is not None:  # asked to wait: every request waits, not only retries
                self.limits.pause(min(hint, MAX_PAUSE))
        return resp

    def prepare(
        self,
        name: str,
        route: Route,
        ctx: Mapping[str, Any],
        forwarded: Mapping[str, str] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Prepared:
        """Render a route: path, query, headers (``upstream.headers``, then the
        client's forwarded ones, then the route's; ``extra`` last), body.
        Raises RenderError."""
        path = render_path(route.path, ctx)
        query = render_fields(route.query, ctx, f"{name} query") if route.query else []
        headers: CIMultiDict[str] = CIMultiDict()
        if self.cfg.headers:
            headers.update(render_fields(self.cfg.headers, ctx, "header"))
        if forwarded:
            headers.update(forwarded)
        if route.headers:
            headers.update(render_fields(route.headers, ctx, "header"))
        data: bytes | None = None
        if route.form is not None:
            data = urlencode(render_fields(route.form, ctx, f"{name} form", line=False)).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        elif route.json is not None:
            body = render_json(route.json, ctx)
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
            headers.setdefault("Content-Type", "application/json")
        if extra:
            headers.update(extra)
        return Prepared(route.method, path, query, headers, data)

    async def _use(self, name: str, route: Route, resp: Response) -> Response:
        """Decode a 2xx answer the route uses; reject_when; captures.
        Raises Unusable or UpstreamRejected."""
        try:
            if route.decode is not None:
                hook = hooks.resolve(route.decode, self.base_dir)
                try:
                    decoded = await hooks.run(hook, resp.status, resp.headers, resp.raw)
                except ValueError as exc:
                    raise Unusable(f"{name}: the decode hook refused the answer: {exc}",
                                   "invalid") from None  # fmt: skip
                except hooks.HookFailed as exc:
                    log.warning("decode hook %s of %s %s", route.decode, name, exc)
                    raise Unusable(f"{name}: the decode hook {exc}",
                                   "hook_slow" if exc.slow else "hook_error") from None  # fmt: skip
            elif resp.status == 204 or not resp.raw:
                decoded = None
                if route.uses_answer:
                    raise Unusable(f"{name}: the answer is empty", "invalid")
            else:
                decoded = decode_json(name, resp.headers, resp.raw)
        except Unusable as exc:
            self.metrics.upstream_unusable.labels(name, exc.reason).inc()
            raise
        message = rejection(decoded, route.reject_when)
        if message is not None:
            raise UpstreamRejected(message, status=resp.status)
        try:
            captured = take_captures(name, decoded, route.capture)
        except Unusable as exc:
            self.metrics.upstream_unusable.labels(name, exc.reason).inc()
            raise
        for scope in ("user", "session"):
            count = len(getattr(captured, scope))
            if count:
                self.metrics.upstream_captures.labels(scope).inc(count)
        return Response(resp.status, decoded, resp.headers, captured, resp.raw)

    async def request(
        self,
        name: str,
        route: Route,
        ctx: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Response:
        """Send a templated request with the retry rule above.

        Raises RenderError (from templates) when a value is absent or unsafe,
        UpstreamRejected on 4xx, UpstreamFailed/UpstreamTimeout after the
        allowed retries, UpstreamUnavailable when the breaker is open or the
        app cannot be reached; Unusable (an UpstreamUnreadable) for a 2xx the
        route cannot use, UpstreamRejected for one its ``reject_when`` refuses.
        ``headers``: the client's forwarded ones; ``extra``: the bridge's own.
        """
        prepared = self.prepare(name, route, ctx, headers, extra)
        uses_answer = route.uses_answer or route.decode is not None
        idempotent = route.idempotent
        scope = str(ctx.get("sessionId", "")) or None
        retry = self.cfg.retry
        attempt = 0
        while True:
            attempt += 1
            delay_hint: float | None = None
            permit = self.breaker.allow(time.monotonic())
            if permit is None:
                self._update_breaker_gauge()
                self.metrics.upstream_requests.labels(name, "breaker_open").inc()
                raise CircuitOpen("upstream circuit breaker is open")
            try:
                resp = await self._send_limited(name, prepared, uses_answer, scope)
                if uses_answer and 200 <= resp.status < 300:
                    resp = await self._use(name, route, resp)
            except UpstreamBusy:  # not sent (the queue is full): no verdict
                self.breaker.release(permit)
                raise
            except UpstreamRejected:  # reject_when: the app is alive and said no
                self.breaker.success(scope)
                self._update_breaker_gauge()
                raise
            except UpstreamUnreadable:  # a 2xx the route cannot use: this session's failure
                self.breaker.failure(time.monotonic(), scope)
                self._update_breaker_gauge()
                raise
            except (UpstreamTimeout, UpstreamFailed) as exc:
                self.breaker.failure(time.monotonic())
                self._update_breaker_gauge()
                if not idempotent or attempt >= retry.attempts:
                    raise
                error: UpstreamError = exc
            except UpstreamUnavailable as exc:
                self.breaker.failure(time.monotonic())
                self._update_breaker_gauge()
                if attempt >= retry.attempts:
                    raise
                error = exc
            except BaseException:  # cancelled (or a bug): no outcome to report
                self.breaker.release(permit)
                raise
            else:
                if resp.status < 400:
                    self.breaker.success(scope)
                    self._update_breaker_gauge()
                    return resp
                if resp.status < 500 and resp.status != 429:
                    self.breaker.success(scope)  # the app is alive; the request was wrong
                    self._update_breaker_gauge()
                    raise UpstreamRejected(
                        f"{name}: upstream answered {resp.status}", status=resp.status
                    )
                if resp.status == 429:
                    # alive, asking to slow down: no verdict (a trial's slot is free again)
                    self.breaker.release(permit)
                else:
                    # one session's 500 says nothing about the app as a whole by itself
                    where = None if resp.status in APP_WIDE else scope
                    self.breaker.failure(time.monotonic(), where)
                    self._update_breaker_gauge()
                retryable = resp.status in NOT_APPLIED or idempotent
                error = UpstreamFailed(
                    f"{name}: upstream answered {resp.status}", status=resp.status
                )
                if not retryable or attempt >= retry.attempts:
                    raise error
                delay_hint = _retry_after(resp.headers)
            delay = backoff.delay(
                attempt, retry.initial, retry.max, jitter=retry.jitter, rnd=random.random()
            )
            if delay_hint is not None:
                delay = min(delay_hint, retry.max)
            self.metrics.upstream_retries.labels(name).inc()
            log.debug("retrying %s after %.3fs: %s", name, delay, error)
            await asyncio.sleep(delay)

    async def fetch_state(
        self,
        name: str,
        route: StateRoute | StatePart,
        ctx: Mapping[str, Any],
        forwarded: Mapping[str, str] | None,
        etag: str | None,
        last_modified: str | None,
    ) -> StateResult:
        """Conditional request of a session's state (or one part of it), its answer
        after ``select``. Raises UpstreamError subclasses and RenderError."""
        extra: dict[str, str] = {}
        if etag:
            extra["If-None-Match"] = etag
        if last_modified:
            extra["If-Modified-Since"] = last_modified
        named = {k.lower() for k in (*route.headers, *self.cfg.headers)}
        if "accept" not in named and route.decode is None:
            extra["Accept"] = "application/json"
        resp = await self.request(name, route, ctx, forwarded, extra)
        if resp.status == 304:
            return StateResult(False, etag=etag, last_modified=last_modified)
        return StateResult(
            True,
            select(resp.body, route.select),
            resp.headers.get("ETag"),
            resp.headers.get("Last-Modified"),
            resp.captured,
            resp.raw,
            resp.headers.get("Content-Type", ""),
        )
