"""The Redis backplane: any instance serves any client of any session.

Per session (keys in docs/scaling.md, all under ``backplane.prefix`` and the
session id as a hash tag):

- the **stream** is a Redis Stream; a Lua script assigns the next seq and
  appends in one step, so every instance sees one order. Each instance keeps
  a mirror of the log (the runtime's, fed through :class:`~..base.Events`)
  and follows the session with one pub/sub subscription, whatever its number
  of clients there; a missed or out-of-order message is caught up from the
  Stream, and a hole it cannot fill, or a new epoch, makes the instance
  reload the log and ask its clients to resume;
- **presence** is a sorted set of user → deadline (ms); instances holding a
  user's transports push the deadline to now + grace every round, a
  disconnect simply stops that, and the lease holder removes users whose
  deadline passed, publishes the presence and sends their single ``leave``;
- the **de-dupe window** is one key per command id, ``SET NX`` while the
  command is upstream, then the ack for ``dedupe.window``;
- a **lease** (``SET NX PX``, renewed every round, fenced by a counter that
  every state publish must match) picks the instance that polls the upstream
  and keeps the session's users alive.

When Redis cannot be reached the instance keeps its connected clients and
its mirrors, forwards commands with its own de-dupe window, keeps its own
users alive, reports not-ready, and reconnects with backoff; docs/scaling.md
says exactly what degrades. Only Redis' own failures (``RedisError``,
``OSError``, timeouts) count as an outage: any other exception is a bug,
logged with its traceback and counted, and changes no health.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from ...config import Config
from ...core.hub import state_digest
from ...exceptions import BackplaneUnavailable
from ...metrics import Metrics
from ...protocol import backoff
from ...protocol import messages as m
from ...tasks import TaskOwner
from ..base import Events, LoggedEntry, SessionView, SharedDone, SharedNew
from .keys import Keys
from .scripts import Append, Scripts, parse_lease, parse_presence, text

log = logging.getLogger("bridge.backplane")

PENDING = "pending:"  # + the forwarding instance
#: what Redis being unreachable looks like; anything else is a bug of ours
OUTAGE = (RedisError, OSError, TimeoutError, BackplaneUnavailable)
_NEW = SharedNew()


#: a waiter's place in a session's command gate lasts this long unless renewed
GATE_WAIT_MS = 3000
#: waiters look again this often even when no instance said the gate moved
GATE_RECHECK = 0.5


@dataclass(eq=False)
class Follower:
    """This instance's view of one session it serves."""

    session: SessionView
    keys: Keys
    tasks: TaskOwner
    ready: asyncio.Future[None] | None = None
    loading: bool = True
    dirty: bool = False
    last_id: str | None = None
    #: the lease's fence while this instance holds it
    fence: str | None = None
    #: users present in Redis at the last round (the lease holder keeps the session for them)
    present: int = 0
    last_keepalive: float = 0.0
    #: Redis was unreachable and this instance published the session's state
    #: itself, under a local epoch (until the next reload)
    diverged: bool = False
    syncing: asyncio.Task[None] | None = None
    #: set when some instance left the session's command gate
    gate_moved: asyncio.Event = field(default_factory=asyncio.Event)


class RedisBackplane:
    kind = "redis"
    shared = True

    def __init__(self, cfg: Config, metrics: Metrics, events: Events) -> None:
        self.config = cfg
        self.cfg = cfg.backplane
        self.metrics = metrics
        self.events = events
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._sentinels: list[aioredis.Redis] = []  # (Sentinel) its clients of the sentinels
        self.redis = self._client()
        self.scripts = Scripts(self.redis)
        self.followers: dict[str, Follower] = {}
        self.tasks = TaskOwner("backplane", count=self._count_task_error)
        self._healthy = False
        #: a failure was seen (False while starting: not ready, yet not an outage)
        self._down = False
        self._down_since: float | None = time.monotonic()
        self._pubsub: PubSub | None = None
        self._pubsub_ready = asyncio.Event()
        #: channels Redis confirmed, and connects waiting for a confirmation
        self._subscribed: set[str] = set()
        self._sub_waiters: dict[str, asyncio.Future[None]] = {}
        self._stopping = False
        #: exists while this instance lives (refreshed every round): a command it
        #: forwards is only answered as "outcome unknown" once this is gone
        self._alive_key = f"{self.cfg.prefix}:alive:{self.instance}"
        self._self_channel = f"{self.cfg.prefix}:instance:{self.instance}"
        self.metrics.backplane_up.set(0)

    def _count_task_error(self, owner: str) -> None:
        self.metrics.task_errors.labels(owner).inc()

    def reconfigure(self, cfg: Config) -> None:
        self.config = cfg  # the backplane section itself only changes at a restart

    # ------------------------------------------------------------------ settings
    @property
    def round_every(self) -> float:
        """Leases, presence deadlines and head checks are refreshed this often."""
        return min(1.0, self.cfg.lease / 3)

    def _ttl_ms(self) -> int:
        cfg = self.config
        return int((cfg.replay.max_age + cfg.presence.grace + 60 + self.cfg.lease) * 1000)

    def _grace_ms(self) -> int:
        return int(self.config.presence.grace * 1000)

    def _window_ms(self) -> int:
        return max(1, int(self.config.dedupe.window * 1000))

    def _alive_ms(self) -> int:
        return int(max(self.cfg.lease, 3 * self.round_every) * 1000)

    def _pending_ms(self) -> int:
        """How long a command may stay "upstream" before a repeat may forward it again."""
        up = self.config.upstream
        tries = up.retry.attempts
        return int((up.timeout * tries + up.retry.max * tries + up.hold + 5) * 1000)

    def _append(self) -> Append:
        replay = self.config.replay
        return Append(replay.max_messages, int(replay.max_age * 1000), self._ttl_ms())

    def _client(self) -> aioredis.Redis:
        cfg = self.cfg
        kwargs: dict[str, Any] = {
            "max_connections": cfg.pool_size,
            "socket_connect_timeout": cfg.connect_timeout,
            "socket_timeout": max(cfg.connect_timeout, 5.0),
            # one quick retry: a pooled connection may be stale after a Redis restart
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
            "decode_responses": False,
        }
        if cfg.tls is not None:
            kwargs["ssl_ca_certs"] = cfg.tls.ca_file
            kwargs["ssl_certfile"] = cfg.tls.cert_file
            kwargs["ssl_keyfile"] = cfg.tls.key_file
            kwargs["ssl_cert_reqs"] = "required" if cfg.tls.verify else "none"
            kwargs["ssl_check_hostname"] = cfg.tls.verify
        if cfg.sentinel is not None:
            from redis.asyncio.sentinel import Sentinel

            hosts = [(h.rsplit(":", 1)[0], int(h.rsplit(":", 1)[1])) for h in cfg.sentinel.hosts]
            sentinel_kwargs: dict[str, Any] = {"socket_connect_timeout": cfg.connect_timeout}
            if cfg.sentinel.password:
                sentinel_kwargs["password"] = cfg.sentinel.password
            from redis.asyncio.connection import parse_url

            # the URL still gives the db and the primary's credentials
            url = parse_url(cfg.url) if cfg.url.startswith("redis") else {}
            for key in ("db", "username", "password"):
                if url.get(key) is not None:
                    kwargs[key] = url[key]
            sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, **kwargs)  # type: ignore[no-untyped-call]
            self._sentinels = list(sentinel.sentinels)  # closed at stop
            master: aioredis.Redis = sentinel.master_for(cfg.sentinel.service)
            return master
        # the URL may carry the db, the password and rediss:// for TLS
        client: aioredis.Redis = aioredis.Redis.from_url(cfg.url, **kwargs)
        return client

    # ------------------------------------------------------------------ lifecycle
    @property
    def healthy(self) -> bool:
        return self._healthy

    def _set_health(self, up: bool, why: str = "") -> None:
        if up == self._healthy and up != self._down:
            return
        self._healthy = up
        self._down = not up
        self.metrics.backplane_up.set(1 if up else 0)
        if up:
            lasted = time.monotonic() - (self._down_since or time.monotonic())
            self._down_since = None
            log.info("redis backplane reachable (instance %s, after %.1fs)", self.instance, lasted)
        else:
            self._down_since = time.monotonic()
            log.warning("redis backplane unreachable: %s; serving from memory", why)
            # the pool's idle connections are to a Redis that is gone: each would fail
            # once after it returns (not every redis-py retries that), so drop them
            self._fire(
                self.redis.connection_pool.disconnect(inuse_connections=False),
                "dropping stale redis connections",
            )
        # Down: every instance polls the sessions of its own clients (nobody can know
        # the lease holder). Up again: only the holders do.
        for f in list(self.followers.values()):
            if f.fence is None and (f.session.has_clients or not up):
                self.events.ownership_changed(f.session, self.owns(f.session))

    def status(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "healthy": self._healthy,
            "instance": self.instance,
            "leases": sum(1 for f in self.followers.values() if f.fence is not None),
        }

    async def start(self) -> None:
        self.tasks.spawn(self._reader_loop(), "pub/sub reader")
        self.tasks.spawn(self._round_loop(), "rounds")

    async def stop(self) -> None:
        """Release our leases (so another instance takes over at once) and disconnect."""
        self._stopping = True
        for f in list(self.followers.values()):
            await f.tasks.aclose()
        await self.tasks.aclose()
        owned = [f for f in self.followers.values() if f.fence is not None]
        if self._healthy:
            with contextlib.suppress(*OUTAGE):
                async with asyncio.timeout(2.0):
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.delete(self._alive_key)  # the drain answered everything in flight
                    for f in owned:
                        await self.scripts.release(f.keys, token=self.instance, client=pipe)
                    await _execute(pipe)
        if self._pubsub is not None:
            with contextlib.suppress(*OUTAGE):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(*OUTAGE):
            await self.redis.aclose()
        # A caller still finishing (a request handler the server cancelled late)
        # must not open a connection nobody would close: the pool takes no more,
        # and such a call fails as an outage would.
        pool = self.redis.connection_pool
        with contextlib.suppress(Exception):
            await pool.disconnect()
        pool.reset()  # type: ignore[no-untyped-call]
        pool.max_connections = 0
        for client in self._sentinels:  # its own connections to the sentinels
            with contextlib.suppress(Exception):
                await client.aclose()

    # ------------------------------------------------------------------ following
    async def open(self, session: SessionView) -> None:
        f = self.followers.get(session.id)
        if f is not None and f.session is not session:  # a dropped session came back
            self._forget(f)
            f = None
        if f is None:
            f = Follower(
                session,
                Keys.of(self.cfg.prefix, session.id),
                TaskOwner("backplane", about=f"session {session.id}", count=self._count_task_error),
            )
            self.followers[session.id] = f
        if f.ready is None:
            f.ready = asyncio.get_running_loop().create_future()
            f.tasks.spawn(self._load_first(f), "opening a session")
        await asyncio.shield(f.ready)

    async def _load_first(self, f: Follower) -> None:
        assert f.ready is not None
        try:
            async with asyncio.timeout(self.cfg.connect_timeout * 2):
                await self._subscribe(f)
                await self._load(f)
                # before any command here can be marked as ours (rounds renew it)
                await self.redis.set(self._alive_key, b"1", px=self._alive_ms())
        except Exception as exc:  # Redis unreachable (or a bug): never leave connects waiting
            if not isinstance(exc, OUTAGE):
                log.exception("opening session %s failed", f.session.id)
            self.metrics.backplane_errors.labels("open").inc()
            err = BackplaneUnavailable(f"redis: {type(exc).__name__}: {exc}")
            if not f.ready.done():
                f.ready.set_exception(err)
                f.ready.exception()
            f.ready = None  # the next connect tries again
            return
        if not f.ready.done():
            f.ready.set_result(None)
        # a free lease is taken now, not at the next round: the first state comes sooner
        with contextlib.suppress(*OUTAGE):
            answer = parse_lease(await self._lease_call(f, want=True))
            if (
                answer.fence is not None
                and f.fence is None
                and self.followers.get(f.session.id) is f
            ):
                f.fence = answer.fence
                log.info("session %s: lease taken (fence %s)", f.session.id, answer.fence)
                self.events.ownership_changed(f.session, True)

    async def _subscribe(self, f: Follower) -> None:
        if not self._pubsub_ready.is_set():  # starting, or reconnecting: wait a little
            try:
                await asyncio.wait_for(self._pubsub_ready.wait(), self.cfg.connect_timeout)
            except TimeoutError:
                raise BackplaneUnavailable("not connected to redis") from None
        ps = self._pubsub
        assert ps is not None
        channel = f.keys.channel
        if channel in self._subscribed:
            return
        waiter = self._sub_waiters.get(channel)
        if waiter is None:
            waiter = self._sub_waiters[channel] = asyncio.get_running_loop().create_future()
            await ps.subscribe(channel)
        await asyncio.shield(waiter)

    async def _load(self, f: Follower) -> None:
        """Read the session's log from Redis into a new mirror (and maybe a new epoch)."""
        f.loading = True
        f.dirty = False
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(f.keys.meta, "epoch", secrets.token_urlsafe(9))
        pipe.pexpire(f.keys.meta, self._ttl_ms())
        pipe.hget(f.keys.meta, "epoch")
        pipe.xrevrange(f.keys.log, "+", "-", count=self.config.replay.max_messages)
        pipe.hgetall(f.keys.latest)
        _, _, epoch_raw, window_raw, latest_raw = await _execute(pipe)
        window = [(text(i), d) for i, d in reversed(window_raw)]
        first = int(window[0][1][b"seq"]) if window else None
        entries: list[LoggedEntry] = []
        for kind, value in latest_raw.items():
            seq_s, _, payload = value.partition(b"\n")
            if first is None or int(seq_s) < first:
                entries.append(LoggedEntry(int(seq_s), text(kind), json.loads(payload)))
        entries.sort(key=lambda e: e.seq)
        for _, data in window:
            entries.append(_entry(data))
        f.last_id = window[-1][0] if window else None
        self.events.log_loaded(f.session, text(epoch_raw), entries)
        f.diverged = False
        f.loading = False
        if f.dirty:
            self._catch_up(f)

    def closed(self, session: SessionView) -> None:
        f = self.followers.get(session.id)
        if f is None or f.session is not session:
            return
        self._forget(f)
        if self._healthy:  # also a lease taken by a load cut short (the script checks it is ours)
            self._fire(self.scripts.release(f.keys, token=self.instance), "releasing a lease")
        if self._pubsub is not None and self._pubsub_ready.is_set():
            self._fire(self._unsubscribe(self._pubsub, session.id, f.keys.channel), "unsubscribing")

    async def _unsubscribe(self, ps: PubSub, session_id: str, channel: str) -> None:
        if session_id in self.followers:  # opened again meanwhile: keep the subscription
            return
        # from now on a re-open subscribes again (its SUBSCRIBE follows this one)
        self._subscribed.discard(channel)
        await ps.unsubscribe(channel)

    def _forget(self, f: Follower) -> None:
        if self.followers.get(f.session.id) is f:
            del self.followers[f.session.id]
        f.tasks.cancel()
        if f.ready is not None and not f.ready.done():
            f.ready.set_exception(BackplaneUnavailable("session closed"))
            f.ready.exception()
        f.fence = None

    def _fire(self, aw: Awaitable[Any], what: str) -> None:
        """A Redis call nobody waits for; an outage only skips it."""
        if self.tasks.closed:  # stopped: it is not made (and not left unawaited)
            if asyncio.iscoroutine(aw):
                aw.close()
            return

        async def run() -> None:
            with contextlib.suppress(*OUTAGE):
                await aw

        task = self.tasks.spawn(run(), what)
        if asyncio.iscoroutine(aw):
            # a task cancelled before its first step (a close right after) never
            # awaits ``aw``: close it then, so it is not left "never awaited"
            coro = aw
            task.add_done_callback(lambda _t: coro.close())

    async def _reader_loop(self) -> None:
        """The one pub/sub connection of this instance; resubscribes after a failure."""
        failures = 0  # in a row: the reconnect waits back off from 0.1 s to 5 s
        first = True
        while not self._stopping:
            ps = self.redis.pubsub()
            try:
                await ps.subscribe(self._self_channel)
                channels = [f.keys.channel for f in self.followers.values()]
                self._sub_waiters = {}
                self._subscribed = set()
                if channels:
                    await ps.subscribe(*channels)
                self._pubsub = ps
                self._pubsub_ready.set()
                if not first:  # whatever was published meanwhile comes from the Streams
                    for f in list(self.followers.values()):
                        if not f.loading:
                            self._catch_up(f)
                first = False
                failures = 0
                while True:
                    msg = await ps.get_message(timeout=1.0)
                    if msg is not None:
                        self._on_pubsub_safely(msg)
            except OUTAGE as exc:
                self.metrics.backplane_errors.labels("subscribe").inc()
                self._set_health(False, f"{type(exc).__name__}: {exc}")
            finally:
                self._pubsub_ready.clear()
                self._pubsub = None
                for waiter in self._sub_waiters.values():
                    if not waiter.done():
                        waiter.set_exception(BackplaneUnavailable("redis connection lost"))
                        waiter.exception()
                self._sub_waiters = {}
                with contextlib.suppress(*OUTAGE):
                    await ps.aclose()  # type: ignore[no-untyped-call]
            failures += 1
            await asyncio.sleep(backoff.delay(failures, 0.1, 5.0, jitter=0.5, rnd=random.random()))

    def _on_pubsub_safely(self, msg: dict[str, Any]) -> None:
        """A bug while handling one message is logged; it is not a Redis outage."""
        try:
            self._on_pubsub(msg)
        except Exception:
            self.metrics.backplane_errors.labels("bug").inc()
            log.exception("handling a backplane message failed")

    def _on_pubsub(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        channel = text(msg.get("channel", b""))
        if kind in (b"subscribe", "subscribe"):
            self._subscribed.add(channel)
            waiter = self._sub_waiters.pop(channel, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if kind not in (b"message", "message"):
            return
        session_id = Keys.session_of_channel(self.cfg.prefix, channel)
        f = self.followers.get(session_id) if session_id is not None else None
        if f is None:
            return
        if msg["data"] in (b"gate", "gate"):
            f.gate_moved.set()
            return
        if f.loading or f.syncing is not None:
            f.dirty = True
            return
        try:
            epoch, stream_id, seq_s, kind_s, payload = text(msg["data"]).split("\n", 4)
            seq = int(seq_s)
        except ValueError:  # pragma: no cover - only our script publishes here
            log.error("malformed backplane message on %s", channel)
            return
        view = f.session
        if epoch != view.epoch:
            self._resync(f, "epoch")
        elif seq == view.head + 1:
            entry = LoggedEntry(seq, kind_s, json.loads(payload))
            self.events.stream_entry(view, entry, _seen_at(stream_id))
            f.last_id = stream_id
        elif seq > view.head + 1:
            self._catch_up(f)

    def _catch_up(self, f: Follower) -> None:
        if f.syncing is None and not f.loading:
            f.syncing = f.tasks.spawn(self._sync(f), "catching up a session")

    async def _sync(self, f: Follower) -> None:
        """Read what the mirror misses from the Stream (single-flight per session)."""
        try:
            while True:
                f.dirty = False
                start = "-" if f.last_id is None else "(" + f.last_id
                pipe = self.redis.pipeline(transaction=True)
                pipe.hget(f.keys.meta, "epoch")
                pipe.xrange(f.keys.log, start, "+", count=500)
                epoch_raw, entries = await _execute(pipe)
                view = f.session
                if epoch_raw is not None and text(epoch_raw) != view.epoch:
                    f.syncing = None
                    self._resync(f, "epoch")
                    return
                for stream_id, data in entries:
                    entry = _entry(data)
                    if entry.seq > view.head + 1:
                        f.syncing = None
                        self._resync(f, "gap")
                        return
                    if entry.seq == view.head + 1:
                        self.events.stream_entry(view, entry)
                    f.last_id = text(stream_id)
                if len(entries) < 500 and not f.dirty:
                    return
        except OUTAGE as exc:
            self.metrics.backplane_errors.labels("sync").inc()
            log.warning("catching up session %s failed: %s", f.session.id, exc)
        finally:
            if f.syncing is asyncio.current_task():
                f.syncing = None

    def _resync(self, f: Follower, why: str) -> None:
        """The mirror cannot continue (new epoch, or a hole): reload it, then ask
        this instance's clients of the session to resume (they get a reset)."""
        if f.loading:
            f.dirty = True
            return
        log.info("session %s: reloading its log from redis (%s)", f.session.id, why)
        self.metrics.backplane_resyncs.labels(why).inc()
        f.loading = True  # until the reload ends, messages only mark it dirty

        async def reload() -> None:
            try:
                if f.diverged:
                    await self._rebase(f)
                await self._load(f)
            except OUTAGE as exc:
                f.loading = False
                self.metrics.backplane_errors.labels("sync").inc()
                log.warning("reloading session %s failed: %s", f.session.id, exc)
                return
            self.events.resume_all(f.session, "resync")

        f.tasks.spawn(reload(), "reloading a session")

    # ------------------------------------------------------------------ rounds
    async def _round_loop(self) -> None:
        """Every round: renew or take leases, push presence deadlines, check heads;
        the lease holder also expires presence, sends leaves and keep-alives."""
        failures = 0  # rounds failed in a row: the next try backs off up to 5 s
        while not self._stopping:
            started = time.monotonic()
            try:
                async with asyncio.timeout(max(self.cfg.connect_timeout, 5.0) * 2):
                    await self._round()
            except OUTAGE as exc:
                self.metrics.backplane_errors.labels("round").inc()
                self._set_health(False, f"{type(exc).__name__}: {exc}")
                self._degraded_round()
                failures += 1
                wait = backoff.delay(
                    failures, self.round_every, 5.0, jitter=0.5, rnd=random.random()
                )
                await asyncio.sleep(wait)
                continue
            except Exception:
                # a bug of ours, not an outage: say so, and keep the rounds going
                self.metrics.backplane_errors.labels("bug").inc()
                log.exception("a backplane round failed")
            if self._pubsub_ready.is_set():
                self._set_health(True)
            failures = 0
            await asyncio.sleep(max(0.0, self.round_every - (time.monotonic() - started)))

    async def _round(self) -> None:
        followers = [f for f in self.followers.values() if not f.loading]
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._alive_key, b"1", px=self._alive_ms())
        lease_at: list[int] = []  # where each follower's lease answer is in the results
        n = 1
        for f in followers:
            users = f.session.users_kept()
            if users:
                await self.scripts.touch(
                    f.keys, users=users, grace_ms=self._grace_ms(), client=pipe
                )
                n += 1
            want = (
                f.session.has_clients
                or f.session.followed
                or (f.fence is not None and f.present > 0)
            )
            await self._lease_call(f, want=want, client=pipe)
            lease_at.append(n)
            n += 1
        results = await _execute(pipe)
        owned: list[Follower] = []
        for f, i in zip(followers, lease_at, strict=True):
            answer = parse_lease(results[i])
            f.present = answer.present
            if answer.fence != f.fence:
                gained = f.fence is None
                f.fence = answer.fence
                if answer.fence is None or gained:
                    log.info(
                        "session %s: lease %s (fence %s)", f.session.id,
                        "taken" if answer.fence else "lost", answer.fence,
                    )  # fmt: skip
                self.events.ownership_changed(f.session, answer.fence is not None)
            if answer.fence is not None:
                owned.append(f)
            if f.diverged:  # served alone during the outage: a new epoch, then resume
                self._resync(f, "epoch")
            elif answer.epoch and answer.epoch != f.session.epoch:
                self._resync(f, "epoch")
            elif answer.seq > f.session.head:
                self._catch_up(f)
            self.events.settle(f.session)
        self.metrics.backplane_leases.set(sum(1 for f in self.followers.values() if f.fence))
        if owned:
            await self._owner_round(owned)

    async def _owner_round(self, owned: list[Follower]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for f in owned:
            await self.scripts.presence(f.keys, expire=True, append=self._append(), client=pipe)
        results = await _execute(pipe)
        now = time.monotonic()
        keepalive = self.config.upstream.keepalive
        due: list[Follower] = []
        captures = self.config.upstream.uses_captures
        gone: list[tuple[Follower, str, dict[str, Any] | None]] = []
        for f, raw in zip(owned, results, strict=True):
            answer = parse_presence(raw)
            f.present = answer.online
            gone.extend((f, user, _ctx(context)) for user, context in answer.gone)
            if keepalive is not None and now - f.last_keepalive >= keepalive.every:
                f.last_keepalive = now
                due.append(f)
        if gone and captures:  # their leave is sent with what was captured for them
            pipe = self.redis.pipeline(transaction=False)
            for f, user, _ in gone:
                pipe.hgetall(f.keys.values(user))
                pipe.delete(f.keys.values(user))
            found = await _execute(pipe)
            for i, (_, _, ctx) in enumerate(gone):
                if ctx is not None:
                    ctx["values"] = _values(found[2 * i])
        for f, user, ctx in gone:
            self.events.user_request(f.session, user, "leave", ctx)
        if due:
            pipe = self.redis.pipeline(transaction=False)
            for f in due:
                pipe.zrange(f.keys.presence, 0, -1)
                pipe.hgetall(f.keys.users)
            answers = await _execute(pipe)
            requests: list[tuple[Follower, str, dict[str, Any] | None]] = []
            for i, f in enumerate(due):
                users, contexts = answers[2 * i], answers[2 * i + 1]
                # no stored context (lost with Redis' data): the local one, if any
                requests.extend((f, text(u), _ctx(contexts.get(u))) for u in users)
            if captures and requests:
                pipe = self.redis.pipeline(transaction=False)
                for f, user, _ in requests:
                    pipe.hgetall(f.keys.values(user))
                found = await _execute(pipe)
                for (_, _, ctx), raw_values in zip(requests, found, strict=True):
                    if ctx is not None:
                        ctx["values"] = _values(raw_values)
            for f, user, ctx in requests:
                self.events.user_request(f.session, user, "keepalive", ctx)

    def _degraded_round(self) -> None:
        """Redis is down: keep this instance's own users alive upstream, as the
        memory backplane would (the lease holder cannot be known)."""
        keepalive = self.config.upstream.keepalive
        if keepalive is None:
            return
        now = time.monotonic()
        for f in list(self.followers.values()):
            if now - f.last_keepalive < keepalive.every:
                continue
            f.last_keepalive = now
            for user in f.session.online():
                self.events.user_request(f.session, user, "keepalive", None)

    async def _lease_call(self, f: Follower, *, want: bool, client: Any = None) -> Any:
        """Take, renew (want) or release (not want) the session's lease."""
        return await self.scripts.lease(
            f.keys, token=self.instance, lease_ms=int(self.cfg.lease * 1000), want=want,
            ttl_ms=self._ttl_ms(), client=client,
        )  # fmt: skip

    # ------------------------------------------------------------------ the port
    def owns(self, session: SessionView) -> bool:
        f = self.followers.get(session.id)
        if f is None or f.session is not session:
            return False
        return f.fence is not None or (self._down and session.has_clients)

    def grace_over(self, session: SessionView, user: str) -> bool:
        # the lease holder sends the leave, once for every instance, when the
        # user's deadline in Redis passes
        return False

    def keep(self, session: SessionView) -> bool:
        f = self.followers.get(session.id)
        return f is not None and f.session is session and f.fence is not None and f.present > 0

    async def publish_state(self, session: SessionView, payload: Any, now: float) -> int | None:
        f = self.followers.get(session.id)
        if f is None or f.session is not session:  # pragma: no cover - a served session is followed
            return await self.publish(session.id, payload, None)
        if not f.diverged:  # (also while starting: only a failure means an outage)
            try:
                return await self.publish(session.id, payload, f.fence)
            except BackplaneUnavailable:
                if session.has_clients:
                    self._set_health(False, "publishing failed")
                else:
                    raise
        if not session.has_clients:
            raise BackplaneUnavailable("redis is unreachable and nobody is connected here")
        return self._publish_here(f, payload, now)

    def _publish_here(self, f: Follower, payload: Any, now: float) -> int | None:
        """Redis is unreachable: this instance's clients get the state from here,
        under an epoch of this instance's own, so nobody can ever resume across
        the two numberings; the first reload after Redis returns starts a new
        epoch there too (see _rebase), and every client is reset once."""
        if not f.diverged:
            f.diverged = True
            self.events.diverge(f.session)
            self.metrics.backplane_resyncs.labels("local").inc()
            log.warning(
                "session %s: redis unreachable, its state goes to this instance's clients "
                "from here until redis is back", f.session.id,
            )  # fmt: skip
        return self.events.publish_local(f.session, payload, now)

    async def _rebase(self, f: Follower) -> None:
        """After serving a session on its own, start a new epoch in Redis: seqs
        this instance handed out must never be resumed against Redis' log."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(f.keys.meta, "epoch", secrets.token_urlsafe(9))
        pipe.hdel(f.keys.meta, "digest", "online")
        await _execute(pipe)
        log.info("session %s: new epoch in redis after serving it alone", f.session.id)

    async def publish(
        self, session_id: str, payload: Any, fence: str | None, *, must_exist: bool = False
    ) -> int | None:
        """Append a state to the session's stream (if it changed). With a fence, only
        while that fence is current. Raises BackplaneUnavailable."""
        k = Keys.of(self.cfg.prefix, session_id)
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        try:
            _, seq = await self.scripts.publish_state(
                k, payload=body, digest=state_digest(payload).hex(), fence=fence,
                must_exist=must_exist, append=self._append(),
            )  # fmt: skip
        except OUTAGE as exc:
            self.metrics.backplane_errors.labels("publish").inc()
            raise BackplaneUnavailable(f"redis: {exc}") from exc
        if seq == -2:  # must_exist, and no instance serves the session
            return -2
        if seq == -1:  # fenced out: another instance took the lease
            f = self.followers.get(session_id)
            if f is not None and f.fence == fence:
                f.fence = None
                self.events.ownership_changed(f.session, False)
            return None
        return seq if seq > 0 else None

    async def push_elsewhere(self, session_id: str, payload: Any) -> tuple[bool, int | None]:
        seq = await self.publish(session_id, payload, None, must_exist=True)
        if seq == -2:
            return False, None
        return True, seq

    async def claim_user(self, session: SessionView, user: str, context: dict[str, Any]) -> bool:
        k = self._keys(session)
        try:
            return await self.scripts.claim(
                k, user=user, grace_ms=self._grace_ms(), context=json.dumps(context),
                ttl_ms=self._ttl_ms(),
            )  # fmt: skip
        except OUTAGE as exc:
            self.metrics.backplane_errors.labels("presence").inc()
            raise BackplaneUnavailable(f"redis: {exc}") from exc

    def _keys(self, session: SessionView) -> Keys:
        f = self.followers.get(session.id)
        return f.keys if f is not None else Keys.of(self.cfg.prefix, session.id)

    async def _remove_user(self, session: SessionView, user: str) -> None:
        k = self._keys(session)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(k.presence, user)
        pipe.hdel(k.users, user)
        pipe.delete(k.values(user))
        await _execute(pipe)

    async def unclaim_user(self, session: SessionView, user: str) -> None:
        with contextlib.suppress(*OUTAGE):
            await self._remove_user(session, user)

    async def present(self, session: SessionView, user: str) -> bool:
        try:
            return await self.redis.zscore(self._keys(session).presence, user) is not None
        except OUTAGE:
            return session.is_present(user)

    async def joined(self, session: SessionView, user: str) -> None:
        await self._publish_presence(session)

    async def left(self, session: SessionView, user: str) -> None:
        try:
            await self._remove_user(session, user)
        except OUTAGE as exc:
            self.metrics.backplane_errors.labels("presence").inc()
            log.warning("leave of %s (session %s) not in redis: %s", user, session.id, exc)
            return
        await self._publish_presence(session)

    async def _publish_presence(self, session: SessionView) -> None:
        f = self.followers.get(session.id)
        if f is None:
            return
        try:
            await self.scripts.presence(f.keys, expire=False, append=self._append())
        except OUTAGE as exc:
            self.metrics.backplane_errors.labels("presence").inc()
            log.warning("presence of session %s not published: %s", session.id, exc)

    async def context(
        self, session: SessionView, user: str
    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        k = self._keys(session)
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(k.values(user))
            pipe.hgetall(k.context)
            pipe.pexpire(k.context, self._ttl_ms())
            values_raw, shared_raw, _ = await _execute(pipe)
        except OUTAGE as exc:
            self.metrics.backplane_errors.labels("context").inc()
            log.warning("captured values of session %s not read: %s", session.id, exc)
            return None
        return _values(values_raw), _values(shared_raw)

    async def remember(
        self, session: SessionView, user: str | None, values: dict[str, Any],
        shared: dict[str, Any],
    ) -> None:  # fmt: skip
        k = self._keys(session)
        ttl = self._ttl_ms()
        try:
            pipe = self.redis.pipeline(transaction=True)
            if user is not None and values:
                pipe.hset(k.values(user), mapping={n: json.dumps(v) for n, v in values.items()})
                pipe.pexpire(k.values(user), ttl)
            if shared:
                pipe.hset(k.context, mapping={n: json.dumps(v) for n, v in shared.items()})
                pipe.pexpire(k.context, ttl)
            await _execute(pipe)
        except OUTAGE as exc:
            self.metrics.backplane_errors.labels("context").inc()
            raise BackplaneUnavailable(f"redis: {exc}") from exc

    @asynccontextmanager
    async def command_slot(self, session: SessionView) -> AsyncIterator[None]:
        """The session's command gate across instances (upstream.session_concurrency):
        queued in Redis in arrival order; the holder renews its place while its
        request is out, so an instance that dies frees the gate within
        GATE_WAIT_MS. Redis unreachable: this instance's gate only."""
        f = self.followers.get(session.id)
        token: str | None = None
        renew: asyncio.Task[None] | None = None
        if f is not None and not self._down:  # (also while starting: only a failure is an outage)
            token = f"{self.instance}:{secrets.token_hex(6)}"
            try:
                while not await self._gate(f, token):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(f.gate_moved.wait(), GATE_RECHECK)
                renew = f.tasks.spawn(self._hold_gate(f, token), "holding the command gate")
            except OUTAGE as exc:
                self.metrics.backplane_errors.labels("gate").inc()
                log.warning("redis command gate unavailable (%s): this instance's only", exc)
            except BaseException:
                self._fire(self.scripts.ungate(f.keys, token=token), "leaving the command gate")
                raise
        try:
            yield
        finally:
            if renew is not None:
                renew.cancel()
            if token is not None and f is not None:
                self._fire(self.scripts.ungate(f.keys, token=token), "leaving the command gate")

    async def _gate(self, f: Follower, token: str) -> bool:
        f.gate_moved.clear()
        return await self.scripts.gate(
            f.keys, token=token, limit=self.config.upstream.session_concurrency,
            keep_ms=GATE_WAIT_MS, ttl_ms=self._ttl_ms(),
        )  # fmt: skip

    async def _hold_gate(self, f: Follower, token: str) -> None:
        """Renew the holder's place (an outage only skips a renewal)."""
        while True:
            await asyncio.sleep(GATE_WAIT_MS / 3000)
            with contextlib.suppress(*OUTAGE):
                await self._gate(f, token)

    async def begin_command(
        self, session: SessionView, user: str, command_id: str
    ) -> SharedNew | SharedDone:
        key = self._keys(session).command(user, command_id)
        window_ms = self._window_ms()
        # at most once: the marker lasts the whole window; only its instance's
        # ack, or that instance dying, replaces it
        mine = (PENDING + self.instance).encode()
        deadline = time.monotonic() + self._pending_ms() / 1000
        try:
            while True:
                if await self.redis.set(key, mine, nx=True, px=window_ms):
                    return _NEW
                value = await self.redis.get(key)
                if value is None:
                    continue  # abandoned just now (its sender answered "send it again")
                if not text(value).startswith(PENDING):
                    return SharedDone(json.loads(value))
                # upstream on another instance: its ack lands here soon, unless it died
                owner = text(value)[len(PENDING) :]
                alive = await self.redis.exists(f"{self.cfg.prefix}:alive:{owner}")
                if not alive or time.monotonic() >= deadline:
                    ack = m.ack_error(
                        command_id, "upstream_unavailable",
                        "the instance forwarding it stopped; whether the app applied it is "
                        "unknown (it is not sent again)",
                    )  # fmt: skip
                    if await self.scripts.swap(
                        key, expected=value, new=json.dumps(ack), ttl_ms=window_ms
                    ):
                        return SharedDone(ack)
                    continue
                await asyncio.sleep(0.05)
        except OUTAGE as exc:
            # Degraded: this instance's window only (docs/scaling.md).
            self.metrics.backplane_errors.labels("dedupe").inc()
            log.warning("redis de-dupe unavailable (%s): this instance's window only", exc)
            return _NEW

    async def finish_command(
        self, session: SessionView, user: str, command_id: str, ack: dict[str, Any]
    ) -> None:
        key = self._keys(session).command(user, command_id)
        try:
            await self.redis.set(key, json.dumps(ack), px=self._window_ms())
        except OUTAGE as exc:
            self.metrics.backplane_errors.labels("dedupe").inc()
            log.warning("ack of %s not stored in redis: %s", command_id, exc)

    def abandon_command(self, session: SessionView, user: str, command_id: str) -> None:
        key = self._keys(session).command(user, command_id)
        mine = (PENDING + self.instance).encode()  # never another instance's marker
        self._fire(self.scripts.delete_if(key, expected=mine), "forgetting an interrupted command")


async def _execute(pipe: Any) -> Any:
    """Run a pipeline and always give its connection back (also when cancelled)."""
    try:
        return await pipe.execute()
    finally:
        await pipe.reset()


def _entry(data: dict[bytes, bytes]) -> LoggedEntry:
    """One Stream entry (its fields) as the runtime takes it."""
    return LoggedEntry(int(data[b"seq"]), text(data[b"type"]), json.loads(data[b"payload"]))


def _values(raw: dict[Any, Any]) -> dict[str, Any]:
    """A hash of captured values (name → JSON) as a dict (a value that does not
    parse is left out: only this backplane writes there)."""
    out: dict[str, Any] = {}
    for name, value in raw.items():
        with contextlib.suppress(ValueError):
            out[text(name)] = json.loads(value)
    return out


def _ctx(raw: Any) -> dict[str, Any] | None:
    """A user's stored context ({client, params, headers}) for the requests made for them."""
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


__all__ = ["Keys", "RedisBackplane"]


def _seen_at(stream_id: str) -> float | None:
    """When a stream entry was added, on this process' monotonic clock: its id
    is Redis' own time in milliseconds (``<ms>-<n>``), so the delivery latency
    with Redis includes the trip through it (on Redis' clock: keep it in step)."""
    try:
        added = int(stream_id.split("-", 1)[0]) / 1000.0
    except ValueError:
        return None
    return time.monotonic() - max(0.0, time.time() - added)
