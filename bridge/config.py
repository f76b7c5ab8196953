"""Configuration: YAML in, a validated and frozen :class:`Config` out.

Rules of this file:

1. The dataclasses below are the single source of truth. :func:`load_config`
   validates against them and :func:`json_schema` is generated from them, so
   the schema in ``config/bridge.schema.json`` can never drift from the code.
2. Validation collects every problem before failing; each problem starts with
   the key's dotted path and says what was expected.
3. Nothing here starts anything or exits: callers decide what to do with a
   :class:`~bridge.exceptions.ConfigError`.

Durations are ``200ms``, ``5s``, ``1m``, ``1h`` (or a bare number of
seconds); sizes are ``512``, ``64KiB``, ``1MiB`` (``KB``/``MB`` are decimal).
``${NAME}`` reads the environment, ``${NAME:-default}`` gives a default.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml

from .exceptions import ConfigError

# --------------------------------------------------------------------------- markers


@dataclass(frozen=True)
class _Duration:
    """Marks a float field holding seconds, written as ``200ms``/``5s``/``1m``."""

    minimum: float = 0.0


@dataclass(frozen=True)
class _Size:
    """Marks an int field holding bytes, written as ``64KiB``/``1MiB``."""

    minimum: int = 0


@dataclass(frozen=True)
class _Range:
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class _Doc:
    text: str


def doc(text: str) -> _Doc:
    return _Doc(text)


Duration = Annotated[float, _Duration()]
PositiveDuration = Annotated[float, _Duration(minimum=0.001)]
Size = Annotated[int, _Size()]
PositiveSize = Annotated[int, _Size(minimum=1)]
Port = Annotated[int, _Range(0, 65535)]
Count = Annotated[int, _Range(1, None)]
Fraction = Annotated[float, _Range(0.0, 1.0)]
JSONTemplate = Annotated[Any, "json"]

HTTPMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class Listen:
    host: str = "127.0.0.1"
    port: Port = 8080


@dataclass(frozen=True)
class Paths:
    websocket: str = "/api/websocket"
    events: str = "/api/events"
    poll: str = "/api/poll"
    messages: str = "/api/messages"
    metrics: str = "/metrics"
    health: str = "/healthz"
    ready: str = "/readyz"


@dataclass(frozen=True)
class Transports:
    """Which transports are served. A disabled one answers 404 (a WebSocket
    upgrade included), so clients fall back to the next one."""

    websocket: bool = True
    sse: bool = True
    poll: bool = True


@dataclass(frozen=True)
class Retry:
    attempts: Count = 3
    initial: Duration = 0.2
    max: Duration = 5.0
    jitter: Fraction = 0.5


@dataclass(frozen=True)
class Breaker:
    failures: Count = 5
    recovery: PositiveDuration = 10.0


@dataclass(frozen=True)
class Capture:
    """Values taken from a 2xx answer (dotted paths; digits pick list items) into
    the user's context (``{user.NAME}``) or the session's (``{session.NAME}``)."""

    user: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    session: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))


def _no_fields() -> Mapping[str, str]:
    return types.MappingProxyType({})


@dataclass(frozen=True)
class Route:
    """One request the bridge makes (docs/configuration.md, "Routes")."""

    path: str
    method: HTTPMethod = "POST"
    #: appended to the path, percent-encoded; a lone missing ``{x?}`` leaves the key out
    query: Mapping[str, str] = field(default_factory=_no_fields)
    #: sent with this request (over ``upstream.headers``)
    headers: Mapping[str, str] = field(default_factory=_no_fields)
    json: JSONTemplate = None
    #: an application/x-www-form-urlencoded body instead of ``json``
    form: Mapping[str, str] | None = None
    idempotent: bool = False
    capture: Capture | None = None
    #: a dotted path into the decoded 2xx answer; truthy there = upstream_rejected
    reject_when: str | None = None
    #: MODULE:FUNCTION decoding the answer (f(status, headers, body) -> value)
    decode: str | None = None

    @property
    def uses_answer(self) -> bool:
        return self.capture is not None or self.reject_when is not None


@dataclass(frozen=True)
class Keepalive(Route):
    every: PositiveDuration = 10.0
    #: a command of the user answered within the interval counts as their keep-alive
    commands_count: bool = False


@dataclass(frozen=True)
class StatePart(Route):
    """One of several GETs whose answers make one state (``upstream.state.parts``)."""

    method: HTTPMethod = "GET"
    select: str | None = None

    @property
    def uses_answer(self) -> bool:
        return True


@dataclass(frozen=True)
class StateRoute(Route):
    path: str = "/api/sessions/{sessionId}"
    method: HTTPMethod = "GET"
    every: PositiveDuration = 1.0
    select: str | None = None
    #: ``present_user``: rendered with the context of one present user of the session
    as_: Literal["none", "present_user"] = field(default="none", metadata={"key": "as"})
    #: several routes whose answers make one state ``{part: answer}`` (instead of ``path``)
    parts: Mapping[str, StatePart] | None = None
    #: answer the app's own frontend's GETs of this path from the bridge's copy
    intercept: bool = False

    @property
    def uses_answer(self) -> bool:
        return True


@dataclass(frozen=True)
class Passthrough:
    """Every request the bridge does not serve goes to the app and back."""

    enabled: bool = True
    #: the longest the app may take to answer, or stay silent in the middle of one
    timeout: PositiveDuration = 60.0
    #: the largest request body passed through (a larger one is answered 413)
    max_body: PositiveSize = 8 * 1024 * 1024


@dataclass(frozen=True)
class Push:
    path: str = "/bridge/push"
    secret: str = ""


def _default_commands() -> Mapping[str, Route]:
    return types.MappingProxyType(
        {
            "join": Route(
                method="POST",
                path="/api/sessions/{sessionId}/join",
                json={"userId": "{userId}", "name": "{params.name?}"},
            ),
            "vote": Route(
                method="PUT",
                path="/api/sessions/{sessionId}/votes/{userId}",
                json={"vote": "{payload.vote}"},
                idempotent=True,
            ),
            "reveal": Route(method="POST", path="/api/sessions/{sessionId}/reveal"),
            "reset": Route(method="POST", path="/api/sessions/{sessionId}/reset"),
            "leave": Route(
                method="POST", path="/api/sessions/{sessionId}/leave", json={"userId": "{userId}"}
            ),
        }
    )


def _default_keepalive() -> Keepalive:
    return Keepalive(
        method="POST",
        path="/api/sessions/{sessionId}/heartbeat",
        json={"userId": "{userId}"},
        every=10.0,
    )


@dataclass(frozen=True)
class Upstream:
    url: str
    timeout: PositiveDuration = 5.0
    retry: Retry = field(default_factory=Retry)
    breaker: Breaker = field(default_factory=Breaker)
    forward_headers: tuple[str, ...] = ("cookie", "authorization")
    commands: Mapping[str, Route] = field(default_factory=_default_commands)
    keepalive: Keepalive | None = field(default_factory=_default_keepalive)
    state: StateRoute = field(default_factory=StateRoute)
    push: Push | None = None
    #: how long a command waits while the breaker is open before upstream_unavailable
    hold: Duration = 15.0
    #: sent on every request to the app (a route's own headers win)
    headers: Mapping[str, str] = field(default_factory=_no_fields)
    #: commands (join and leave included) of one session at the app at once
    session_concurrency: Count = 1
    #: the most of an answer the bridge reads (a longer one is a failure)
    max_response: PositiveSize = 8 * 1024 * 1024
    passthrough: Passthrough = field(default_factory=Passthrough)
    #: the most of the bridge's own requests at the app at once (the adaptive limit's top)
    max_in_flight: Count = 10
    #: find the app's capacity: the limit comes down on 429/503/timeouts/queueing
    adaptive: bool = True
    #: requests waiting for a turn, past which a new one is refused (upstream_busy)
    max_queue: Count = 1000

    @property
    def uses_captures(self) -> bool:
        """Whether any route captures values (then they are shared through the backplane)."""
        state = self.state
        routes: list[Route] = [*self.commands.values(), state, *(state.parts or {}).values()]
        if self.keepalive is not None:
            routes.append(self.keepalive)
        return any(r.capture is not None for r in routes)


@dataclass(frozen=True)
class Heartbeat:
    interval: PositiveDuration = 25.0
    timeout: PositiveDuration = 60.0


@dataclass(frozen=True)
class Presence:
    grace: Duration = 45.0


@dataclass(frozen=True)
class Replay:
    max_messages: Count = 1000
    max_bytes: PositiveSize = 1024 * 1024
    max_age: PositiveDuration = 300.0


@dataclass(frozen=True)
class Dedupe:
    window: PositiveDuration = 600.0


@dataclass(frozen=True)
class Reconnect:
    initial: PositiveDuration = 1.0
    factor: Annotated[float, _Range(1.0, None)] = 2.0
    max: PositiveDuration = 30.0
    jitter: Fraction = 0.5
    upgrade_interval: PositiveDuration = 60.0


@dataclass(frozen=True)
class Codecs:
    msgpack: bool = True
    gzip_min_bytes: Size = 1024
    websocket_deflate: bool = True


@dataclass(frozen=True)
class Limits:
    max_message_bytes: PositiveSize = 64 * 1024
    max_connections: Count = 20000
    max_clients_per_session: Count = 1000
    max_connections_per_ip: Count = 200
    commands_per_second: Annotated[float, _Range(0.001, None)] = 20.0
    handshake_timeout: PositiveDuration = 10.0
    send_queue_bytes: PositiveSize = 256 * 1024
    max_poll_wait: PositiveDuration = 25.0


@dataclass(frozen=True)
class Admin:
    token: str = ""


@dataclass(frozen=True)
class Security:
    allowed_origins: tuple[str, ...] = ()
    require_origin: bool = False
    #: peers whose X-Forwarded-For is believed (your nginx / load balancer)
    trusted_proxies: tuple[str, ...] = ()
    token_secret: str = ""
    token_ttl: PositiveDuration = 24 * 3600.0


@dataclass(frozen=True)
class Shutdown:
    timeout: Duration = 30.0


@dataclass(frozen=True)
class RedisTLS:
    """Client TLS for ``rediss://`` URLs (files are PEM)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True


@dataclass(frozen=True)
class Sentinel:
    """Find the Redis master through Sentinel instead of ``url``'s host."""

    hosts: tuple[str, ...] = ()
    service: str = "mymaster"
    password: str = ""


@dataclass(frozen=True)
class Backplane:
    kind: Literal["memory", "redis"] = "memory"
    #: redis://[user:password@]host:port/db, or rediss:// for TLS
    url: str = "redis://127.0.0.1:6379/0"
    #: every key and channel starts with this (several bridges may share one Redis)
    prefix: str = "bridge"
    #: a session's poller and keep-alives run on the instance holding its lease
    lease: PositiveDuration = 5.0
    pool_size: Count = 64
    connect_timeout: PositiveDuration = 2.0
    tls: RedisTLS | None = None
    sentinel: Sentinel | None = None


@dataclass(frozen=True)
class Logging:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    debug: bool = False


@dataclass(frozen=True)
class Config:
    upstream: Upstream
    listen: Listen = field(default_factory=Listen)
    paths: Paths = field(default_factory=Paths)
    transports: Transports = field(default_factory=Transports)
    heartbeat: Heartbeat = field(default_factory=Heartbeat)
    presence: Presence = field(default_factory=Presence)
    replay: Replay = field(default_factory=Replay)
    dedupe: Dedupe = field(default_factory=Dedupe)
    reconnect: Reconnect = field(default_factory=Reconnect)
    codecs: Codecs = field(default_factory=Codecs)
    limits: Limits = field(default_factory=Limits)
    admin: Admin = field(default_factory=Admin)
    security: Security = field(default_factory=Security)
    shutdown: Shutdown = field(default_factory=Shutdown)
    backplane: Backplane = field(default_factory=Backplane)
    logging: Logging = field(default_factory=Logging)
    #: the folder of the config file (decode hooks are looked up there first)
    base_dir: str | None = field(default=None, metadata={"internal": True})
    #: what an operator should know about this config (demo routes in effect)
    notes: tuple[str, ...] = field(default=(), metadata={"internal": True})

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------- scalars

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_duration(value: object) -> float:
    """``"200ms"`` → 0.2; ``"5s"``/``5`` → 5.0. Raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 200ms, 5s or 1m")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("expected a duration like 200ms, 5s or 1m")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    raise ValueError("expected a duration like 200ms, 5s or 1m")


def parse_size(value: object) -> int:
    """``"64KiB"`` → 65536; ``512`` → 512. Raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 512, 64KiB or 1MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("expected a size like 512, 64KiB or 1MiB")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ValueError("expected a size like 512, 64KiB or 1MiB")


def _substitute_env(value: Any, path: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(
                f"{path or '<root>'}: environment variable {name} is not set "
                f"(write ${{{name}:-}} to allow it to be empty)"
            )
            return ""

        return _ENV_RE.sub(repl, value)
    if isinstance(value, dict):
        return {
            k: _substitute_env(v, f"{path}.{k}" if path else str(k), env, problems)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_substitute_env(v, f"{path}[{i}]", env, problems) for i, v in enumerate(value)]
    return value


# --------------------------------------------------------------------------- validation


def _describe(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _convert(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Convert ``value`` to ``tp``; on failure append a problem and return None."""
    meta: tuple[Any, ...] = ()
    if get_origin(tp) is Annotated:
        tp, *rest = get_args(tp)
        meta = tuple(rest)
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional or "json" in meta:
            return None
        problems.append(f"{path}: must not be empty")
        return None
    if "json" in meta:
        return value
    for m in meta:
        if isinstance(m, _Duration):
            try:
                seconds = parse_duration(value)
            except ValueError as exc:
                problems.append(f"{path}: {exc}, got {_describe(value)}")
                return None
            if seconds < m.minimum:
                problems.append(f"{path}: must be greater than 0, got {_describe(value)}")
                return None
            return seconds
        if isinstance(m, _Size):
            try:
                size = parse_size(value)
            except ValueError as exc:
                problems.append(f"{path}: {exc}, got {_describe(value)}")
                return None
            if size < m.minimum:
                problems.append(f"{path}: must be at least {m.minimum} bytes, got {size}")
                return None
            return size
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {_describe(value)}")
            return None
        return _build(tp, value, path, problems)
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        if isinstance(value, str) and value.upper() in choices:
            return value.upper()
        problems.append(
            f"{path}: expected one of {', '.join(map(str, choices))}, got {_describe(value)}"
        )
        return None
    if origin is tuple:
        (item_tp, _) = get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {_describe(value)}")
            return None
        return tuple(_convert(item_tp, v, f"{path}[{i}]", problems) for i, v in enumerate(value))
    if origin in (Mapping, dict):
        _, item_tp = get_args(tp)
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {_describe(value)}")
            return None
        return types.MappingProxyType(
            {str(k): _convert(item_tp, v, f"{path}.{k}", problems) for k, v in value.items()}
        )
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{path}: expected true or false, got {_describe(value)}")
        return None
    if tp is int or tp is float:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if tp is float:
            ok = ok or (isinstance(value, float) and math.isfinite(value))
        if not ok:
            kind = "an integer" if tp is int else "a number"
            problems.append(f"{path}: expected {kind}, got {_describe(value)}")
            return None
        for m in meta:
            if isinstance(m, _Range):
                if m.minimum is not None and value < m.minimum:
                    problems.append(f"{path}: must be >= {m.minimum}, got {value}")
                    return None
                if m.maximum is not None and value > m.maximum:
                    problems.append(f"{path}: must be <= {m.maximum}, got {value}")
                    return None
        return tp(value)
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{path}: expected a string, got {_describe(value)}")
        return None
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # pragma: no cover


def _key(f: dataclasses.Field[Any]) -> str:
    """A field's key in the YAML (``as_`` is written ``as``)."""
    key = f.metadata.get("key", f.name)
    assert isinstance(key, str)
    return key


def _build(cls: type[Any], data: Mapping[str, Any], path: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls) if not f.metadata.get("internal")]
    names = {_key(f) for f in fields}
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            problems.append(f"{where}: unknown key (allowed: {', '.join(sorted(names))})")
    kwargs: dict[str, Any] = {}
    for f in fields:
        key = _key(f)
        where = f"{path}.{key}" if path else key
        if key in data:
            kwargs[f.name] = _convert(hints[f.name], data[key], where, problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{where}: required key is missing")
    try:
        return cls(**kwargs)
    except TypeError:
        return None


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _roots(template: Any) -> set[str]:
    """The placeholder roots a template uses (``{user.appId}`` → ``user``)."""
    from .upstream.templates import PLACEHOLDER

    if isinstance(template, str):
        return {m.group(1).split(".")[0] for m in PLACEHOLDER.finditer(template)}
    if isinstance(template, Mapping):
        return set().union(*(_roots(v) for v in template.values()))
    if isinstance(template, list | tuple):
        return set().union(*(_roots(v) for v in template))
    return set()


def _check_header(where: str, name: str, value: str, problems: list[str]) -> None:
    from .exceptions import TemplateError
    from .upstream.templates import compile_template

    if not _TOKEN.fullmatch(name):
        problems.append(f"{where}: {name!r} is not a valid header name")
    if re.search(r"[\r\n\x00]", value):
        problems.append(f"{where}: a header value cannot hold CR, LF or NUL")
    try:
        compile_template(value)
    except TemplateError as exc:
        problems.append(f"{where}: {exc}")


def _check_route(where: str, route: Route, base_dir: str | None, problems: list[str]) -> None:
    from .exceptions import TemplateError
    from .upstream import hooks
    from .upstream.templates import compile_template

    if not route.path.startswith("/"):
        problems.append(f"{where}.path: must start with '/', got {route.path!r}")
    from .upstream.templates import PLACEHOLDER

    literal = PLACEHOLDER.sub("", route.path)
    if "?" in literal or "#" in literal:
        problems.append(f"{where}.path: put query values under {where}.query")
    if any(seg in (".", "..") for seg in literal.split("/")):
        problems.append(f"{where}.path: no '.' or '..' segments")
    for key in ("path", "json", "form", "query"):
        try:
            compile_template(dict(value) if isinstance(value := getattr(route, key), Mapping)
                             else value)  # fmt: skip
        except TemplateError as exc:
            problems.append(f"{where}.{key}: {exc}")
    for name, value in route.headers.items():
        _check_header(f"{where}.headers.{name}", name, value, problems)
    if route.form is not None and route.json is not None:
        problems.append(f"{where}: give json or form, not both")
    if route.form is not None and route.method == "GET":
        problems.append(f"{where}.form: a GET has no body")
    if route.capture is not None:
        for scope in ("user", "session"):
            for name, dotted in getattr(route.capture, scope).items():
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                    problems.append(f"{where}.capture.{scope}.{name}: a name is [A-Za-z0-9_]")
                if not dotted or any(not p for p in dotted.split(".")):
                    problems.append(
                        f"{where}.capture.{scope}.{name}: expected a dotted path, got {dotted!r}"
                    )
    if route.reject_when is not None and any(not p for p in route.reject_when.split(".")):
        problems.append(f"{where}.reject_when: expected a dotted path, got {route.reject_when!r}")
    if route.decode is not None:
        try:
            hooks.resolve(route.decode, base_dir)
        except hooks.HookNotFound as exc:
            problems.append(f"{where}.decode: {exc}")


def _check_semantics(cfg: Config, problems: list[str]) -> None:

    url = cfg.upstream.url
    if not re.match(r"^https?://[^/\s]+", url):
        problems.append(f"upstream.url: expected an http:// or https:// URL, got {url!r}")
    for name, value in dataclasses.asdict(cfg.paths).items():
        if not value.startswith("/"):
            problems.append(f"paths.{name}: must start with '/', got {value!r}")
    state = cfg.upstream.state
    routes: dict[str, Route] = {
        f"upstream.commands.{k}": v for k, v in cfg.upstream.commands.items()
    }
    if state.parts is not None:
        if not state.parts:
            problems.append("upstream.state.parts: name at least one part")
        own = [key for key, given in (
            ("path", state.path != StateRoute.path), ("query", bool(state.query)),
            ("json", state.json is not None), ("form", state.form is not None),
            ("headers", bool(state.headers)), ("select", state.select is not None),
            ("decode", state.decode is not None), ("capture", state.capture is not None),
            ("reject_when", state.reject_when is not None), ("method", state.method != "GET"),
        ) if given]  # fmt: skip
        if own:
            problems.append(
                f"upstream.state: give either parts or {', '.join(own)} (each part has its "
                "own), not both"
            )
        for name, part in state.parts.items():
            routes[f"upstream.state.parts.{name}"] = part
    else:
        routes["upstream.state"] = state
    if cfg.upstream.keepalive is not None:
        routes["upstream.keepalive"] = cfg.upstream.keepalive
    if state.intercept:
        from .upstream.templates import PLACEHOLDER

        placeholders = [m.group(1) for m in PLACEHOLDER.finditer(state.path)]
        why = (
            "it answers a GET of the state route's path" if state.method != "GET"
            else "it needs one path (not parts)" if state.parts is not None
            else "the copy is everyone's (not as: present_user)" if state.as_ != "none"
            else "the path must hold {sessionId}, and no other placeholder"
            if placeholders != ["sessionId"] else None
        )  # fmt: skip
        if why is not None:
            problems.append(f"upstream.state.intercept: {why}")
    for key, value in cfg.upstream.headers.items():
        _check_header(f"upstream.headers.{key}", key, value, problems)
    if state.as_ != "present_user":  # the state request is nobody's: no user's values
        state_routes = {w: r for w, r in routes.items() if w.startswith("upstream.state")}
        templated = {f"{w}.{key}": getattr(r, key) for w, r in state_routes.items()
                     for key in ("path", "query", "headers", "json", "form")}  # fmt: skip
        templated.update({f"upstream.headers.{k}": v for k, v in cfg.upstream.headers.items()})
        for where, template in templated.items():
            used = _roots(template) & {"userId", "clientId", "params", "user", "payload"}
            if used:
                names = ", ".join("{" + r + ("" if r in ("userId", "clientId") else ".…") + "}"
                                  for r in sorted(used))  # fmt: skip
                problems.append(
                    f"{where}: {names} has no value in a state request; set "
                    "upstream.state.as: present_user (or template it on the routes that need it)"
                )
    for where, route in routes.items():
        _check_route(where, route, cfg.base_dir, problems)
        if where.startswith("upstream.state") and route.capture and route.capture.user:
            problems.append(
                f"{where}.capture.user: a state answer is the session's; capture into session"
            )
    for name in cfg.upstream.commands:
        if name in ("heartbeat", "pong", "ping"):
            problems.append(
                f"upstream.commands.{name}: {name!r} is handled by the bridge and cannot be mapped"
            )
    if cfg.heartbeat.timeout <= cfg.heartbeat.interval:
        problems.append(
            "heartbeat.timeout: must be longer than heartbeat.interval "
            f"({cfg.heartbeat.timeout}s <= {cfg.heartbeat.interval}s)"
        )
    if cfg.reconnect.max < cfg.reconnect.initial:
        problems.append("reconnect.max: must be >= reconnect.initial")
    if cfg.upstream.retry.max < cfg.upstream.retry.initial:
        problems.append("upstream.retry.max: must be >= upstream.retry.initial")
    if cfg.upstream.push is not None and not cfg.upstream.push.secret:
        problems.append("upstream.push.secret: required when upstream.push is set")
    if not any(dataclasses.asdict(cfg.transports).values()):
        problems.append("transports: at least one of websocket, sse, poll must be enabled")
    bp = cfg.backplane
    if bp.kind == "redis":
        if not bp.url.startswith(("redis://", "rediss://", "unix://")):
            problems.append(
                f"backplane.url: must start with redis://, rediss:// or unix://, got {bp.url!r}"
            )
        if bp.tls is not None and not bp.url.startswith("rediss://"):
            problems.append("backplane.tls: needs a rediss:// url")
        if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", bp.prefix):
            problems.append("backplane.prefix: 1-64 characters of [A-Za-z0-9_.:-]")
        if bp.lease < 0.5:
            problems.append(f"backplane.lease: must be at least 500ms, got {bp.lease}s")
        if bp.sentinel is not None:
            if not bp.sentinel.hosts:
                problems.append("backplane.sentinel.hosts: list at least one host:port")
            for i, host in enumerate(bp.sentinel.hosts):
                if not re.fullmatch(r"[^:\s]+:\d{1,5}", host):
                    problems.append(
                        f"backplane.sentinel.hosts[{i}]: expected host:port, got {host!r}"
                    )


def demo_routes_in_effect(data: Mapping[str, Any]) -> list[str]:
    """Which of the demo app's routes a config gets without writing them (the
    defaults of ``upstream.commands``, ``keepalive`` and ``state``), said plainly."""
    upstream = data.get("upstream")
    given = set(upstream) if isinstance(upstream, dict) else set()
    mapped = given & {"commands", "keepalive", "state"}
    if not mapped:
        return [
            "upstream: no route map is given, so the demo app's is in effect (commands "
            "join, vote, reveal, reset and leave under /api/sessions/{sessionId}, keepalive "
            "POST /api/sessions/{sessionId}/heartbeat, state GET /api/sessions/{sessionId})"
        ]
    notes = []
    if "commands" not in given:
        notes.append(
            "upstream.commands: not given, so the demo app's join, vote, reveal, reset and "
            "leave (under /api/sessions/{sessionId}) are in effect"
        )
    if "keepalive" not in given:
        notes.append(
            "upstream.keepalive: not given, so the demo app's POST "
            "/api/sessions/{sessionId}/heartbeat is in effect (write `keepalive: null` for none)"
        )
    if "state" not in given:
        notes.append(
            "upstream.state: not given, so the demo app's GET /api/sessions/{sessionId} "
            "is in effect"
        )
    return notes


def config_from_dict(
    data: Any, env: Mapping[str, str] | None = None, base_dir: str | Path | None = None
) -> Config:
    """Validate a parsed YAML document. Raises ConfigError listing every problem.
    ``base_dir``: the config file's folder (decode hooks are looked up there first)."""
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"<root>: expected a mapping of sections, got {_describe(data)}"])
    data = _substitute_env(data, "", os.environ if env is None else env, problems)
    cfg = _build(Config, data, "", problems)
    if cfg is not None:
        cfg = dataclasses.replace(
            cfg,
            base_dir=None if base_dir is None else str(base_dir),
            notes=tuple(demo_routes_in_effect(data)),
        )
    if cfg is not None and not problems:
        _check_semantics(cfg, problems)
    if problems:
        raise ConfigError(problems)
    assert isinstance(cfg, Config)
    return cfg


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a YAML file. Raises ConfigError (with the file name)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{p}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{p}: not valid YAML: {exc}"]) from None
    return config_from_dict(data, env, base_dir=p.resolve().parent)


# --------------------------------------------------------------------------- JSON Schema


def _schema_for(tp: Any) -> dict[str, Any]:
    meta: tuple[Any, ...] = ()
    if get_origin(tp) is Annotated:
        tp, *rest = get_args(tp)
        meta = tuple(rest)
    tp, optional = _strip_optional(tp)
    schema: dict[str, Any]
    if "json" in meta:
        schema = {"description": "JSON body template; strings may hold {placeholders}"}
    elif any(isinstance(m, _Duration) for m in meta):
        schema = {
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": _DURATION_RE.pattern},
            ],
            "description": "duration: 200ms, 5s, 1m, 1h or seconds",
        }
    elif any(isinstance(m, _Size) for m in meta):
        schema = {
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": _SIZE_RE.pattern},
            ],
            "description": "size: 512, 64KiB, 1MiB",
        }
    elif dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp, include_extras=True)
        fields = [f for f in dataclasses.fields(tp) if not f.metadata.get("internal")]
        props = {_key(f): _schema_for(hints[f.name]) for f in fields}
        required = [
            _key(f)
            for f in fields
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        schema = {"type": "object", "properties": props, "additionalProperties": False}
        if required:
            schema["required"] = required
    elif get_origin(tp) is Literal:
        schema = {"enum": list(get_args(tp))}
    elif get_origin(tp) is tuple:
        schema = {"type": "array", "items": _schema_for(get_args(tp)[0])}
    elif get_origin(tp) in (Mapping, dict):
        schema = {"type": "object", "additionalProperties": _schema_for(get_args(tp)[1])}
    elif tp is bool:
        schema = {"type": "boolean"}
    elif tp is int or tp is float:
        schema = {"type": "integer" if tp is int else "number"}
        for m in meta:
            if isinstance(m, _Range):
                if m.minimum is not None:
                    schema["minimum"] = m.minimum
                if m.maximum is not None:
                    schema["maximum"] = m.maximum
    elif tp is str:
        schema = {"type": "string"}
    else:  # pragma: no cover - every field type is handled above
        raise TypeError(tp)
    if optional:
        schema = {"anyOf": [schema, {"type": "null"}]}
    return schema


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the configuration file."""
    schema = _schema_for(Config)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "session-bridge configuration"
    return schema
