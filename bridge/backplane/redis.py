"""The Redis backplane: any instance serves any client of any session.

Per session (keys in docs/scaling.md, all under ``backplane.prefix`` and the
session id as a hash tag):

- the **stream** is a Redis Stream; a Lua script assigns the next seq and
  appends in one step, so every instance sees one order. Each instance keeps
  a mirror (:class:`~bridge.core.replay.ReplayLog`, fed by ``accept``) and
  follows the session with one pub/sub subscription, whatever its number of
  clients there; a missed or out-of-order message is caught up from the
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
says exactly what degrades.
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
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

from ..core.dedupe import Done, New, Pending
from ..core.hub import state_digest
from ..core.replay import ReplayLog
from ..exceptions import BackplaneUnavailable
from ..protocol import messages as m

if TYPE_CHECKING:
    from ..runtime import Bridge, Session

log = logging.getLogger("bridge.backplane")

# Shared by the two scripts that append to a session's stream.
_LUA_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function epoch_of(meta, candidate)
  local e = redis.call('HGET', meta, 'epoch')
  if not e then
    e = candidate
    redis.call('HSET', meta, 'epoch', e)
  end
  return e
end
local function append(meta, log, latest, kind, payload, maxlen, max_age, ttl, channel, epoch)
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  local id = redis.call('XADD', log, 'MAXLEN', '~', maxlen, '*',
                        'seq', seq, 'type', kind, 'payload', payload)
  if tonumber(max_age) > 0 then
    local minid = now_ms() - tonumber(max_age)
    if minid > 0 then redis.call('XTRIM', log, 'MINID', '~', string.format('%d', minid)) end
  end
  local s = string.format('%d', seq)
  redis.call('HSET', latest, kind, s .. '\\n' .. payload)
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', log, ttl)
  redis.call('PEXPIRE', latest, ttl)
  local nl = '\\n'
  redis.call('PUBLISH', channel, epoch .. nl .. id .. nl .. s .. nl .. kind .. nl .. payload)
  return seq
end
"""

# KEYS meta log latest; ARGV payload digest fence maxlen max_age ttl channel epoch must_exist
_PUBLISH_STATE = (
    _LUA_COMMON
    + """
if ARGV[9] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return {'', -2} end
local epoch = epoch_of(KEYS[1], ARGV[8])
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[3] then return {epoch, -1} end
if redis.call('HGET', KEYS[1], 'digest') == ARGV[2] then return {epoch, 0} end
redis.call('HSET', KEYS[1], 'digest', ARGV[2])
return {epoch, append(KEYS[1], KEYS[2], KEYS[3], 'session', ARGV[1],
                      ARGV[4], ARGV[5], ARGV[6], ARGV[7], epoch)}
"""
)

# KEYS meta log latest presence users; ARGV maxlen max_age ttl channel epoch expire
# → {epoch, seq (0: unchanged), online count, gone user, its context, ...}
_PRESENCE = (
    _LUA_COMMON
    + """
local epoch = epoch_of(KEYS[1], ARGV[5])
local gone = {}
if ARGV[6] == '1' then
  local now = string.format('%d', now_ms())
  gone = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now)
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now) end
end
local online = redis.call('ZRANGE', KEYS[4], 0, -1)
table.sort(online)
local quoted = {}
for i, u in ipairs(online) do quoted[i] = '"' .. u .. '"' end
local payload = '{"online":[' .. table.concat(quoted, ',') .. ']}'
local seq = 0
if redis.call('HGET', KEYS[1], 'online') ~= payload then
  redis.call('HSET', KEYS[1], 'online', payload)
  seq = append(KEYS[1], KEYS[2], KEYS[3], 'presence', payload,
               ARGV[1], ARGV[2], ARGV[3], ARGV[4], epoch)
end
local out = {epoch, seq, #online}
for _, u in ipairs(gone) do
  table.insert(out, u)
  table.insert(out, redis.call('HGET', KEYS[5], u) or '')
  redis.call('HDEL', KEYS[5], u)
end
return out
"""
)

# KEYS presence users; ARGV user grace_ms context ttl → 1 when the user was absent
_CLAIM = (
    _LUA_COMMON
    + """
local was = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], 'GT', string.format('%d', now_ms() + tonumber(ARGV[2])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if was then return 0 end
return 1
"""
)

# KEYS presence; ARGV grace_ms user... (users with a live transport here)
_TOUCH = (
    _LUA_COMMON
    + """
local deadline = string.format('%d', now_ms() + tonumber(ARGV[1]))
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'GT', deadline, ARGV[i]) end
return #ARGV - 1
"""
)

# KEYS lease meta log latest presence users; ARGV token lease_ms want ttl
# → {fence ('' when not held), seq, epoch, present users}
_LEASE = """
local cur = redis.call('GET', KEYS[1])
local fence = false
if cur == ARGV[1] then
  if ARGV[3] == '1' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    fence = redis.call('HGET', KEYS[2], 'fence')
    if not fence then fence = tostring(redis.call('HINCRBY', KEYS[2], 'fence', 1)) end
  else
    redis.call('DEL', KEYS[1])
  end
elseif not cur and ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  fence = tostring(redis.call('HINCRBY', KEYS[2], 'fence', 1))
end
if fence then
  for i = 2, 6 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
end
return {fence or '', redis.call('HGET', KEYS[2], 'seq') or '0',
        redis.call('HGET', KEYS[2], 'epoch') or '', redis.call('ZCARD', KEYS[5])}
"""

# KEYS lease; ARGV token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS cmd; ARGV expected new ttl → 1 when the value was still ``expected``
_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

PENDING = "pending:"  # + the forwarding instance


@dataclass(frozen=True, slots=True)
class Keys:
    """Every key of one session (``{id}`` is a Redis Cluster hash tag)."""

    meta: str
    log: str
    latest: str
    presence: str
    users: str
    lease: str
    channel: str
    cmd_prefix: str

    @classmethod
    def of(cls, prefix: str, session_id: str) -> Keys:
        base = f"{prefix}:{{{session_id}}}:"
        return cls(
            meta=base + "meta",
            log=base + "log",
            latest=base + "latest",
            presence=base + "presence",
            users=base + "users",
            lease=base + "lease",
            channel=base + "events",
            cmd_prefix=base + "cmd:",
        )

    def command(self, user: str, command_id: str) -> str:
        return f"{self.cmd_prefix}{user}:{command_id}"


@dataclass(eq=False)
class Follower:
    """This instance's view of one session it serves."""

    session: Session
    keys: Keys
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
    background: set[asyncio.Task[Any]] = field(default_factory=set)


def _s(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class RedisBackplane:
    kind = "redis"
    shared = True

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.cfg = bridge.cfg.backplane
        self.instance = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.redis = self._client()
        self.followers: dict[str, Follower] = {}
        self._healthy = False
        #: a failure was seen (False while starting: not ready, yet not an outage)
        self._down = False
        self._down_since: float | None = time.monotonic()
        self._pubsub: PubSub | None = None
        self._pubsub_ready = asyncio.Event()
        #: channels Redis confirmed, and connects waiting for a confirmation
        self._subscribed: set[str] = set()
        self._sub_waiters: dict[str, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._publish = self.redis.register_script(_PUBLISH_STATE)
        self._presence = self.redis.register_script(_PRESENCE)
        self._claim = self.redis.register_script(_CLAIM)
        self._touch = self.redis.register_script(_TOUCH)
        self._lease = self.redis.register_script(_LEASE)
        self._release = self.redis.register_script(_RELEASE)
        self._swap = self.redis.register_script(_SWAP)
        #: exists while this instance lives (refreshed every round): a command it
        #: forwards is only answered as "outcome unknown" once this is gone
        self._alive_key = f"{self.cfg.prefix}:alive:{self.instance}"
        self._self_channel = f"{self.cfg.prefix}:instance:{self.instance}"
        self.metrics = bridge.metrics
        self.metrics.backplane_up.set(0)

    # ------------------------------------------------------------------ settings
    @property
    def round_every(self) -> float:
        """Leases, presence deadlines and head checks are refreshed this often."""
        return min(1.0, self.cfg.lease / 3)

    def _ttl_ms(self) -> int:
        cfg = self.bridge.cfg
        return int((cfg.replay.max_age + cfg.presence.grace + 60 + self.cfg.lease) * 1000)

    def _grace_ms(self) -> int:
        return int(self.bridge.cfg.presence.grace * 1000)

    def _window_ms(self) -> int:
        return max(1, int(self.bridge.cfg.dedupe.window * 1000))

    def _alive_ms(self) -> int:
        return int(max(self.cfg.lease, 3 * self.round_every) * 1000)

    def _pending_ms(self) -> int:
        """How long a command may stay "upstream" before a repeat may forward it again."""
        up = self.bridge.cfg.upstream
        tries = up.retry.attempts
        return int((up.timeout * tries + up.retry.max * tries + up.hold + 5) * 1000)

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
        # Down: every instance polls the sessions of its own clients (nobody can know
        # the lease holder). Up again: only the holders do.
        for f in list(self.followers.values()):
            if f.fence is None and (f.session.conns or not up):
                self.bridge.ownership_changed(f.session, self.owns(f.session))

    def status(self) -> dict[str, Any]:
        return {
            "kind": "redis",
            "healthy": self._healthy,
            "instance": self.instance,
            "leases": sum(1 for f in self.followers.values() if f.fence is not None),
        }

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._reader_loop(), name="backplane-reader"),
            loop.create_task(self._round_loop(), name="backplane-rounds"),
        ]

    async def stop(self) -> None:
        """Release our leases (so another instance takes over at once) and disconnect."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        owned = [f for f in self.followers.values() if f.fence is not None]
        if self._healthy:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                async with asyncio.timeout(2.0):
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.delete(self._alive_key)  # the drain answered everything in flight
                    for f in owned:
                        await self._release(keys=[f.keys.lease], args=[self.instance], client=pipe)
                    await _execute(pipe)
        for f in self.followers.values():
            for task in list(f.background):
                task.cancel()
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            await self.redis.aclose()

    # ------------------------------------------------------------------ following
    async def open(self, session: Session) -> None:
        f = self.followers.get(session.id)
        if f is not None and f.session is not session:  # a dropped session came back
            self._forget(f)
            f = None
        if f is None:
            f = self.followers[session.id] = Follower(session, Keys.of(self.cfg.prefix, session.id))
        if f.ready is None:
            f.ready = asyncio.get_running_loop().create_future()
            self._spawn(f, self._load_first(f))
        try:
            await asyncio.shield(f.ready)
        except BackplaneUnavailable:
            raise
        except Exception as exc:  # pragma: no cover - defensive
            raise BackplaneUnavailable(str(exc)) from exc

    async def _load_first(self, f: Follower) -> None:
        assert f.ready is not None
        try:
            async with asyncio.timeout(self.cfg.connect_timeout * 2):
                await self._subscribe(f)
                await self._load(f)
                # before any command here can be marked as ours (rounds renew it)
                await self.redis.set(self._alive_key, b"1", px=self._alive_ms())
        except Exception as exc:  # Redis unreachable (or a bug): never leave connects waiting
            if not isinstance(exc, RedisError | OSError | TimeoutError | BackplaneUnavailable):
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
        with contextlib.suppress(RedisError, OSError):
            answer = await self._lease_call(f, want=True)
            fence = _s(answer[0]) or None
            if fence is not None and f.fence is None and self.followers.get(f.session.id) is f:
                f.fence = fence
                log.info("session %s: lease taken (fence %s)", f.session.id, fence)
                self.bridge.ownership_changed(f.session, True)

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
        cfg = self.bridge.cfg
        f.loading = True
        f.dirty = False
        pipe = self.redis.pipeline(transaction=True)
        pipe.hsetnx(f.keys.meta, "epoch", secrets.token_urlsafe(9))
        pipe.pexpire(f.keys.meta, self._ttl_ms())
        pipe.hget(f.keys.meta, "epoch")
        pipe.xrevrange(f.keys.log, "+", "-", count=cfg.replay.max_messages)
        pipe.hgetall(f.keys.latest)
        _, _, epoch_raw, window_raw, latest_raw = await _execute(pipe)
        epoch = _s(epoch_raw)
        now = time.monotonic()
        mirror = ReplayLog(
            epoch,
            max_messages=cfg.replay.max_messages,
            max_bytes=cfg.replay.max_bytes,
            max_age=cfg.replay.max_age,
        )
        window = [(_s(i), d) for i, d in reversed(window_raw)]
        first = int(window[0][1][b"seq"]) if window else None
        pinned = []
        for kind, value in latest_raw.items():
            seq_s, _, payload = value.partition(b"\n")
            if first is None or int(seq_s) < first:
                pinned.append((int(seq_s), _s(kind), payload))
        for seq, kind, payload in sorted(pinned):
            mirror.accept(seq, kind, json.loads(payload), now)
        for _, data in window:
            mirror.accept(int(data[b"seq"]), _s(data[b"type"]), json.loads(data[b"payload"]), now)
        f.last_id = window[-1][0] if window else None
        self.bridge.replace_log(f.session, mirror)
        f.diverged = False
        f.loading = False
        if f.dirty:
            self._catch_up(f)

    def closed(self, session: Session) -> None:
        f = self.followers.get(session.id)
        if f is None or f.session is not session:
            return
        self._forget(f)
        if f.fence is not None and self._healthy:
            self._fire(self._release(keys=[f.keys.lease], args=[self.instance]))
        if self._pubsub is not None and self._pubsub_ready.is_set():
            self._fire(self._unsubscribe(self._pubsub, f.session.id, f.keys.channel))

    async def _unsubscribe(self, ps: PubSub, session_id: str, channel: str) -> None:
        if session_id in self.followers:  # opened again meanwhile: keep the subscription
            return
        # from now on a re-open subscribes again (its SUBSCRIBE follows this one)
        self._subscribed.discard(channel)
        await ps.unsubscribe(channel)

    def _forget(self, f: Follower) -> None:
        if self.followers.get(f.session.id) is f:
            del self.followers[f.session.id]
        for task in list(f.background):
            task.cancel()
        if f.ready is not None and not f.ready.done():
            f.ready.set_exception(BackplaneUnavailable("session closed"))
            f.ready.exception()
        f.fence = None

    def _fire(self, aw: Awaitable[Any]) -> None:
        async def run() -> None:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                await aw

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    def _spawn(self, f: Follower, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        f.background.add(task)
        task.add_done_callback(f.background.discard)
        return task

    async def _reader_loop(self) -> None:
        """The one pub/sub connection of this instance; resubscribes after a failure."""
        backoff = 0.1
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
                backoff = 0.1
                while True:
                    msg = await ps.get_message(timeout=1.0)
                    if msg is not None:
                        self._on_pubsub(msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
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
                with contextlib.suppress(Exception):
                    await ps.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5.0)

    def _on_pubsub(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        channel = _s(msg.get("channel", b""))
        if kind in (b"subscribe", "subscribe"):
            self._subscribed.add(channel)
            waiter = self._sub_waiters.pop(channel, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return
        if kind not in (b"message", "message"):
            return
        session_id = channel[len(self.cfg.prefix) + 2 : -len("}:events")]
        f = self.followers.get(session_id)
        if f is None:
            return
        if f.loading or f.syncing is not None:
            f.dirty = True
            return
        try:
            epoch, stream_id, seq_s, kind_s, payload = _s(msg["data"]).split("\n", 4)
            seq = int(seq_s)
        except ValueError:  # pragma: no cover - only our script publishes here
            log.error("malformed backplane message on %s", channel)
            return
        head = f.session.hub.log
        if epoch != head.epoch:
            self._resync(f, "epoch")
        elif seq == head.head + 1:
            entry = head.accept(seq, kind_s, json.loads(payload), time.monotonic())
            f.last_id = stream_id
            if entry is not None:
                self.bridge.broadcast(f.session, entry)
        elif seq > head.head + 1:
            self._catch_up(f)

    def _catch_up(self, f: Follower) -> None:
        if f.syncing is None and not f.loading:
            f.syncing = self._spawn(f, self._sync(f))

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
                log_ = f.session.hub.log
                if epoch_raw is not None and _s(epoch_raw) != log_.epoch:
                    f.syncing = None
                    self._resync(f, "epoch")
                    return
                for stream_id, data in entries:
                    seq = int(data[b"seq"])
                    if seq > log_.head + 1:
                        f.syncing = None
                        self._resync(f, "gap")
                        return
                    entry = log_.accept(
                        seq, _s(data[b"type"]), json.loads(data[b"payload"]), time.monotonic()
                    )
                    f.last_id = _s(stream_id)
                    if entry is not None:
                        self.bridge.broadcast(f.session, entry)
                if len(entries) < 500 and not f.dirty:
                    return
        except (RedisError, OSError) as exc:
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
            except (RedisError, OSError) as exc:
                f.loading = False
                self.metrics.backplane_errors.labels("sync").inc()
                log.warning("reloading session %s failed: %s", f.session.id, exc)
                return
            self.bridge.ask_to_resume(f.session, "resync")

        self._spawn(f, reload())

    # ------------------------------------------------------------------ rounds
    async def _round_loop(self) -> None:
        """Every round: renew or take leases, push presence deadlines, check heads;
        the lease holder also expires presence, sends leaves and keep-alives."""
        backoff = self.round_every
        while not self._stopping:
            started = time.monotonic()
            try:
                async with asyncio.timeout(max(self.cfg.connect_timeout, 5.0) * 2):
                    await self._round()
                if self._pubsub_ready.is_set():
                    self._set_health(True)
                backoff = self.round_every
                await asyncio.sleep(max(0.0, self.round_every - (time.monotonic() - started)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.backplane_errors.labels("round").inc()
                self._set_health(False, f"{type(exc).__name__}: {exc}")
                self._degraded_round()
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(backoff * 2, 5.0)

    async def _round(self) -> None:
        followers = [f for f in self.followers.values() if not f.loading]
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._alive_key, b"1", px=self._alive_ms())
        lease_at: list[int] = []  # where each follower's lease answer is in the results
        n = 1
        for f in followers:
            presence = f.session.hub.presence
            users = [u for u in presence.online() if presence.clients_of(u)]
            if users:
                args: list[str | int] = [self._grace_ms(), *users]
                await self._touch(keys=[f.keys.presence], args=args, client=pipe)
                n += 1
            want = bool(f.session.conns) or (f.fence is not None and f.present > 0)
            await self._lease_call(f, want=want, client=pipe)
            lease_at.append(n)
            n += 1
        results = await _execute(pipe)
        lease_results = [results[i] for i in lease_at]
        owned: list[Follower] = []
        for f, answer in zip(followers, lease_results, strict=True):
            fence_raw, seq_raw, epoch_raw, present = answer
            fence = _s(fence_raw) or None
            f.present = int(present)
            if fence != f.fence:
                gained = f.fence is None
                f.fence = fence
                if fence is None or gained:
                    log.info(
                        "session %s: lease %s (fence %s)", f.session.id,
                        "taken" if fence else "lost", fence,
                    )  # fmt: skip
                self.bridge.ownership_changed(f.session, fence is not None)
            if fence is not None:
                owned.append(f)
            epoch = _s(epoch_raw)
            if f.diverged:  # served alone during the outage: a new epoch, then resume
                self._resync(f, "epoch")
            elif epoch and epoch != f.session.hub.log.epoch:
                self._resync(f, "epoch")
            elif int(seq_raw) > f.session.hub.log.head:
                self._catch_up(f)
            self.bridge.drop_if_idle(f.session)
        self.metrics.backplane_leases.set(sum(1 for f in self.followers.values() if f.fence))
        if owned:
            await self._owner_round(owned)

    async def _owner_round(self, owned: list[Follower]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for f in owned:
            await self._presence_call(f, expire=True, client=pipe)
        results = await _execute(pipe)
        now = time.monotonic()
        keepalive = self.bridge.cfg.upstream.keepalive
        due: list[Follower] = []
        for f, result in zip(owned, results, strict=True):
            f.present = int(result[2])
            gone = result[3:]
            for i in range(0, len(gone), 2):
                user, context = _s(gone[i]), _s(gone[i + 1])
                # on the session's own tasks: it is not dropped before the leave is sent
                self.bridge.spawn(
                    f.session, self.bridge.user_request(f.session, user, "leave", _ctx(context))
                )
            if keepalive is not None and now - f.last_keepalive >= keepalive.every:
                f.last_keepalive = now
                due.append(f)
        if due:
            pipe = self.redis.pipeline(transaction=False)
            for f in due:
                pipe.zrange(f.keys.presence, 0, -1)
                pipe.hgetall(f.keys.users)
            answers = await _execute(pipe)
            for i, f in enumerate(due):
                users, contexts = answers[2 * i], answers[2 * i + 1]
                for user in users:
                    # no stored context (lost with Redis' data): the local one, if any
                    ctx = _ctx(contexts.get(user))
                    request = self.bridge.user_request(f.session, _s(user), "keepalive", ctx)
                    self.bridge.spawn(f.session, request)

    def _degraded_round(self) -> None:
        """Redis is down: keep this instance's own users alive upstream, as the
        memory backplane would (the lease holder cannot be known)."""
        keepalive = self.bridge.cfg.upstream.keepalive
        if keepalive is None:
            return
        now = time.monotonic()
        for f in list(self.followers.values()):
            if now - f.last_keepalive < keepalive.every:
                continue
            f.last_keepalive = now
            for user in f.session.hub.presence.online():
                self.bridge.spawn(
                    f.session, self.bridge.user_request(f.session, user, "keepalive", None)
                )

    def _append_args(self, k: Keys) -> list[str | int]:
        """The arguments of the scripts' shared ``append``: maxlen, max_age (ms), the
        keys' TTL (ms), the channel, and an epoch in case the session has none."""
        replay = self.bridge.cfg.replay
        return [
            replay.max_messages, int(replay.max_age * 1000), self._ttl_ms(), k.channel,
            secrets.token_urlsafe(9),
        ]  # fmt: skip

    async def _presence_call(self, f: Follower, *, expire: bool, client: Any = None) -> Any:
        k = f.keys
        return await self._presence(
            keys=[k.meta, k.log, k.latest, k.presence, k.users],
            args=[*self._append_args(k), "1" if expire else "0"],
            client=client,
        )

    async def _lease_call(self, f: Follower, *, want: bool, client: Any = None) -> Any:
        """Take, renew (want) or release (not want) the session's lease."""
        k = f.keys
        return await self._lease(
            keys=[k.lease, k.meta, k.log, k.latest, k.presence, k.users],
            args=[self.instance, int(self.cfg.lease * 1000), "1" if want else "0", self._ttl_ms()],
            client=client,
        )

    # ------------------------------------------------------------------ the interface
    def owns(self, session: Session) -> bool:
        f = self.followers.get(session.id)
        if f is None or f.session is not session:
            return False
        return f.fence is not None or (self._down and bool(session.conns))

    def grace_over(self, session: Session, user: str) -> None:
        # the lease holder sends the leave, once for every instance, when the
        # user's deadline in Redis passes; here the user's context goes
        if not session.hub.presence.is_present(user):
            session.users.pop(user, None)

    def keep(self, session: Session) -> bool:
        f = self.followers.get(session.id)
        return f is not None and f.session is session and f.fence is not None and f.present > 0

    async def publish_state(self, session: Session, payload: Any, now: float) -> int | None:
        f = self.followers.get(session.id)
        if f is None or f.session is not session:  # pragma: no cover - a served session is followed
            return await self.publish(session.id, payload, None)
        if not f.diverged:  # (also while starting: only a failure means an outage)
            try:
                return await self.publish(session.id, payload, f.fence)
            except BackplaneUnavailable:
                if session.conns:
                    self._set_health(False, "publishing failed")
                else:
                    raise
        if not session.conns:
            raise BackplaneUnavailable("redis is unreachable and nobody is connected here")
        return self._publish_here(f, payload, now)

    def _publish_here(self, f: Follower, payload: Any, now: float) -> int | None:
        """Redis is unreachable: this instance's clients get the state from here,
        under an epoch of this instance's own, so nobody can ever resume across
        the two numberings; the first reload after Redis returns starts a new
        epoch there too (see _rebase), and every client is reset once."""
        hub = f.session.hub
        if not f.diverged:
            f.diverged = True
            hub.log.epoch = f"{hub.log.epoch}~{secrets.token_urlsafe(4)}"
            self.metrics.backplane_resyncs.labels("local").inc()
            log.warning(
                "session %s: redis unreachable, its state goes to this instance's clients "
                "from here until redis is back", f.session.id,
            )  # fmt: skip
        entry = hub.state(payload, now)
        if entry is None:
            return None
        self.bridge.broadcast(f.session, entry, now)
        return entry.seq

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
        text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        try:
            epoch, seq = await self._publish(
                keys=[k.meta, k.log, k.latest],
                args=[
                    text, state_digest(payload).hex(), fence or "", *self._append_args(k),
                    "1" if must_exist else "0",
                ],
            )  # fmt: skip
        except (RedisError, OSError) as exc:
            self.metrics.backplane_errors.labels("publish").inc()
            raise BackplaneUnavailable(f"redis: {exc}") from exc
        seq = int(seq)
        if seq == -2:  # must_exist, and no instance serves the session
            return -2
        if seq == -1:  # fenced out: another instance took the lease
            f = self.followers.get(session_id)
            if f is not None and f.fence == fence:
                f.fence = None
                self.bridge.ownership_changed(f.session, False)
            return None
        return seq if seq > 0 else None

    async def push_elsewhere(self, session_id: str, payload: Any) -> tuple[bool, int | None]:
        seq = await self.publish(session_id, payload, None, must_exist=True)
        if seq == -2:
            return False, None
        return True, seq

    async def claim_user(self, session: Session, user: str, context: dict[str, Any]) -> bool:
        k = Keys.of(self.cfg.prefix, session.id)
        try:
            was_absent = await self._claim(
                keys=[k.presence, k.users],
                args=[user, self._grace_ms(), json.dumps(context), self._ttl_ms()],
            )
        except (RedisError, OSError) as exc:
            self.metrics.backplane_errors.labels("presence").inc()
            raise BackplaneUnavailable(f"redis: {exc}") from exc
        return bool(was_absent)

    async def _remove_user(self, session_id: str, user: str) -> None:
        k = Keys.of(self.cfg.prefix, session_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(k.presence, user)
        pipe.hdel(k.users, user)
        await _execute(pipe)

    async def unclaim_user(self, session: Session, user: str) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self._remove_user(session.id, user)

    async def joined(self, session: Session, user: str) -> None:
        await self._publish_presence(session)

    async def left(self, session: Session, user: str) -> None:
        session.hub.leave(user, time.monotonic())  # stop refreshing it from here
        try:
            await self._remove_user(session.id, user)
        except (RedisError, OSError) as exc:
            self.metrics.backplane_errors.labels("presence").inc()
            log.warning("leave of %s (session %s) not in redis: %s", user, session.id, exc)
            return
        await self._publish_presence(session)

    async def _publish_presence(self, session: Session) -> None:
        f = self.followers.get(session.id)
        if f is None:
            return
        try:
            await self._presence_call(f, expire=False)
        except (RedisError, OSError) as exc:
            self.metrics.backplane_errors.labels("presence").inc()
            log.warning("presence of session %s not published: %s", session.id, exc)

    async def begin_command(
        self, session: Session, user: str, command_id: str, now: float
    ) -> New | Pending | Done:
        local = session.hub.command(user, command_id, now)
        if not isinstance(local, New):
            return local  # this instance has it (upstream now, or its ack)
        key = Keys.of(self.cfg.prefix, session.id).command(user, command_id)
        window_ms = self._window_ms()
        # at most once: the marker lasts the whole window; only its instance's
        # ack, or that instance dying, replaces it
        mine = (PENDING + self.instance).encode()
        deadline = time.monotonic() + self._pending_ms() / 1000
        try:
            while True:
                if await self.redis.set(key, mine, nx=True, px=window_ms):
                    return local
                value = await self.redis.get(key)
                if value is None:
                    continue  # abandoned just now (its sender answered "send it again")
                if not _s(value).startswith(PENDING):
                    ack = json.loads(value)
                    session.hub.command_done(user, command_id, ack, time.monotonic())
                    return Done(ack)
                # upstream on another instance: its ack lands here soon, unless it died
                owner = _s(value)[len(PENDING) :]
                alive = await self.redis.exists(f"{self.cfg.prefix}:alive:{owner}")
                if not alive or time.monotonic() >= deadline:
                    ack = m.ack_error(
                        command_id, "upstream_unavailable",
                        "the instance forwarding it stopped; whether the app applied it is "
                        "unknown (it is not sent again)",
                    )  # fmt: skip
                    if await self._swap(keys=[key], args=[value, json.dumps(ack), window_ms]):
                        session.hub.command_done(user, command_id, ack, time.monotonic())
                        return Done(ack)
                    continue
                await asyncio.sleep(0.05)
        except (RedisError, OSError) as exc:
            # Degraded: this instance's window only (docs/scaling.md).
            self.metrics.backplane_errors.labels("dedupe").inc()
            log.warning("redis de-dupe unavailable (%s): this instance's window only", exc)
            return local
        except BaseException:
            session.hub.command_abandoned(user, command_id)
            raise

    async def finish_command(
        self, session: Session, user: str, command_id: str, ack: dict[str, Any], now: float
    ) -> None:
        session.hub.command_done(user, command_id, ack, now)
        key = Keys.of(self.cfg.prefix, session.id).command(user, command_id)
        window_ms = self._window_ms()
        try:
            await self.redis.set(key, json.dumps(ack), px=window_ms)
        except (RedisError, OSError) as exc:
            self.metrics.backplane_errors.labels("dedupe").inc()
            log.warning("ack of %s not stored in redis: %s", command_id, exc)

    def abandon_command(self, session: Session, user: str, command_id: str) -> None:
        session.hub.command_abandoned(user, command_id)
        key = Keys.of(self.cfg.prefix, session.id).command(user, command_id)
        self._fire(self.redis.delete(key))


async def _execute(pipe: Any) -> Any:
    """Run a pipeline and always give its connection back (also when cancelled)."""
    try:
        return await pipe.execute()
    finally:
        await pipe.reset()


def _ctx(raw: Any) -> dict[str, Any] | None:
    """A user's stored context ({client, params, headers}) for the requests made for them."""
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


__all__ = ["Keys", "RedisBackplane"]
