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
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..config import Route, Upstream
from ..core.breaker import STATE_VALUES, CircuitBreaker
from ..exceptions import (
    CircuitOpen,
    UpstreamError,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from ..metrics import Metrics, status_label
from ..protocol import backoff
from .templates import MISSING, lookup, render_json, render_path

log = logging.getLogger("bridge.upstream")

NOT_APPLIED = frozenset({429, 502, 503})
#: answers that say the app (or what stands in front of it) is unwell as a whole
APP_WIDE = frozenset({502, 503, 504})


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class StateResult:
    """``changed`` False means 304: keep the last state."""

    changed: bool
    payload: Any = None
    etag: str | None = None
    last_modified: str | None = None


def select(payload: Any, path: str | None) -> Any:
    """Follow a dotted path (``data.session``) into a JSON document."""
    if not path:
        return payload
    value = lookup(payload, tuple(path.split(".")))
    return None if value is MISSING else value


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class UpstreamClient:
    """One per bridge process; safe to share between sessions."""

    def __init__(self, cfg: Upstream, http: aiohttp.ClientSession, metrics: Metrics) -> None:
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
        metrics.breaker_state.set(0)

    def reconfigure(self, cfg: Upstream) -> None:
        """Take a reloaded ``upstream`` section (routes, timeouts, retries) from now on.
        The breaker keeps its state; its thresholds change."""
        self.cfg = cfg
        self.base = cfg.url.rstrip("/")
        self.breaker.threshold = cfg.breaker.failures
        self.breaker.recovery = cfg.breaker.recovery
        self.breaker.trial_timeout = cfg.timeout + 1.0
        self._timeout = aiohttp.ClientTimeout(total=cfg.timeout)

    def _update_breaker_gauge(self) -> None:
        self.metrics.breaker_state.set(STATE_VALUES[self.breaker.state(time.monotonic())])

    def breaker_state(self) -> str:
        return self.breaker.state(time.monotonic())

    async def _send_once(
        self,
        name: str,
        method: str,
        path: str,
        body: Any,
        headers: Mapping[str, str],
    ) -> Response:
        started = time.monotonic()
        status: int | None = None
        try:
            async with self.http.request(
                method,
                self.base + path,
                json=body,
                headers=dict(headers),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                raw = await resp.read()
                parsed: Any = None
                if raw:
                    ctype = resp.headers.get("Content-Type", "")
                    if "json" in ctype:
                        try:
                            parsed = await resp.json(content_type=None)
                        except ValueError:
                            parsed = raw.decode("utf-8", "replace")
                    else:
                        parsed = raw.decode("utf-8", "replace")
                return Response(status, parsed, resp.headers)
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

    async def request(
        self,
        name: str,
        route: Route | Any,
        ctx: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> Response:
        """Send a templated request with the retry rule above.

        Raises MissingValue (from templates) when a required field is absent,
        UpstreamRejected on 4xx, UpstreamFailed/UpstreamTimeout after the
        allowed retries, UpstreamUnavailable when the breaker is open or the
        app cannot be reached.
        """
        path = render_path(route.path, ctx)
        body = render_json(getattr(route, "json", None), ctx)
        idempotent = bool(getattr(route, "idempotent", False))
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
                resp = await self._send_once(name, route.method, path, body, headers or {})
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
        self, session_id: str, etag: str | None, last_modified: str | None
    ) -> StateResult:
        """Conditional GET of one session's state. Raises UpstreamError subclasses."""
        route = self.cfg.state
        headers: dict[str, str] = {"Accept": "application/json"}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        resp = await self.request(
            "state", route, {"sessionId": session_id, "params": {}, "payload": {}}, headers
        )
        if resp.status == 304:
            return StateResult(False, etag=etag, last_modified=last_modified)
        return StateResult(
            True,
            select(resp.body, route.select),
            resp.headers.get("ETag"),
            resp.headers.get("Last-Modified"),
        )
