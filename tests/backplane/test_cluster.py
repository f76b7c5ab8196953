"""Several bridge processes on one Redis behind real nginx (round-robin, no
stickiness): one stream per session whatever the instance, commands applied
once, one upstream poller per session, and an instance or Redis dying."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from bridge.client import BridgeClient, CommandFailed
from tests.cluster import Cluster


async def ready(cluster: Cluster) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as http:
        out = []
        for inst in cluster.instances:
            async with http.get(inst.url + "/readyz") as r:
                out.append({**(await r.json()), "http": r.status})
        return out


async def ws(http: aiohttp.ClientSession, base: str, session: str, user: str, **params: Any):
    from tests.conftest import WSClient

    query = {"sessionId": session, "userId": user, **{k: str(v) for k, v in params.items()}}
    sock = await http.ws_connect(base + "/api/websocket", params=query, max_msg_size=0)
    client = WSClient(sock, session, user, params)
    await client.welcome()
    return client


def all_voted(n: int) -> Any:
    return lambda s: len(s.get("users", [])) == n and all(u["voted"] for u in s["users"])


def contiguous(stream: list[dict[str, Any]]) -> bool:
    seqs = [m["seq"] for m in stream]
    return seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True


async def test_clients_on_different_instances_see_one_stream(make_cluster):
    cluster = await make_cluster(3)
    async with aiohttp.ClientSession() as http:
        clients = [await ws(http, cluster.url, "one", f"u{i}") for i in range(6)]
        spread = [r["connections"] for r in await ready(cluster)]
        assert all(n >= 1 for n in spread), spread  # round-robin put clients everywhere
        assert len({c.welcome_msg["epoch"] for c in clients}) == 1
        for i, c in enumerate(clients):
            ack = await c.command("vote", {"vote": str(i)})
            assert ack["status"] == "ok", ack
        for c in clients:
            await c.wait_state(all_voted(6), timeout=10)
        # the same seq is the same message on every instance, in one order
        by_seq: dict[int, Any] = {}
        for c in clients:
            assert contiguous(c.stream), [m["seq"] for m in c.stream]
            for m in c.stream:
                assert by_seq.setdefault(m["seq"], (m["type"], m["payload"])) == (
                    m["type"], m["payload"],
                )  # fmt: skip
        # a client that drops comes back through nginx on another instance and resumes
        mover = clients[0]
        params = mover.resume_params()
        await mover.close()
        await clients[1].command("reveal")
        await clients[1].wait_state(lambda s: s.get("revealed") is True, 10)
        back = await ws(http, cluster.url, "one", "u0", **params)
        assert back.welcome_msg["resumed"] is True, back.welcome_msg
        await back.wait_state(lambda s: s.get("revealed") is True, 10)
        assert back.stream[0]["seq"] == params["lastSeq"] + 1, back.stream[:2]
        assert contiguous(back.stream)
        for m in back.stream:
            assert by_seq.get(m["seq"], (m["type"], m["payload"])) == (m["type"], m["payload"])
        for c in [back, *clients[1:]]:
            await c.close()


def votes(cluster: Cluster, user: str) -> list[dict[str, Any]]:
    return [c for c in cluster.backend.commands if c["path"].endswith(f"/votes/{user}")]


async def test_a_command_resent_to_another_instance_is_applied_once(make_cluster):
    cluster = await make_cluster(2)
    first, second = (i.url for i in cluster.instances)
    async with aiohttp.ClientSession() as http:
        a = await ws(http, first, "once", "u1")
        ack = await a.command("vote", {"vote": "8"}, id="v-1")
        assert ack["status"] == "ok"
        # the ack was lost with the connection: the client re-sends on another instance
        params = a.resume_params()
        a.abort()
        b = await ws(http, second, "once", "u1", **params)
        assert b.welcome_msg["resumed"] is True
        again = await b.command("vote", {"vote": "8"}, id="v-1")
        assert again == ack
        assert len(votes(cluster, "u1")) == 1
        # sent to both at once while the upstream is slow: one forward, one ack for both
        c = await ws(http, first, "once", "u1", **b.resume_params())
        async with http.post(cluster.backend_url + "/_demo/faults",
                             json={"stall": 0.5, "stallRatio": 1.0}) as r:  # fmt: skip
            assert r.status == 200
        acks = await asyncio.gather(
            b.command("vote", {"vote": "13"}, id="v-2"), c.command("vote", {"vote": "13"}, id="v-2")
        )
        assert acks[0] == acks[1] and acks[0]["status"] == "ok", acks
        assert [x["body"]["vote"] for x in votes(cluster, "u1")] == ["8", "13"]
        for x in (b, c):
            await x.close()


async def test_one_upstream_poller_per_session_across_three_instances(make_cluster):
    cluster = await make_cluster(3)
    sessions = [f"many{i}" for i in range(5)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        clients = []
        for s in sessions:
            clients += await asyncio.gather(*(ws(http, cluster.url, s, f"u{j}") for j in range(30)))
        for c in clients:
            await c.wait_state(lambda s: len(s.get("users", [])) == 30, timeout=20)
        spread = [r["connections"] for r in await ready(cluster)]
        assert sorted(spread) == [50, 50, 50], spread  # round-robin, no stickiness
        before = dict(cluster.backend.state_requests)
        window = 3.0
        await asyncio.sleep(window)
        polls = {s: cluster.backend.state_requests[s] - before.get(s, 0) for s in sessions}
        every = 0.2  # FAST: upstream.state.every
        # one poller is window/every = 15 requests; a poller per instance would be 45
        assert all(window / every - 4 <= n <= window / every + 4 for n in polls.values()), polls
        r = aioredis.Redis.from_url(cluster.redis.url)
        holders = [await r.get(f"bridge:{{{s}}}:lease") for s in sessions]
        await r.aclose()
        assert all(h is not None for h in holders), holders
        leases = [x["backplane"]["leases"] for x in await ready(cluster)]
        assert sum(leases) == 5, leases
        for c in clients:
            await c.close()


async def lease_holder(cluster: Cluster, session: str) -> str | None:
    r = aioredis.Redis.from_url(cluster.redis.url)
    try:
        value = await r.get(f"bridge:{{{session}}}:lease")
    finally:
        await r.aclose()
    return value.decode() if value else None


async def python_clients(
    cluster: Cluster, http: aiohttp.ClientSession, session: str, n: int
) -> tuple[list[BridgeClient], dict[str, list[tuple[str | None, int]]], list[dict[str, Any]]]:
    """``n`` Python clients of ``session`` through the load balancer, connected;
    with the (epoch, seq) of every stream message each saw, and every welcome
    after the first ones."""
    clients = [
        BridgeClient(cluster.url, session, f"u{i}", http=http, transports=("websocket",))
        for i in range(n)
    ]
    seen: dict[str, list[tuple[str | None, int]]] = {c.user_id: [] for c in clients}
    welcomes: list[dict[str, Any]] = []
    for c in clients:
        c.on_session = lambda state, seq, c=c: seen[c.user_id].append((c.epoch, seq))
        c.on_presence = lambda online, seq, c=c: seen[c.user_id].append((c.epoch, seq))
        c.on_connect = welcomes.append
    await asyncio.gather(*(c.connect(timeout=20) for c in clients))
    welcomes.clear()
    return clients, seen, welcomes


def assert_never_backwards(seen: dict[str, list[tuple[str | None, int]]]) -> None:
    """Within an epoch no client saw a seq twice or going backwards."""
    for user, stream in seen.items():
        for (e1, s1), (e2, s2) in zip(stream, stream[1:], strict=False):
            assert e1 != e2 or s2 > s1, f"{user}: seq {s2} after {s1} in epoch {e1}"


async def test_kill_9_of_the_lease_holder_moves_the_session_and_loses_nothing(make_cluster):
    cluster = await make_cluster(3)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        clients, seen, welcomes = await python_clients(cluster, http, "k9", 6)
        holder = await lease_holder(cluster, "k9")
        assert holder is not None  # taken by the first instance a client reached
        pid = int(holder.split(":")[1])
        victim = next(i for i in cluster.instances if i.proc is not None and i.proc.pid == pid)
        acked: list[str] = []

        unknown: list[str] = []  # upstream when their instance died: answered, not re-sent

        async def vote_loop(c: BridgeClient, rounds: int) -> None:
            for n in range(rounds):
                value = f"{c.user_id}:{n}"
                try:
                    ack = await asyncio.wait_for(c.send_vote(value), 30)
                except CommandFailed as exc:
                    assert exc.code == "upstream_unavailable", exc
                    unknown.append(value)
                else:
                    assert ack["status"] == "ok", ack
                    acked.append(value)
                await asyncio.sleep(0.05)

        voting = asyncio.gather(*(vote_loop(c, 30) for c in clients))
        await asyncio.sleep(0.5)
        killed_at = time.monotonic()
        victim.kill9()
        # the lease moves to a live instance within a lease period (1.5 s) and a round
        new_holder = None
        while time.monotonic() - killed_at < 6:
            new_holder = await lease_holder(cluster, "k9")
            if new_holder not in (None, holder):
                break
            await asyncio.sleep(0.1)
        assert new_holder not in (None, holder), new_holder
        moved_in = time.monotonic() - killed_at
        await voting
        heartbeats_before = len([c for c in cluster.backend.commands if "/heartbeat" in c["path"]])
        await asyncio.sleep(2.5)  # FAST keep-alive every 1 s: the new holder sends them
        heartbeats = len([c for c in cluster.backend.commands if "/heartbeat" in c["path"]])
        assert heartbeats - heartbeats_before >= 6, (heartbeats_before, heartbeats)
        # every acked vote was applied exactly once, and every client converged
        applied = [c["body"]["vote"] for c in cluster.backend.commands if "/votes/" in c["path"]]
        # at most once: none twice; every ok exactly once; an unknown outcome at most once
        assert len(applied) == len(set(applied)), sorted(applied)
        assert sorted(set(applied) - set(unknown)) == sorted(acked), set(applied) ^ set(acked)
        # only commands in flight on the killed instance (one per client at most)
        assert len(acked) + len(unknown) == 6 * 30 and len(unknown) <= 6, unknown
        view = cluster.backend.sessions["k9"].view()
        async with asyncio.timeout(10):
            while not all(c.state == view for c in clients):
                await asyncio.sleep(0.05)
        assert_never_backwards(seen)
        # the killed instance's clients came back on the others and resumed
        assert welcomes and all(w["resumed"] for w in welcomes), welcomes
        # no user left: the grace covered the move
        assert not [c for c in cluster.backend.commands if c["path"].endswith("/leave")]
        print(f"\nlease moved {moved_in:.2f}s after kill -9")
        for c in clients:
            await c.close()


async def all_ready(cluster: Cluster, want: int, timeout: float) -> float:
    started = time.monotonic()
    while True:
        statuses = [r["http"] for r in await ready(cluster)]
        if all(s == want for s in statuses):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, statuses
        await asyncio.sleep(0.1)


async def test_redis_killed_and_restarted_degrades_then_recovers(make_cluster):
    cluster = await make_cluster(2)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        clients, seen, _ = await python_clients(cluster, http, "rr", 4)
        before = clients[0].epoch
        cluster.redis.kill()
        unready = await all_ready(cluster, 503, 10)
        # connected clients stay connected, and their commands still reach the app once
        for c in clients:
            ack = await asyncio.wait_for(c.send_vote(f"{c.user_id}:outage"), 10)
            assert ack["status"] == "ok", ack
        assert all(c.get_state()["isConnected"] for c in clients)
        # ... and each instance delivers the app's state to its own clients meanwhile
        async with asyncio.timeout(10):
            while not all(c.state and all_voted(4)(c.state) for c in clients):
                await asyncio.sleep(0.05)
        await cluster.redis.start()  # same port, no data: the worst case
        recovered = await all_ready(cluster, 200, 15)
        ack = await asyncio.wait_for(clients[1].send_reveal(), 10)
        assert ack["status"] == "ok"
        view = cluster.backend.sessions["rr"].view()
        async with asyncio.timeout(15):
            while not all(c.state == view and c.get_state()["isConnected"] for c in clients):
                await asyncio.sleep(0.05)
                view = cluster.backend.sessions["rr"].view()
        assert view["revealed"] is True
        # the log was lost with Redis' data: a new epoch, so every client was reset once
        assert all(c.epoch != before for c in clients)
        applied = [x["body"]["vote"] for x in cluster.backend.commands if "/votes/" in x["path"]]
        assert sorted(applied) == sorted(f"{c.user_id}:outage" for c in clients)
        assert_never_backwards(seen)
        print(f"\nunready {unready:.2f}s after the kill; ready {recovered:.2f}s after restart")
        for c in clients:
            await c.close()
