"""One session as this instance serves it: the sans-I/O hub plus what only I/O needs.

A :class:`Session` is also the backplane's read-only
:class:`~bridge.backplane.base.SessionView` of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal

from ..core.hub import SessionHub
from ..core.ratelimit import TokenBucket
from ..protocol.types import Message
from ..tasks import TaskOwner
from .connection import Connection
from .gate import Gate

#: what the app said to a session's first state fetch (Poller.first_answer)
Known = Literal["known", "unknown", "unsure"]


@dataclass(slots=True)
class PartState:
    """One part of a state spread over several routes."""

    value: Any = None
    etag: str | None = None
    last_modified: str | None = None
    failures: int = 0
    #: monotonic time before which a failing part is not asked again
    next_at: float = 0.0
    fetched: bool = False


@dataclass(slots=True)
class UserContext:
    """What a user's upstream requests are templated and sent with (their first
    client's connect parameters and forwarded headers)."""

    client_id: str
    params: Mapping[str, str]
    headers: Mapping[str, str]


class Joined(Enum):
    """What an admission's join step did."""

    #: nothing: the user was present already (here or on another instance), or
    #: another admission of theirs is joining them (that one owns the join)
    NOT_BY_THIS = "not_by_this"
    #: this admission's join made the user present upstream
    BY_THIS = "by_this"


@dataclass(eq=False)
class Session:
    id: str
    hub: SessionHub
    #: leaves, keep-alives (they keep the session alive) and the poller (it does not)
    tasks: TaskOwner
    conns: dict[str, Connection] = field(default_factory=dict)
    users: dict[str, UserContext] = field(default_factory=dict)
    #: userId → the join in progress for them (later clients of the user wait for it)
    joining: dict[str, asyncio.Future[Joined]] = field(default_factory=dict)
    #: (userId, command id) → the ack, for repeats that arrive while it is upstream
    pending: dict[tuple[str, str], asyncio.Future[Message]] = field(default_factory=dict)
    #: commands waiting for the upstream breaker to close
    held: int = 0
    #: clientId → its commands_per_second bucket
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    poller: asyncio.Task[None] | None = None
    refresh: asyncio.Event = field(default_factory=asyncio.Event)
    #: commands of this session upstream now
    inflight: int = 0
    #: handshakes admitted for clients not yet in ``conns`` (limits.max_clients_per_session)
    reserved: int = 0
    etag: str | None = None
    last_modified: str | None = None
    poll_failures: int = 0
    #: the backplane refused the last state (logged once until it works again)
    unpublished: bool = False
    evictions_seen: int = 0
    #: userId → values captured for them from the app's answers (``{user.NAME}``)
    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: values captured for the session (``{session.NAME}``)
    shared: dict[str, Any] = field(default_factory=dict)
    #: ``upstream.state.parts``: each part's last answer and conditional headers
    parts: dict[str, PartState] = field(default_factory=dict)
    #: ``state.as: present_user``: whose context the state request is rendered with
    poll_user: str | None = None
    #: the first state fetch (unknown sessions are refused), shared by concurrent connects
    checked: asyncio.Future[Known] | None = None
    #: what that first fetch got, for the poller's first round (an upstream StateResult)
    prefetched: Any = None
    #: commands of this session at the app at once (upstream.session_concurrency)
    gate: Gate = field(default_factory=lambda: Gate(1))
    #: state.intercept: the app's last state answer (bytes, content type, ETag)
    copy: tuple[bytes, str, str] | None = None
    #: set when ``copy`` is there (legacy polls of a new session wait for it)
    copy_ready: asyncio.Event = field(default_factory=asyncio.Event)
    #: state.intercept: the app's own frontend polls it; kept (and polled) until then
    followed_until: float = 0.0
    #: state.intercept: the whole answer was asked for once (a session polled before)
    copy_asked: bool = False
    #: state.intercept on an instance that does not poll: (seq, copy) of the stream's state
    stream_copy: tuple[int, tuple[bytes, str, str]] | None = None
    #: the app's last state answer was 404 or 410: the session is gone there
    gone: bool = False
    #: userId → when a command of theirs was last answered by the app (keepalive.commands_count)
    last_command: dict[str, float] = field(default_factory=dict)

    # -- the backplane's SessionView
    @property
    def epoch(self) -> str:
        return self.hub.log.epoch

    @property
    def head(self) -> int:
        return self.hub.log.head

    @property
    def has_clients(self) -> bool:
        return bool(self.conns)

    @property
    def followed(self) -> bool:
        return time.monotonic() < self.followed_until

    def users_here(self) -> list[str]:
        presence = self.hub.presence
        return [u for u in presence.online() if presence.clients_of(u)]

    def users_kept(self) -> list[str]:
        """Users this instance keeps present: those with a live transport here, and
        those whose join is in progress here (waiting in the session's gate, say)."""
        here = self.users_here()
        return here + [u for u in self.joining if u not in here]

    def online(self) -> list[str]:
        return self.hub.presence.online()

    def is_present(self, user: str) -> bool:
        return self.hub.presence.is_present(user)
