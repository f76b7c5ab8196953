"""The Redis backplane up close: two in-process bridges on one real
redis-server and one legacy backend, so each can be inspected."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from bridge.backplane.redis import Keys, RedisBackplane
from tests.conftest import Stack


async def pair(make_stack, redis_server, **extra: Any) -> tuple[Stack, Stack]:
    over = {"backplane": {"kind": "redis", "url": redis_server.url, "lease": "1500ms"}, **extra}
    a = await make_stack(over)
    b = await make_stack({**over, "upstream": {"url": str(a.backend_server.make_url(""))}})
    return a, b


async def eventually(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def backplane(stack: Stack) -> RedisBackplane:
    bp = stack.bridge.backplane
    assert isinstance(bp, RedisBackplane)
    return bp


async def test_one_user_on_two_instances_joins_once_and_leaves_once(make_stack, redis_server):
    a, b = await pair(make_stack, redis_server)
    on_a = await a.connect("p", "u1")
    on_b = await b.connect("p", "u1")  # a second tab, on the other instance
    assert len(a.commands("/join")) == 1
    await on_b.wait_for(lambda m: m.get("type") == "presence" and m["payload"]["online"] == ["u1"])
    await on_a.close()
    await asyncio.sleep(1.6)  # past the 1 s grace: u1 is still here through b
    assert a.commands("/leave") == []
    await on_b.close()
    await eventually(lambda: len(a.commands("/leave")) == 1, 6)
    await asyncio.sleep(1.0)
    assert len(a.commands("/leave")) == 1  # one leave, whichever instance held the lease


async def test_a_stale_fence_cannot_publish(make_stack, redis_server):
    a, b = await pair(make_stack, redis_server)
    client = await a.connect("f", "u1")
    await client.wait_state(lambda s: True)
    seq = await backplane(a).publish("f", {"x": 1}, None)
    assert seq is not None
    assert await backplane(a).publish("f", {"x": 2}, "0") is None  # fence 0 never existed
    assert await backplane(a).publish("f", {"x": 1}, None) is None  # unchanged: no new seq
    r = aioredis.Redis.from_url(redis_server.url)
    assert int(await r.hget(Keys.of("bridge", "f").meta, "seq")) == seq
    await r.aclose()


async def test_state_pushed_to_an_instance_without_the_session(make_stack, redis_server):
    a, b = await pair(make_stack, redis_server)
    client = await a.connect("push", "u1")
    auth = {"Authorization": "Bearer push-secret"}
    async with b.http.post(b.url("/bridge/push"), headers=auth,
                           json={"sessionId": "push", "state": {"pushed": True}}) as r:  # fmt: skip
        body = await r.json()
        assert r.status == 202 and body["live"] is True and body["seq"] > 0, body
    await client.wait_state(lambda s: s == {"pushed": True})
    async with b.http.post(b.url("/bridge/push"), headers=auth,
                           json={"sessionId": "nobody", "state": {}}) as r:  # fmt: skip
        assert (await r.json())["live"] is False


async def test_a_hole_in_the_stream_makes_clients_resume_from_a_reset(make_stack, redis_server):
    a, b = await pair(make_stack, redis_server)
    client = await b.connect("hole", "u1")
    await client.wait_state(lambda s: True)
    r = aioredis.Redis.from_url(redis_server.url)
    keys = Keys.of("bridge", "hole")
    await r.hincrby(keys.meta, "seq", 5)  # five seqs that never reach the Stream
    await r.aclose()
    await backplane(a).publish("hole", {"after": "hole"}, None)
    assert await client.closed(5) == 1012
    assert any(m.get("type") == "reconnect" for m in client.received)
    again = await b.connect("hole", "u1", **client.resume_params())
    assert again.welcome_msg["resumed"] is False
    # the pushed state, or the app's own if the poller published it since
    await again.wait_state(lambda s: s == {"after": "hole"} or "users" in s)
    resyncs = {
        r: backplane(b).metrics.backplane_resyncs.labels(r)._value.get()
        for r in ("gap", "epoch", "local")
    }
    assert resyncs["gap"] >= 1, resyncs


async def test_redis_losing_its_data_starts_a_new_epoch(make_stack, redis_server):
    a, b = await pair(make_stack, redis_server)
    first = await a.connect("flush", "u1")
    await first.wait_state(lambda s: True)
    old_epoch = first.welcome_msg["epoch"]
    r = aioredis.Redis.from_url(redis_server.url)
    await r.flushall()
    await r.aclose()
    await backplane(b).publish("flush", {"new": 1}, None)  # any publish makes a new epoch
    assert await first.closed(5) == 1012
    again = await a.connect("flush", "u1", **first.resume_params())
    assert again.welcome_msg["resumed"] is False and again.welcome_msg["epoch"] != old_epoch
    await again.wait_state(lambda s: "users" in s or s == {"new": 1})


async def test_an_instance_that_cannot_reach_redis_refuses_new_sessions(make_stack, redis_server):
    a, _ = await pair(make_stack, redis_server)
    await a.connect("known", "u1")
    redis_server.kill()
    await eventually(lambda: not backplane(a).healthy, 5)
    async with a.http.get(a.url("/readyz")) as resp:
        assert resp.status == 503 and (await resp.json())["backplane"]["healthy"] is False
    refused = await a.connect("unknown", "u1", expect_welcome=False)
    assert await refused.closed(5) == 1013
    rejected = a.bridge.metrics.connections_rejected.labels("websocket", "backplane")
    assert rejected._value.get() == 1
    await redis_server.start()
    await eventually(lambda: backplane(a).healthy, 10)
    await a.connect("unknown", "u1")


async def test_the_primary_is_found_through_sentinel(make_stack, redis_server, tmp_path):
    from tests.cluster import free_port, wait_port

    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor poker 127.0.0.1 {redis_server.port} 1\n"
    )
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                            stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        await wait_port(port, what="redis sentinel")
        stack = await make_stack({"backplane": {
            "kind": "redis", "url": "redis://127.0.0.1:1/2",  # the host is not used, the db is
            "sentinel": {"hosts": [f"127.0.0.1:{port}"], "service": "poker"},
        }})  # fmt: skip
        client = await stack.connect("sentinel", "u1")
        await client.wait_state(lambda s: True)
        r = aioredis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/2")
        assert await r.exists(Keys.of("bridge", "sentinel").log)
        await r.aclose()
        await client.close()
        # its stop closes its connections to the sentinel too (they were left to
        # the garbage collector: CI saw their ResourceWarnings in a later test)
        bp = backplane(stack)
        sentinels = bp.redis.connection_pool.sentinel_manager.sentinels
        pools = [s.connection_pool for s in sentinels]
        assert any(c.is_connected for p in pools for c in p._available_connections)
        await bp.stop()
        assert not any(c.is_connected for p in pools
                       for c in [*p._available_connections, *p._in_use_connections])  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_certs(d) -> None:
    """A CA and a server certificate for 127.0.0.1 (openssl, in ``d``)."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=bridge-test-ca")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "ext.cnf")  # fmt: skip


async def test_tls_to_redis_with_a_verified_certificate(make_stack, tmp_path):
    from tests.cluster import free_port, wait_port

    make_certs(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.pem", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no", "--save", "",
         "--dir", str(tmp_path)],
        cwd=tmp_path, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_port(port, what="redis-server (TLS)")
        url = f"rediss://127.0.0.1:{port}/0"
        stack = await make_stack({"backplane": {
            "kind": "redis", "url": url, "tls": {"ca_file": str(tmp_path / "ca.pem")},
        }})  # fmt: skip
        client = await stack.connect("tls", "u1")
        await client.wait_state(lambda s: True)
        await eventually(lambda: backplane(stack).healthy)  # after its first round
        # a certificate from a CA we were not told to trust: never ready
        (tmp_path / "other").mkdir()
        make_certs(tmp_path / "other")
        wrong = await make_stack({"backplane": {
            "kind": "redis", "url": url, "tls": {"ca_file": str(tmp_path / "other" / "ca.pem")},
        }})  # fmt: skip
        await asyncio.sleep(1.5)
        assert not backplane(wrong).healthy
        async with wrong.http.get(wrong.url("/readyz")) as r:
            assert r.status == 503
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_a_session_dropped_and_opened_again_is_still_followed(make_stack, redis_server):
    a, b = await pair(make_stack, redis_server, presence={"grace": "100ms"})
    for _ in range(3):  # drop (last client gone, grace over) and open again, quickly
        c = await b.connect("again", "u1")
        await c.close()
        await eventually(lambda: "again" not in b.bridge.sessions, 5)
    c = await b.connect("again", "u1")
    await c.wait_state(lambda s: True)
    assert "bridge:{again}:events" in backplane(b)._subscribed
    seq = await backplane(a).publish("again", {"n": 1}, None)
    # through pub/sub, well before the once-a-round safety net (1 s) would catch up
    await c.wait_state(lambda s: s == {"n": 1}, timeout=0.5)
    assert c.stream[-1]["seq"] == seq


async def test_admin_shows_which_instance_polls_a_session(make_stack, redis_server):
    a, b = await pair(make_stack, redis_server, admin={"token": "adm"})
    await a.connect("adm", "u1")
    await b.connect("adm", "u2")
    polls = []
    for stack in (a, b):
        async with stack.http.get(stack.url("/bridge/admin/sessions/adm"),
                                  headers={"Authorization": "Bearer adm"}) as r:  # fmt: skip
            assert r.status == 200
            polls.append((await r.json())["upstream"]["pollsHere"])
    assert sorted(polls) == [False, True]  # one lease, one poller


async def test_a_command_gate_holder_that_died_is_dropped(make_stack, redis_server):
    a, _ = await pair(make_stack, redis_server)
    client = await a.connect("gated", "u1")
    bp = backplane(a)
    k = Keys.of(bp.cfg.prefix, "gated")
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        await eventually_async(lambda: r.zcard(k.gate), 0)  # the join has left the gate
        # an instance took the session's gate and died: it never renews nor releases it
        assert await bp.scripts.gate(k, token="dead:1", limit=1, keep_ms=2000, ttl_ms=60_000)
        started = time.monotonic()
        ack = await client.command("vote", {"vote": 3}, timeout=10)
        waited = time.monotonic() - started
        assert ack["status"] == "ok", ack
        assert 1.5 <= waited <= 4.0, waited  # it waited for the dead holder's place to lapse
        await eventually_async(lambda: r.zcard(k.gate), 0)  # nothing left behind
        assert await r.zcard(k.gate_alive) == 0
    finally:
        await r.aclose()
    await client.close()


async def test_a_slow_command_keeps_its_place_in_the_gate(make_stack, redis_server):
    a, b = await pair(make_stack, redis_server, upstream={"timeout": "6s"})
    ca = await a.connect("slow", "u1")
    cb = await b.connect("slow", "u2")
    async with a.http.post(a.backend_server.make_url("/_demo/faults"), json={
            "stall": 4.0, "stallPaths": ["/api/sessions/slow/votes/u1"]}) as r:  # fmt: skip
        assert r.status == 200
    first = asyncio.ensure_future(ca.command("vote", {"vote": 1}, timeout=10))
    await asyncio.sleep(0.3)
    second = await cb.command("vote", {"vote": 2}, timeout=10)
    assert (await first)["status"] == "ok" and second["status"] == "ok"
    # u2's vote reached the app after u1's was done (4 s upstream), though a place in
    # the gate lapses after 3 s unless its holder renews it
    assert [c["path"].rsplit("/", 1)[1] for c in a.commands("/votes/")] == ["u1", "u2"]
    await ca.close()
    await cb.close()


async def eventually_async(fetch, expected, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while (value := await fetch()) != expected:
        assert time.monotonic() < deadline, f"{value} != {expected}"
        await asyncio.sleep(0.05)


async def test_captured_values_are_kept_exactly_as_they_were(make_stack, redis_server):
    a, b = await pair(make_stack, redis_server)
    client = await a.connect("vals", "u1")
    session = a.bridge.sessions["vals"]
    values = {"appId": 1234567890123456789, "roles": [], "meta": {}, "f": 0.1, "s": "é\n"}
    shared = {"round": {"id": 2**62, "tags": []}}
    await backplane(a).remember(session, "u1", values, shared)
    other = await b.connect("vals", "u1")  # the same user through the other instance
    found = await backplane(b).context(b.bridge.sessions["vals"], "u1")
    assert found == (values, shared)
    # the user gone (explicit leave): their values go with them, the session's stay
    assert (await other.command("leave"))["status"] == "ok"
    r = aioredis.Redis.from_url(redis_server.url)
    try:
        k = Keys.of(backplane(a).cfg.prefix, "vals")
        assert await r.exists(k.values("u1")) == 0
        assert await r.hlen(k.context) == 1
    finally:
        await r.aclose()
    await client.close()
    await other.close()


async def test_a_user_joining_on_another_instance_is_not_refused_as_unknown(
    make_stack, redis_server
):
    # the app creates a session with its first join: until that join is done, the
    # state route answers 404 (an unknown session), but the user is joining already
    a, b = await pair(make_stack, redis_server, upstream={"timeout": "4s"})
    async with a.http.post(a.backend_server.make_url("/_demo/faults"), json={
            "stall": 1.5, "stallPaths": ["/api/sessions/fresh/join"]}) as r:  # fmt: skip
        assert r.status == 200
    first = asyncio.ensure_future(a.connect("fresh", "u1"))
    await asyncio.sleep(0.4)  # u1 claimed on a, its join at the app
    second = await b.connect("fresh", "u1")  # the same user on b: not refused 4404
    assert second.welcome_msg["type"] == "welcome"
    client = await first
    assert len(a.commands("/join")) == 1  # one join for the user, from a
    await client.close()
    await second.close()


async def test_a_call_fired_just_before_stop_is_closed_not_left_unawaited(make_stack, redis_server):
    # Redis lost right before a stop: the health change fires "drop the stale
    # connections", and the stop cancels that task before its first step. The call
    # it wraps must be closed then (seen in CI as "coroutine ... never awaited").
    a = await make_stack({"backplane": {"kind": "redis", "url": redis_server.url}})
    bp = backplane(a)
    ran: list[int] = []

    async def call() -> None:
        ran.append(1)

    pending = call()
    bp._fire(pending, "a call")
    await bp.stop()
    assert ran == []  # it never ran ...
    assert pending.cr_frame is None  # ... and it was closed, not left pending


def test_a_stream_entrys_id_dates_the_change_for_the_delivery_latency():
    from bridge.backplane.redis.backplane import _seen_at

    now_ms = int(time.time() * 1000)
    seen = _seen_at(f"{now_ms - 250}-3")
    assert seen is not None and 0.2 < time.monotonic() - seen < 1.0
    ahead = _seen_at(f"{now_ms + 60_000}-0")  # Redis' clock ahead of ours: not negative
    assert ahead is not None and 0 <= time.monotonic() - ahead < 0.5
    assert _seen_at("not-an-id") is None


async def test_a_stop_after_redis_died_leaves_no_socket_open(make_stack, redis_server):
    # Redis gone first (as when it is stopped before the bridge): the bridge's stop
    # still closes every connection it had (seen in CI as ResourceWarnings of
    # redis connections, sockets and transports, garbage-collected in a later test)
    import gc
    import warnings

    a, b = await pair(make_stack, redis_server)
    clients = [await a.connect("gone", "u1"), await b.connect("gone", "u2")]
    redis_server.kill()
    await asyncio.sleep(0.1)
    for c in clients:
        await c.close()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for stack in (a, b):
            await stack.close()
        gc.collect()
    leaks = [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)]
    assert leaks == []


async def test_after_a_stop_no_call_opens_a_connection(make_stack, redis_server):
    # a request handler that finishes after the stop (cancelled late by the server)
    # would otherwise open a new connection that nobody closes (seen in CI as
    # ResourceWarnings of redis connections garbage-collected in a later test)
    import redis.exceptions

    a = await make_stack({"backplane": {"kind": "redis", "url": redis_server.url}})
    bp = backplane(a)
    await bp.stop()
    with pytest.raises(redis.exceptions.ConnectionError):
        await bp.redis.ping()
    pool = bp.redis.connection_pool
    assert not pool._available_connections and not pool._in_use_connections
