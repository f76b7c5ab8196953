"""Presence.hold / SessionHub.hold: a user joined upstream whose handshake failed
(issue 11, ghost users) is present in grace, then leaves once."""

from bridge.core.hub import HubSettings, SessionHub
from bridge.core.presence import Presence


def test_a_held_user_is_present_in_grace_then_leaves():
    p = Presence(grace=2.0, keepalive=1.0)
    assert p.hold("u1", 10.0) is True
    assert p.is_present("u1") and p.in_grace("u1") and p.clients_of("u1") == set()
    assert p.live_clients() == 0 and p.online() == ["u1"]
    assert p.next_deadline() == 11.0  # the keep-alive comes first
    due = p.tick(11.0)
    assert due.keepalive == ["u1"] and due.left == []
    due = p.tick(12.0)
    assert due.left == ["u1"] and not p.is_present("u1")
    assert p.tick(100.0).keepalive == []


def test_holding_a_present_user_changes_nothing():
    p = Presence(grace=2.0, keepalive=None)
    p.connect("c1", "u1", 0.0)
    assert p.hold("u1", 1.0) is False
    assert not p.in_grace("u1") and p.clients_of("u1") == {"c1"}
    assert p.next_deadline() is None  # no grace was started for them


def test_a_client_arriving_during_the_hold_ends_the_grace():
    p = Presence(grace=2.0, keepalive=None)
    p.hold("u1", 0.0)
    assert p.next_deadline() == 2.0
    assert p.connect("c1", "u1", 1.0) is False  # already present: no second join
    assert not p.in_grace("u1")
    assert p.tick(5.0).left == []
    assert p.next_deadline() is None


def test_without_keepalives_a_hold_schedules_only_the_grace():
    p = Presence(grace=3.0, keepalive=None)
    p.hold("u1", 1.0)
    assert p.next_deadline() == 4.0
    assert p.tick(3.9).left == [] and p.tick(4.0).left == ["u1"]


def test_the_hub_announces_a_held_user_once():
    hub = SessionHub("s", "e1", HubSettings(grace=1.0, keepalive=None))
    entry = hub.hold("u1", 0.0)
    assert entry is not None and entry.type == "presence"
    assert entry.message["payload"] == {"online": ["u1"]}
    assert hub.hold("u1", 0.5) is None
    assert not hub.idle  # kept for the grace
    assert hub.tick(1.0).left == ["u1"] and hub.idle


def test_a_mirror_hub_holds_without_an_entry():
    hub = SessionHub("s", "e1", HubSettings(grace=1.0, keepalive=None, mirror=True))
    assert hub.hold("u1", 0.0) is None
    assert hub.presence.is_present("u1")


def test_an_explicit_leave_of_a_held_user_cancels_both_timers():
    p = Presence(grace=5.0, keepalive=1.0)
    p.hold("u1", 0.0)
    assert p.next_deadline() == 1.0  # keep-alive, then the grace at 5
    assert p.leave("u1") is True
    assert p.next_deadline() is None
    assert p.tick(10.0).left == [] and p.tick(10.0).keepalive == []
