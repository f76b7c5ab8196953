"""A session hub's whole life, as a Hypothesis state machine.

Clients attach (resuming from any earlier point of the stream, or from none,
or from another epoch) and drop, users leave explicitly, upstream state
arrives, commands begin, finish or are abandoned, and time passes in ticks of
any size, ties included. A plain model next to the hub says what must hold
after every step:

- seqs start at 1 and strictly increase; every entry is the message it names;
- a resume gets every entry after its last_seq, in order, or a Reset holding
  the latest entry of each type: either way the reader ends up with the
  latest of each type, never with a gap;
- a user is present iff they have a live client or are within their grace
  (graces end at the first tick at or after their deadline, and the hub's
  next deadline is never later than that);
- one presence entry per change of who is present, one leave per user who
  became absent;
- a keep-alive goes at most once per user per interval, only to a present
  user, and to every present user whose interval is over;
- a command id is New once, then Pending until it is finished (then Done,
  within the window) or abandoned (then New again).
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bridge.core.dedupe import Done, New, Pending
from bridge.core.hub import HubSettings, SessionHub
from bridge.core.replay import Entry, Reset, Resumed

#: A client id is bound to one user (its resume token says so).
CLIENTS = {"a1": "u1", "a2": "u1", "b1": "u2", "b2": "u2", "c1": "u3"}
USERS = sorted(set(CLIENTS.values()))
COMMAND_IDS = ["1", "2", "3"]
STATES = [{"v": 1}, {"v": 2}, {"w": [1, 2], "v": 1}, {"v": 1, "w": [1, 2]}, {}]

#: whole seconds often (so deadlines tie), any time in between too
short_steps = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.0]), st.floats(0.0, 3.0))
long_steps = st.one_of(st.sampled_from([5.0, 6.0, 10.0, 20.0]), st.floats(3.0, 25.0))


class HubLife(RuleBasedStateMachine):
    SETTINGS = HubSettings(
        max_messages=4,
        max_bytes=100_000,
        max_age=20.0,
        grace=5.0,
        keepalive=3.0,
        dedupe_window=10.0,
    )

    def __init__(self) -> None:
        super().__init__()
        s = self.SETTINGS
        self.hub = SessionHub("s1", "E", s)
        self.now = 0.0
        # the stream: every entry ever appended, by seq
        self.entries: dict[int, tuple[str, Any]] = {}
        self.last_state: Any = None
        # presence
        self.live: dict[str, str] = {}  # client -> user, for live clients
        self.present: set[str] = set()
        self.grace_until: dict[str, float] = {}  # present users with no live client
        self.keepalive_due: dict[str, float] = {}  # present users
        # de-dupe: (user, id) -> None while in flight, else (ack, expires); in expiry order
        self.commands: dict[tuple[str, str], tuple[dict[str, Any], float] | None] = {}
        self.acks = 0

    # ------------------------------------------------------------ the model's helpers
    @property
    def head(self) -> int:
        return max(self.entries, default=0)

    def latest(self, upto: int) -> dict[str, Any]:
        """The reader's state after processing every entry up to ``upto``."""
        state: dict[str, Any] = {}
        for seq in sorted(self.entries):
            if seq <= upto:
                type_, payload = self.entries[seq]
                state[type_] = payload
        return state

    def new_entry(self, entry: Entry | None, type_: str, payload: Any) -> None:
        """``entry`` must be the next one of the stream, of ``type_`` with ``payload``."""
        assert entry is not None
        assert entry.seq == self.head + 1, (entry.seq, self.head)
        assert (entry.type, entry.message) == (
            type_,
            {"type": type_, "seq": entry.seq, "payload": payload},
        )
        self.entries[entry.seq] = (type_, payload)

    def presence_entry(self, entry: Entry | None) -> None:
        self.new_entry(entry, "presence", {"online": sorted(self.present)})

    def user_clients(self, user: str) -> set[str]:
        return {c for c, u in self.live.items() if u == user}

    def expire_commands(self) -> None:
        while self.commands:
            key, record = next(iter(self.commands.items()))
            if record is None or record[1] > self.now:
                break  # in flight, or not over: it and all after it stay
            del self.commands[key]

    # ------------------------------------------------------------ clients and users
    def gone_clients(self) -> list[str]:
        return [c for c in sorted(CLIENTS) if c not in self.live]

    @precondition(gone_clients)
    @rule(fresh=st.booleans(), data=st.data())
    def attach(self, fresh: bool, data: st.DataObject) -> None:
        """A client that is not live attaches (a live one does not attach again)."""
        client = data.draw(st.sampled_from(self.gone_clients()), label="client")
        user = CLIENTS[client]
        head = self.head
        if fresh:
            epoch, last_seq = None, None
        else:
            epoch = data.draw(st.sampled_from(["E", "E", "E", "F"]), label="epoch")
            last_seq = data.draw(st.integers(-1, head + 2), label="last_seq")
        was_present = user in self.present
        assert self.hub.needs_join(user) is not was_present

        attached = self.hub.attach(client, user, epoch, last_seq, self.now)

        assert attached.head == head
        backlog = attached.backlog
        latest = self.latest(head)
        if epoch is None or last_seq is None or epoch != "E" or last_seq > head:
            assert isinstance(backlog, Reset)
            expected = "fresh" if epoch is None else "epoch" if epoch != "E" else "ahead"
            assert backlog.reason == expected
        elif last_seq == head:
            assert backlog == Resumed([])
        if isinstance(backlog, Resumed):
            assert last_seq is not None and 0 <= last_seq <= head
            assert [e.seq for e in backlog.entries] == list(range(last_seq + 1, head + 1))
            state = self.latest(last_seq)
        else:
            assert backlog.reason in ("fresh", "epoch", "expired", "ahead")
            if backlog.reason == "expired":
                assert last_seq is not None and last_seq < head
            # the snapshot: the latest entry of each type, in seq order
            assert [e.seq for e in backlog.entries] == sorted(
                max(s for s, (t, _) in self.entries.items() if t == type_) for type_ in latest
            )
            state = {}
        for e in backlog.entries:
            assert e.message == {"type": e.type, "seq": e.seq, "payload": self.entries[e.seq][1]}
            state[e.type] = e.message["payload"]
        assert state == latest  # up to date, whatever it missed

        self.live[client] = user
        self.grace_until.pop(user, None)
        if was_present:
            assert attached.presence is None
        else:
            self.present.add(user)
            if self.SETTINGS.keepalive is not None:
                self.keepalive_due[user] = self.now + self.SETTINGS.keepalive
            self.presence_entry(attached.presence)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        """A live client's transport goes."""
        client = data.draw(st.sampled_from(sorted(self.live)), label="client")
        self.hub.detach(client, self.now)
        user = self.live.pop(client)
        if not self.user_clients(user):
            self.grace_until[user] = self.now + self.SETTINGS.grace

    @rule(client=st.sampled_from(sorted(CLIENTS)))
    def drop_again(self, client: str) -> None:
        """The transport of a client that is not live goes (again): nothing happens."""
        if client not in self.live:
            self.hub.detach(client, self.now)

    @rule(user=st.sampled_from(USERS))
    def leave(self, user: str) -> None:
        entry = self.hub.leave(user, self.now)
        if user not in self.present:
            assert entry is None
            return
        self.present.discard(user)
        for client in self.user_clients(user):
            del self.live[client]
        self.grace_until.pop(user, None)
        self.keepalive_due.pop(user, None)
        self.presence_entry(entry)

    # ------------------------------------------------------------ time
    @rule(dt=short_steps)
    def tick(self, dt: float) -> None:
        self.advance(dt)

    @rule(dt=long_steps)
    def tick_late(self, dt: float) -> None:
        """A tick long after the last: many timers due at once."""
        self.advance(dt)

    def advance(self, dt: float) -> None:
        self.now += dt
        before = set(self.present)
        tick = self.hub.tick(self.now)

        # graces over: each such user leaves exactly once, earliest deadline first
        gone = {u for u, t in self.grace_until.items() if t <= self.now}
        assert set(tick.left) == gone and len(tick.left) == len(gone)
        deadlines = [self.grace_until[u] for u in tick.left]
        assert deadlines == sorted(deadlines)
        ended = {u: self.grace_until[u] for u in gone}
        for user in gone:
            del self.grace_until[user]
            self.present.discard(user)

        # keep-alives: once per user, to every present user whose interval is over
        interval = self.SETTINGS.keepalive
        assert len(tick.keepalive) == len(set(tick.keepalive))
        assert interval is not None or tick.keepalive == []
        for user in tick.keepalive:
            # never to a user who was not present when it fell due
            assert user in before, user
            assert self.keepalive_due[user] <= self.now
            assert user not in ended or self.keepalive_due[user] <= ended[user], user
        for user in before - gone:
            due = user in self.keepalive_due and self.keepalive_due[user] <= self.now
            assert (user in tick.keepalive) is due, (user, self.keepalive_due.get(user), self.now)
        for user, grace_end in ended.items():  # gone in this tick: sent iff due before
            due = self.keepalive_due.get(user)
            if due is not None and due != grace_end:  # (a tie: whichever was scheduled first)
                assert (user in tick.keepalive) is (due < grace_end), (user, due, grace_end)
        for user in before & set(tick.keepalive):
            assert interval is not None
            self.keepalive_due[user] = self.now + interval
        for user in gone:
            self.keepalive_due.pop(user, None)

        if gone:
            self.presence_entry(tick.presence)
        else:
            assert tick.presence is None
        self.expire_commands()

    # ------------------------------------------------------------ upstream state
    @rule(payload=st.sampled_from(STATES))
    def state(self, payload: dict[str, Any]) -> None:
        entry = self.hub.state(payload, self.now)
        if payload == self.last_state:
            assert entry is None
        else:
            self.new_entry(entry, "session", payload)
            self.last_state = payload

    # ------------------------------------------------------------ commands
    @rule(user=st.sampled_from(USERS), command_id=st.sampled_from(COMMAND_IDS))
    def command(self, user: str, command_id: str) -> None:
        got = self.hub.command(user, command_id, self.now)
        self.expire_commands()
        key = (user, command_id)
        if key not in self.commands:
            assert got == New()
            self.commands[key] = None
        elif self.commands[key] is None:
            assert got == Pending()
        else:
            ack, _ = self.commands[key]
            assert got == Done(ack)

    def in_flight(self) -> list[tuple[str, str]]:
        return [k for k, record in self.commands.items() if record is None]

    @precondition(lambda self: self.in_flight())
    @rule(data=st.data())
    def command_done(self, data: st.DataObject) -> None:
        user, command_id = data.draw(st.sampled_from(self.in_flight()), label="command")
        self.acks += 1
        ack = {"type": "ack", "id": command_id, "status": "ok", "n": self.acks}
        self.hub.command_done(user, command_id, ack, self.now)
        del self.commands[(user, command_id)]  # to the end: the window starts now
        self.commands[(user, command_id)] = (ack, self.now + self.SETTINGS.dedupe_window)

    @precondition(lambda self: self.in_flight())
    @rule(data=st.data())
    def command_abandoned(self, data: st.DataObject) -> None:
        user, command_id = data.draw(st.sampled_from(self.in_flight()), label="command")
        self.hub.command_abandoned(user, command_id)
        del self.commands[(user, command_id)]

    # ------------------------------------------------------------ after every step
    @invariant()
    def stream(self) -> None:
        log = self.hub.log
        assert log.head == self.head and self.hub.epoch == "E"
        snapshot = log.snapshot()
        assert [e.seq for e in snapshot] == sorted(e.seq for e in snapshot)
        assert {e.type: e.message["payload"] for e in snapshot} == self.latest(self.head)

    @invariant()
    def presence(self) -> None:
        p = self.hub.presence
        assert p.online() == sorted(self.present)
        assert p.live_clients() == len(self.live)
        for user in USERS:
            assert p.is_present(user) is (user in self.present)
            assert p.clients_of(user) == self.user_clients(user)
            assert p.in_grace(user) is (user in self.grace_until)
            assert self.hub.needs_join(user) is (user not in self.present)
        # present iff a live client or within grace; a live client's user is present
        assert self.present == set(self.live.values()) | set(self.grace_until)
        assert not set(self.live.values()) & set(self.grace_until)
        assert self.hub.idle is (not self.present and not self.live)

    @invariant()
    def deadlines(self) -> None:
        """The caller sleeps until next_deadline(): never past a grace or keep-alive."""
        pending = [*self.grace_until.values(), *self.keepalive_due.values()]
        deadline = self.hub.next_deadline()
        if not pending:
            assert deadline is None
        else:
            assert deadline == min(pending)

    @invariant()
    def dedupe(self) -> None:
        assert len(self.hub.dedupe) == len(self.commands)


class HubLifeWithoutKeepalive(HubLife):
    """No keep-alives, a tight log (two entries, 200 bytes, 8 s): resets more often."""

    SETTINGS = HubSettings(
        max_messages=2,
        max_bytes=200,
        max_age=8.0,
        grace=2.0,
        keepalive=None,
        dedupe_window=3.0,
    )


#: `make mutation` runs these for most mutants of bridge/core: fewer examples there
#: (its profile is derandomised, so the same ones for every mutant).
_profile = getattr(settings, "get_current_profile_name", lambda: "default")()
_examples = 15 if _profile == "mutation" else 60

TestHubLife = HubLife.TestCase
TestHubLife.settings = settings(max_examples=_examples, stateful_step_count=40, deadline=None)
TestHubLifeWithoutKeepalive = HubLifeWithoutKeepalive.TestCase
TestHubLifeWithoutKeepalive.settings = settings(
    max_examples=_examples * 2 // 3, stateful_step_count=40, deadline=None
)


def test_a_user_gone_by_grace_gets_no_more_keepalives():
    hub = SessionHub("s1", "E", HubLife.SETTINGS)  # grace 5, keep-alive 3
    hub.attach("a1", "u1", None, None, 0.0)
    hub.attach("b1", "u2", None, None, 0.0)
    hub.detach("a1", 1.0)  # u1's grace until 6
    assert hub.tick(3.0).keepalive == ["u1", "u2"]
    assert hub.tick(6.0).left == ["u1"]  # with u1's next keep-alive, which was due at 6 too
    assert hub.tick(9.0).keepalive == ["u2"]  # u2 only: u1 is gone
