from bridge.core.dedupe import Done, New, Pending
from bridge.core.hub import HubSettings, SessionHub, state_digest
from bridge.core.replay import Reset, Resumed


def hub(**kw):
    return SessionHub("s1", "E", HubSettings(**kw))


def test_first_client_joins_and_presence_is_broadcast():
    h = hub(grace=5.0, keepalive=None)
    assert h.needs_join("u1")
    a = h.attach("c1", "u1", None, None, 0.0)
    assert a.backlog == Reset([], "fresh") and a.head == 0
    assert a.presence.message == {"type": "presence", "seq": 1, "payload": {"online": ["u1"]}}
    assert not h.needs_join("u1")
    b = h.attach("c2", "u1", "E", 1, 0.0)
    assert b.presence is None and b.backlog == Resumed([]) and b.head == 1
    assert h.epoch == "E"


def test_state_changes_only_when_content_changes():
    h = hub()
    e = h.state({"a": 1, "b": [1, 2]}, 0.0)
    assert e is not None and e.seq == 1
    assert h.state({"b": [1, 2], "a": 1}, 1.0) is None
    assert h.state({"a": 2}, 2.0).seq == 2
    assert state_digest({"x": 1}) == state_digest({"x": 1})


def test_grace_leave_tick_and_idle():
    h = hub(grace=5.0, keepalive=2.0)
    h.attach("c1", "u1", None, None, 0.0)
    assert not h.idle
    h.detach("c1", 1.0)
    assert h.next_deadline() == 2.0
    t = h.tick(2.0)
    assert t.keepalive == ["u1"] and t.left == [] and t.presence is None
    t = h.tick(6.0)
    assert t.left == ["u1"]
    assert t.presence.message["payload"] == {"online": []}
    assert h.idle


def test_explicit_leave():
    h = hub()
    h.attach("c1", "u1", None, None, 0.0)
    e = h.leave("u1", 1.0)
    assert e is not None and e.message["payload"] == {"online": []}
    assert h.leave("u1", 1.0) is None
    assert h.needs_join("u1")


def test_commands_are_deduplicated():
    h = hub()
    assert h.command("u1", "1", 0.0) == New()
    assert h.command("u1", "1", 0.0) == Pending()
    ack = {"type": "ack", "id": "1", "status": "ok"}
    h.command_done("u1", "1", ack, 1.0)
    assert h.command("u1", "1", 2.0) == Done(ack)
    assert h.command("u1", "2", 2.0) == New()
    h.command_abandoned("u1", "2")
    assert h.command("u1", "2", 2.0) == New()


def test_a_mirror_hub_appends_no_presence_of_its_own():
    h = hub(mirror=True, keepalive=None, grace=1.0)
    attached = h.attach("c1", "u1", None, None, 0.0)
    assert attached.presence is None and h.log.head == 0
    assert h.presence.is_present("u1")
    assert h.leave("u1", 0.5) is None and not h.presence.is_present("u1")
    h.attach("c2", "u2", None, None, 1.0)
    h.detach("c2", 1.0)
    tick = h.tick(3.0)
    assert tick.left == ["u2"] and tick.presence is None and h.log.head == 0
    log = h.log
    from bridge.core.replay import ReplayLog

    assert h.state({"v": 1}, 3.0) is not None and h.state({"v": 1}, 3.0) is None
    other = ReplayLog("F", max_messages=10, max_bytes=1000, max_age=10)
    h.replace_log(other)
    assert h.log is other and h.epoch == "F" and log is not other
    assert h.state({"v": 1}, 4.0) is not None  # the new log has no state yet


# -- exact values: the digest (shared through Redis between instances), rejoin


def test_state_digest_is_blake2b_128_of_compact_key_sorted_json():
    import hashlib

    payload = {"b": [1, {"c": None}], "a": "é"}
    text = '{"a":"\\u00e9","b":[1,{"c":null}]}'
    digest = state_digest(payload)
    assert digest == hashlib.blake2b(text.encode("ascii"), digest_size=16).digest()
    assert len(digest) == 16
    assert digest.hex() == "ea9c8c5950639f92d5ba057f5ecae57b"


def test_state_digest_takes_a_value_json_cannot_encode_as_its_str():
    from decimal import Decimal

    assert state_digest({"v": Decimal("1.50")}) == state_digest({"v": "1.50"})
    assert state_digest([b"x"]) == state_digest(["b'x'"])


def test_the_hub_keeps_its_session_id():
    assert hub().session_id == "s1"
    assert SessionHub("other", "E", HubSettings()).session_id == "other"


def test_rejoin_after_an_explicit_leave_joins_again_with_a_fresh_keepalive():
    h = hub(grace=5.0, keepalive=2.0)
    h.attach("c1", "u1", None, None, 0.0)
    assert h.leave("u1", 1.0).message["payload"] == {"online": []}
    assert h.next_deadline() is None
    entry = h.rejoin("c1", "u1", 3.0)
    assert entry.message == {"type": "presence", "seq": 3, "payload": {"online": ["u1"]}}
    assert h.next_deadline() == 5.0  # keep-alive from the rejoin
    assert h.rejoin("c1", "u1", 4.0) is None  # already present: nothing to announce
    tick = h.tick(5.0)
    assert tick.keepalive == ["u1"] and tick.left == [] and tick.presence is None
