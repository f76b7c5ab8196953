"""A session's life through the real runtime, as a Hypothesis state machine.

Clients connect (their handshake may fail before its transport starts), drop,
resume, send commands and explicit leaves; the app answers each request
whenever the machine says — ok, refused, failed — or its caller is cancelled
at that await (the handshake timeout, a connection handler ending), with or
without the app having applied it. Whatever happens:

- the limits' books balance at every step (slots reserved = handshakes in
  progress; connections per address = live + reserved);
- a command's pending ack is always known to the de-dupe window, and every
  repeat of it gets the same ack;
- no task ever dies unobserved (``bridge_task_errors_total`` stays 0);
- and once everyone has gone and the graces are over: the session is
  dropped, nothing is reserved, and **the app has nobody left joined** — every
  join that reached the app got its one leave (no ghost users).

The app here is in memory (``App``): each request waits on a future the
machine resolves, which is what makes "cancel at any await" reachable.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bridge.config import config_from_dict
from bridge.core.breaker import CircuitBreaker
from bridge.exceptions import UpstreamFailed, UpstreamRejected
from bridge.metrics import Metrics
from bridge.protocol.codecs import JSON
from bridge.runtime import Admission, Bridge, ConnectRequest
from bridge.tasks import TaskOwner
from bridge.upstream.client import Response, StateResult

GRACE = 0.05
USERS = ["u1", "u2", "u3"]
IP = "192.0.2.1"

CFG = config_from_dict(
    {
        "upstream": {"url": "http://127.0.0.1:9", "keepalive": None, "state": {"every": "10s"}},
        "presence": {"grace": f"{int(GRACE * 1000)}ms"},
        "security": {"token_secret": "life"},
        "limits": {"max_connections_per_ip": 100000},
    }
)


@dataclass(eq=False)
class Call:
    name: str
    user: str
    future: asyncio.Future[Response]
    applied: bool = False


class App:
    """The legacy app: who is joined, and every request held until answered."""

    def __init__(self) -> None:
        self.breaker = CircuitBreaker(failures=10**6, recovery=1.0)
        self.calls: list[Call] = []
        self.joined: set[str] = set()
        self.votes = 0

    # the upstream client's interface, as the runtime uses it
    async def request(self, name: str, route: Any, ctx: Any, headers: Any = None) -> Response:
        call = Call(name, str(ctx["userId"]), asyncio.get_running_loop().create_future())
        self.calls.append(call)
        try:
            return await call.future
        finally:
            if call in self.calls:
                self.calls.remove(call)

    async def fetch_state(
        self, name: str, route: Any, ctx: Any, forwarded: Any, etag: Any, last_modified: Any
    ) -> StateResult:
        return StateResult(True, {"joined": sorted(self.joined), "votes": self.votes})

    def breaker_state(self) -> str:
        return "closed"

    def reconfigure(self, cfg: Any) -> None:
        return None

    def stop_starting(self) -> None:
        return None

    def apply(self, call: Call) -> None:
        """What the app does with a request it acts on."""
        call.applied = True
        if call.name == "join":
            self.joined.add(call.user)
        elif call.name == "leave":
            self.joined.discard(call.user)
        elif call.name == "vote":
            self.votes += 1


class Conn:
    """A client's transport, in memory (the runtime's Connection protocol)."""

    transport = "websocket"
    codec = JSON
    sends_pings = False
    rx_timeout = False

    def __init__(self, client_id: str, user: str) -> None:
        self.client_id = client_id
        self.session_id = "life"
        self.user_id = user
        self.params: dict[str, str] = {}
        self.headers: dict[str, str] = {}
        self.last_rx = time.monotonic()
        self.busy = False
        self.closed = False
        self.next_ping = 0.0
        self.tasks = TaskOwner("connection")
        self.inbox: list[Any] = []
        self.got: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] | None = None

    def start(self, welcome: dict[str, Any], backlog: list[Any]) -> None:
        self.welcome = welcome

    def deliver(self, entry: Any) -> bool:
        return not self.closed

    def send(self, message: dict[str, Any]) -> None:
        self.got.append(message)

    def close(self, code: int, reason: str, label: str | None = None) -> None:
        self.closed = True


@dataclass
class Handshake:
    task: asyncio.Task[None]
    user: str
    #: the transport fails to start after the admission (ws.prepare() raising)
    fails: bool = False
    conn: Conn | None = field(default=None)


class SessionLife(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.app = App()
        self.metrics = Metrics()
        self.bridge = Bridge(CFG, self.app, self.metrics)  # type: ignore[arg-type]
        self.run(self._start())
        self.handshakes: list[Handshake] = []
        self.conns: list[Conn] = []
        self.ids = itertools.count()
        #: command id → the acks its sends got
        self.acks: dict[str, list[dict[str, Any]]] = {}

    async def _start(self) -> None:
        self.bridge.start()

    def run(self, coro: Any) -> Any:
        result = self.loop.run_until_complete(coro)
        self.loop.run_until_complete(asyncio.sleep(0))
        return result

    def settle(self) -> None:
        async def spin() -> None:
            for _ in range(5):
                await asyncio.sleep(0)

        self.loop.run_until_complete(spin())
        for conn in [c for c in self.conns if c.closed]:  # its handler ends: detached
            self.bridge.detach(conn, "client")
            self.conns.remove(conn)

    # ------------------------------------------------------------------ clients
    def _connect(self, user: str, fails: bool, token: str | None, client_id: str | None) -> None:
        req = ConnectRequest("life", user, token, None, None, {}, {})
        hs = Handshake(task=None, user=user, fails=fails)  # type: ignore[arg-type]

        async def handshake() -> None:
            admitted = await self.bridge.admit(req, IP)
            if not isinstance(admitted, Admission):
                return
            try:
                with admitted:
                    await asyncio.sleep(0)  # the transport starting (ws.prepare())
                    if hs.fails:
                        raise ConnectionResetError("the client went away")
                    conn = Conn(admitted.client_id, user)
                    admitted.attach(conn)
                    hs.conn = conn
                    self.conns.append(conn)
            except ConnectionResetError:
                pass  # as aiohttp does with a client gone mid-handshake

        hs.task = self.loop.create_task(handshake())
        self.handshakes.append(hs)
        self.settle()

    @rule(user=st.sampled_from(USERS), fails=st.booleans())
    def connect(self, user: str, fails: bool) -> None:
        self._connect(user, fails, None, None)

    @precondition(lambda self: self.conns)
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        """A client reconnects with its token (the old transport is replaced)."""
        conn = data.draw(st.sampled_from(self.conns))
        assert conn.welcome is not None
        self._connect(conn.user_id, False, conn.welcome["resumeToken"], conn.client_id)

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), hard=st.booleans())
    def drop(self, data: st.DataObject, hard: bool) -> None:
        """The transport ends; ``hard``: its handler is cancelled too (so is its
        command in flight), as when the server stops it."""
        conn = data.draw(st.sampled_from(self.conns))
        conn.closed = True
        self.bridge.detach(conn, "client")
        self.conns.remove(conn)
        if hard:
            self.run(conn.tasks.aclose())
        self.settle()

    @precondition(lambda self: self.conns)
    @rule(data=st.data(), kind=st.sampled_from(["vote", "vote", "leave"]), again=st.booleans())
    def command(self, data: st.DataObject, kind: str, again: bool) -> None:
        conn = data.draw(st.sampled_from(self.conns))
        known = [i for i in self.acks if i.startswith(conn.user_id + ":")]
        if again and known:
            cid = data.draw(st.sampled_from(known))  # a repeat of the same id
        else:
            cid = f"{conn.user_id}:{next(self.ids)}"
            self.acks[cid] = []
        message = {"type": kind, "id": cid, "payload": {"vote": "1"}}

        async def read_frame() -> None:  # what the transport's reader does
            self.bridge.receive(conn, json.dumps(message))

        self.run(read_frame())
        self.settle()

    # ------------------------------------------------------------------ the app answers
    @precondition(lambda self: self.app.calls)
    @rule(data=st.data(), how=st.sampled_from(["ok", "ok", "fail", "refuse", "lose"]))
    def answer(self, data: st.DataObject, how: str) -> None:
        call = data.draw(st.sampled_from(self.app.calls))
        if call.name == "leave" and how in ("fail", "refuse"):
            how = "ok"  # (an app that refuses leaves keeps ghosts: not the bridge's doing)
        if how == "ok":
            self.app.apply(call)
            call.future.set_result(Response(200, {}, {}))
        elif how == "fail":
            call.future.set_exception(UpstreamFailed(f"{call.name}: upstream answered 500"))
        elif how == "refuse":
            call.future.set_exception(UpstreamRejected(f"{call.name}: 409", status=409))
        else:  # the app applied it, and the answer is lost: its caller is cancelled
            self.app.apply(call)
            call.future.cancel()
        self.settle()

    @precondition(lambda self: any(not h.task.done() for h in self.handshakes))
    @rule(data=st.data())
    def handshake_times_out(self, data: st.DataObject) -> None:
        """Cancelled at whatever await it is at (limits.handshake_timeout)."""
        hs = data.draw(st.sampled_from([h for h in self.handshakes if not h.task.done()]))
        hs.task.cancel()
        self.settle()

    @rule()
    def time_passes(self) -> None:
        self.run(asyncio.sleep(GRACE / 2))
        self.settle()

    # ------------------------------------------------------------------ invariants
    @invariant()
    def the_books_balance(self) -> None:
        registry = self.bridge.registry
        running = [h for h in self.handshakes if not h.task.done()]
        assert 0 <= registry.reserved <= len(running)
        assert registry.per_ip.get(IP, 0) == len(registry.connections) + registry.reserved
        for session in registry.by_id.values():
            assert 0 <= session.reserved <= registry.reserved
            assert set(session.conns) <= {c.client_id for c in registry.connections.values()}

    @invariant()
    def pending_acks_are_known(self) -> None:
        for session in self.bridge.registry.by_id.values():
            for user, cid in session.pending:
                records = session.hub.dedupe._records
                assert (user, cid) in records and records[(user, cid)].ack is None

    @invariant()
    def repeats_get_the_same_ack(self) -> None:
        for conn in self.conns:
            for msg in conn.got:
                if msg.get("type") == "ack" and msg["id"] in self.acks:
                    seen = self.acks[msg["id"]]
                    if msg not in seen:
                        seen.append(msg)
        for cid, seen in self.acks.items():
            final = [
                a for a in seen if a.get("error", {}).get("message") != "interrupted; send it again"
            ]
            assert len({json.dumps(a, sort_keys=True) for a in final}) <= 1, (cid, seen)

    @invariant()
    def no_task_died(self) -> None:
        for owner in ("bridge", "session", "connection", "backplane"):
            assert self.metrics.task_errors.labels(owner)._value.get() == 0, owner

    # ------------------------------------------------------------------ the end
    def teardown(self) -> None:
        try:
            for conn in list(self.conns):
                conn.closed = True
            self.settle()
            for _ in range(200):  # the app answers whatever is still waiting
                for call in list(self.app.calls):
                    if not call.future.done():
                        self.app.apply(call)
                        call.future.set_result(Response(200, {}, {}))
                self.settle()
                for conn in list(self.conns):  # handshakes that attached meanwhile
                    conn.closed = True
                self.settle()
                if not self.app.calls and all(h.task.done() for h in self.handshakes):
                    break
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and (self.bridge.sessions or self.app.calls):
                for call in list(self.app.calls):
                    if not call.future.done():
                        self.app.apply(call)
                        call.future.set_result(Response(200, {}, {}))
                self.run(asyncio.sleep(GRACE / 2))
                self.settle()
            registry = self.bridge.registry
            assert self.bridge.sessions == {}, "the session is dropped"
            assert registry.reserved == 0 and registry.per_ip == {}
            assert self.app.joined == set(), f"ghost users at the app: {self.app.joined}"
            self.no_task_died()
        finally:
            self.run(self.bridge.stop())
            self.loop.close()


TestSessionLife = SessionLife.TestCase
TestSessionLife.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
