"""The Lua scripts of the Redis backplane, each behind a method with named arguments.

Each script runs atomically in Redis. Their KEYS and ARGV orders live here
only, in one method each; callers pass names. A method given ``client=`` (a
pipeline) queues the call there and its answer comes from the pipeline; the
``parse_*`` functions turn raw answers into values.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from .keys import Keys

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

# The arguments of ``append`` come last in both appending scripts (ARGV[n..n+4]).
_PUBLISH_STATE = (
    _LUA_COMMON
    + """
-- KEYS meta log latest; ARGV payload digest fence must_exist, then append's
if ARGV[4] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return {'', -2} end
local epoch = epoch_of(KEYS[1], ARGV[9])
if ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'fence') ~= ARGV[3] then return {epoch, -1} end
if redis.call('HGET', KEYS[1], 'digest') == ARGV[2] then return {epoch, 0} end
redis.call('HSET', KEYS[1], 'digest', ARGV[2])
return {epoch, append(KEYS[1], KEYS[2], KEYS[3], 'session', ARGV[1],
                      ARGV[5], ARGV[6], ARGV[7], ARGV[8], epoch)}
"""
)

_PRESENCE = (
    _LUA_COMMON
    + """
-- KEYS meta log latest presence users; ARGV expire, then append's
-- → {epoch, seq (0: unchanged), online count, gone user, its context, ...}
local epoch = epoch_of(KEYS[1], ARGV[6])
local gone = {}
if ARGV[1] == '1' then
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
               ARGV[2], ARGV[3], ARGV[4], ARGV[5], epoch)
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

_CLAIM = (
    _LUA_COMMON
    + """
-- KEYS presence users; ARGV user grace_ms context ttl → 1 when the user was absent
local was = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], 'GT', string.format('%d', now_ms() + tonumber(ARGV[2])), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
if was then return 0 end
return 1
"""
)

_TOUCH = (
    _LUA_COMMON
    + """
-- KEYS presence; ARGV grace_ms user... (users with a live transport here)
local deadline = string.format('%d', now_ms() + tonumber(ARGV[1]))
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'GT', deadline, ARGV[i]) end
return #ARGV - 1
"""
)

_LEASE = """
-- KEYS lease meta log latest presence users; ARGV token lease_ms want ttl
-- → {fence ('' when not held), seq, epoch, present users}
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

_DELETE_IF = """
-- KEYS key; ARGV expected → 1 when the key held ``expected`` (and is gone now)
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_SWAP = """
-- KEYS cmd; ARGV expected new ttl → 1 when the value was still ``expected``
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


def text(value: Any) -> str:
    """A Redis answer (bytes) as text."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclass(frozen=True, slots=True)
class Append:
    """What both appending scripts need besides the message: the Stream's bounds
    (count, age in ms), the keys' TTL (ms), and an epoch in case the session
    has none yet."""

    maxlen: int
    max_age_ms: int
    ttl_ms: int

    def args(self, keys: Keys) -> list[str | int]:
        return [self.maxlen, self.max_age_ms, self.ttl_ms, keys.channel, secrets.token_urlsafe(9)]


@dataclass(frozen=True, slots=True)
class LeaseAnswer:
    #: the fence while this instance holds the lease, else None
    fence: str | None
    seq: int
    epoch: str
    present: int


def parse_lease(answer: Any) -> LeaseAnswer:
    fence, seq, epoch, present = answer
    return LeaseAnswer(text(fence) or None, int(seq), text(epoch), int(present))


@dataclass(frozen=True, slots=True)
class PresenceAnswer:
    epoch: str
    seq: int
    online: int
    #: users whose deadline passed, with the context stored when they joined
    gone: list[tuple[str, str]]


def parse_presence(answer: Any) -> PresenceAnswer:
    rest = answer[3:]
    gone = [(text(rest[i]), text(rest[i + 1])) for i in range(0, len(rest), 2)]
    return PresenceAnswer(text(answer[0]), int(answer[1]), int(answer[2]), gone)


#: A session's command gate across instances: at most ``limit`` tokens at the
#: head of the queue (ordered by ticket) may go upstream. Tokens whose holder or
#: waiter stopped renewing them are dropped.
#: KEYS queue, alive, tickets · ARGV token, limit, keep_ms, ttl_ms
_GATE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms)
for _, m in ipairs(dead) do
  redis.call('ZREM', KEYS[1], m)
  redis.call('ZREM', KEYS[2], m)
end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[3]), ARGV[1])
end
local rank = redis.call('ZRANK', KEYS[1], ARGV[1])
local granted = rank < tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], now_ms + tonumber(ARGV[3]), ARGV[1])
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[4]) end
if granted then return 1 end
return 0
"""

#: Leave the gate and wake the waiters of every instance. KEYS queue, alive · ARGV token, channel
_UNGATE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], 'gate')
return 1
"""


class Scripts:
    """The scripts, registered on one client."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._publish = redis.register_script(_PUBLISH_STATE)
        self._presence = redis.register_script(_PRESENCE)
        self._claim = redis.register_script(_CLAIM)
        self._touch = redis.register_script(_TOUCH)
        self._lease = redis.register_script(_LEASE)
        self._delete_if = redis.register_script(_DELETE_IF)
        self._swap = redis.register_script(_SWAP)
        self._gate = redis.register_script(_GATE)
        self._ungate = redis.register_script(_UNGATE)

    async def gate(self, k: Keys, *, token: str, limit: int, keep_ms: int, ttl_ms: int) -> bool:
        """Queue ``token`` (once) for the session's command gate, its place kept for
        ``keep_ms`` (renew it); True when it may go."""
        granted = await self._gate(
            keys=[k.gate, k.gate_alive, k.gate_tickets], args=[token, limit, keep_ms, ttl_ms]
        )
        return bool(granted)

    async def ungate(self, k: Keys, *, token: str) -> None:
        """Leave the gate (and wake the waiters of every instance)."""
        await self._ungate(keys=[k.gate, k.gate_alive], args=[token, k.channel])

    async def publish_state(
        self, k: Keys, *, payload: str, digest: str, fence: str | None, must_exist: bool,
        append: Append,
    ) -> tuple[str, int]:  # fmt: skip
        """Append a state unless unchanged → (epoch, seq): seq 0 unchanged, -1 fenced
        out (``fence`` is not current), -2 no such session (with ``must_exist``)."""
        epoch, seq = await self._publish(
            keys=[k.meta, k.log, k.latest],
            args=[payload, digest, fence or "", "1" if must_exist else "0", *append.args(k)],
        )
        return text(epoch), int(seq)

    async def presence(self, k: Keys, *, expire: bool, append: Append, client: Any = None) -> Any:
        """Publish the present users if they changed; with ``expire``, first remove
        (and return) those whose deadline passed. Answer: :func:`parse_presence`."""
        return await self._presence(
            keys=[k.meta, k.log, k.latest, k.presence, k.users],
            args=["1" if expire else "0", *append.args(k)],
            client=client,
        )

    async def claim(self, k: Keys, *, user: str, grace_ms: int, context: str, ttl_ms: int) -> bool:
        """Mark ``user`` present until now + grace; True when they were absent."""
        was_absent = await self._claim(
            keys=[k.presence, k.users], args=[user, grace_ms, context, ttl_ms]
        )
        return bool(was_absent)

    async def touch(self, k: Keys, *, users: list[str], grace_ms: int, client: Any = None) -> Any:
        """Push the deadlines of ``users`` (live here) to now + grace."""
        return await self._touch(keys=[k.presence], args=[grace_ms, *users], client=client)

    async def lease(
        self, k: Keys, *, token: str, lease_ms: int, want: bool, ttl_ms: int, client: Any = None
    ) -> Any:
        """Take or renew (``want``) or give up the lease. Answer: :func:`parse_lease`."""
        return await self._lease(
            keys=[k.lease, k.meta, k.log, k.latest, k.presence, k.users],
            args=[token, lease_ms, "1" if want else "0", ttl_ms],
            client=client,
        )

    async def release(self, k: Keys, *, token: str, client: Any = None) -> Any:
        """Give up the lease if ``token`` holds it."""
        return await self._delete_if(keys=[k.lease], args=[token], client=client)

    async def delete_if(self, key: str, *, expected: bytes) -> bool:
        """Delete ``key`` only if it still holds ``expected``."""
        return bool(await self._delete_if(keys=[key], args=[expected]))

    async def swap(self, key: str, *, expected: bytes | str, new: str, ttl_ms: int) -> bool:
        """Set ``key`` to ``new`` only if it still holds ``expected``."""
        return bool(await self._swap(keys=[key], args=[expected, new, ttl_ms]))
