from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.replay import ReplayLog, Reset, Resumed
from bridge.protocol.codecs import JSON, MSGPACK


def make(**kw):
    opts = {"max_messages": 100, "max_bytes": 1 << 20, "max_age": 1000.0}
    opts.update(kw)
    return ReplayLog("E", **opts)


def test_seqs_start_at_one_and_increase():
    log = make()
    a = log.append("session", {"v": 1}, 0.0)
    b = log.append("presence", {"online": []}, 0.0)
    assert (a.seq, b.seq, log.head) == (1, 2, 2)
    assert a.message == {"type": "session", "seq": 1, "payload": {"v": 1}}
    assert len(log) == 2 and log.bytes == a.size + b.size


def test_encoded_once_per_codec():
    e = make().append("session", {"v": 1}, 0.0)
    assert e.encoded(JSON) is e.json
    packed = e.encoded(MSGPACK)
    assert e.encoded(MSGPACK) is packed
    assert MSGPACK.decode(packed) == e.message
    frame = e.ws_frame(JSON)
    assert frame is e.ws_frame(JSON)
    assert frame[0] == 0x81 and frame.endswith(e.json)
    assert e.ws_frame(MSGPACK)[0] == 0x82
    assert e.encoded_as("msgpack") is packed
    assert e.encoded_as("json") is e.json
    assert e.encoded_as("cbor") is e.json


def test_resume_gets_exactly_what_follows():
    log = make()
    for i in range(5):
        log.append("session", {"v": i}, 0.0)
    r = log.read("E", 2, 0.0)
    assert isinstance(r, Resumed) and [e.seq for e in r.entries] == [3, 4, 5]
    assert log.read("E", 5, 0.0) == Resumed([])


def test_resets():
    log = make(max_messages=3)
    log.append("presence", {"online": ["u"]}, 0.0)
    for i in range(5):
        log.append("session", {"v": i}, 0.0)
    fresh = log.read(None, None, 0.0)
    assert isinstance(fresh, Reset) and fresh.reason == "fresh"
    assert [e.seq for e in fresh.entries] == [1, 6]
    assert log.read("other", 6, 0.0).reason == "epoch"
    assert log.read("E", 1, 0.0).reason == "expired"
    assert log.read("E", 7, 0.0).reason == "ahead"
    assert [e.seq for e in log.read("E", 3, 0.0).entries] == [4, 5, 6]


def test_latest_of_each_type_survives_trimming_then_is_replaced():
    log = make(max_messages=2)
    p = log.append("presence", {"online": []}, 0.0)
    for i in range(4):
        log.append("session", {"v": i}, 0.0)
    assert log.latest("presence") is p
    assert [e.seq for e in log.snapshot()] == [1, 5]
    evictions = log.evictions
    log.append("presence", {"online": ["u"]}, 0.0)
    assert log.latest("presence").seq == 6
    assert log.evictions > evictions
    assert p not in log.snapshot()


def test_bytes_and_age_bounds():
    log = make(max_bytes=200)
    for i in range(10):
        log.append("session", {"v": "x" * 30, "i": i}, 0.0)
    assert log.bytes <= 200
    aged = make(max_age=10.0)
    aged.append("session", {"v": 1}, 0.0)
    aged.append("session", {"v": 2}, 5.0)
    assert aged.first_seq == 1
    r = aged.read("E", 0, 11.0)
    assert isinstance(r, Reset) and [e.seq for e in r.entries] == [2]
    assert aged.first_seq == 2


def test_empty_log():
    log = make()
    assert log.first_seq == 1
    assert log.read("E", 0, 0.0) == Resumed([])
    assert log.read(None, None, 0.0) == Reset([], "fresh")


ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.sampled_from(["session", "presence"]), st.integers(0, 50)),
        st.tuples(st.just("tick"), st.floats(0, 30), st.just(0)),
        st.tuples(st.just("resume"), st.integers(0, 60), st.booleans()),
        # a mirror of a shared backplane: seqs assigned elsewhere, maybe with holes
        st.tuples(st.just("accept"), st.sampled_from(["session", "presence"]), st.integers(-1, 3)),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    ops,
    st.integers(1, 8),
    st.integers(60, 400),
    st.floats(1.0, 50.0),
)
def test_property_a_resuming_reader_never_sees_a_gap_a_duplicate_or_a_step_back(
    operations, max_messages, max_bytes, max_age
):
    """For any interleaving of appends, trims and resumes, a reader that resumes
    from what it has seen gets exactly the missing seqs in order, or a reset."""
    log = make(max_messages=max_messages, max_bytes=max_bytes, max_age=max_age)
    now = 0.0
    reader_seq = 0  # highest seq the reader has processed (0: nothing)
    reader_epoch = None
    state: dict[str, object] = {}
    truth: dict[str, object] = {}
    for op, a, b in operations:
        if op == "append":
            e = log.append(a, {"n": b, "pad": "p" * (b % 20)}, now)
            truth[a] = e.message["payload"]
        elif op == "accept":
            seq = log.head + 1 + b if b >= 0 else log.head
            got = log.accept(seq, a, {"n": seq}, now)
            if b < 0:
                assert got is None
            else:
                assert got is not None and got.seq == seq == log.head
                truth[a] = got.message["payload"]
        elif op == "tick":
            now += a
            log.trim(now)
        else:
            r = log.read(reader_epoch, reader_seq if b else None, now)
            if isinstance(r, Resumed):
                seqs = [e.seq for e in r.entries]
                assert seqs == list(range(reader_seq + 1, log.head + 1))
            else:
                state.clear()
                reader_seq = 0
                seqs = [e.seq for e in r.entries]
                assert seqs == sorted(set(seqs))
            for e in r.entries:
                assert e.seq > reader_seq
                reader_seq = e.seq
                state[e.type] = e.message["payload"]
            reader_epoch = log.epoch
            # The reader is now up to date with the latest state of each type.
            assert state == truth


def test_accept_keeps_seqs_assigned_elsewhere():
    log = make()
    assert log.accept(1, "presence", {"online": []}, 0).seq == 1
    assert log.accept(2, "session", {"v": 1}, 0).seq == 2
    assert log.accept(2, "session", {"v": 1}, 0) is None  # a repeat
    assert log.accept(1, "session", {"v": 0}, 0) is None
    assert [e.seq for e in log.read("E", 1, 0).entries] == [2]
    # a hole: 3 and 4 are not coming; the window restarts at 5
    assert log.accept(5, "session", {"v": 5}, 0).seq == 5
    assert log.first_seq == 5 and log.head == 5
    r = log.read("E", 2, 0)
    assert isinstance(r, Reset) and [e.seq for e in r.entries] == [1, 5]
    r = log.read("E", 4, 0)  # a reader at 4 misses only 5
    assert isinstance(r, Resumed) and [e.seq for e in r.entries] == [5]


SESSION_1 = b'{"type":"session","seq":1,"payload":{"v":1}}'


def test_an_entry_is_the_stream_message_in_compact_json():
    e = make().append("session", {"v": 1}, 7.5)
    assert (e.seq, e.type, e.at) == (1, "session", 7.5)
    assert e.json == SESSION_1 and e.size == len(SESSION_1) == 44
    assert JSON.decode(e.json) == e.message == {"type": "session", "seq": 1, "payload": {"v": 1}}


def test_sse_event_is_built_once():
    e = make().append("session", {"v": 1}, 0.0)
    event = e.sse_event()
    assert event == b"event: session\nid: 1\ndata: " + SESSION_1 + b"\n\n"
    assert e.sse_event() is event
    assert e.encoded_as("json") is e.json  # the SSE event is not an encoding of a codec


def test_ws_frames_are_exact_and_built_once_per_codec():
    e = make().append("session", {"v": 1}, 0.0)
    text = e.ws_frame(JSON)
    assert text == b"\x81\x2c" + SESSION_1  # FIN + text, 44 bytes, unmasked
    packed = e.ws_frame(MSGPACK)
    assert packed == b"\x82" + bytes([len(e.encoded(MSGPACK))]) + e.encoded(MSGPACK)
    assert e.ws_frame(JSON) is text and e.ws_frame(MSGPACK) is packed
    assert e.encoded(JSON) is e.json  # the frames did not replace the encodings
    assert e.encoded_as("msgpack") == MSGPACK.encode(e.message)


def test_a_new_log_is_empty():
    log = make()
    assert (log.head, log.evictions, len(log), log.bytes, log.first_seq) == (0, 0, 0, 0, 1)
    assert log.snapshot() == [] and log.latest("session") is None
    assert log.epoch == "E"


def test_the_latest_of_a_type_is_pinned_then_released_with_exact_accounting():
    log = make(max_messages=2)
    p = log.append("presence", {"online": []}, 0.0)
    s2 = log.append("session", {"v": 2}, 0.0)
    assert (len(log), log.evictions, log.first_seq) == (2, 0, 1)
    s3 = log.append("session", {"v": 3}, 0.0)  # p falls off the window: pinned, kept
    assert (len(log), log.evictions, log.first_seq) == (3, 0, 2)
    assert log.bytes == p.size + s2.size + s3.size
    s4 = log.append("session", {"v": 4}, 0.0)  # s2 falls off: not the latest, evicted
    assert (len(log), log.evictions, log.first_seq, log.head) == (3, 1, 3, 4)
    assert log.bytes == p.size + s3.size + s4.size
    assert log.snapshot() == [p, s4] and log.latest("presence") is p
    p5 = log.append("presence", {"online": ["u"]}, 0.0)  # replaces the pinned p, evicts s3
    assert (len(log), log.evictions, log.first_seq, log.head) == (2, 3, 4, 5)
    assert log.bytes == s4.size + p5.size
    assert log.snapshot() == [s4, p5]
    assert log.read("E", 3, 0.0) == Resumed([s4, p5])
    assert log.read("E", 2, 0.0) == Reset([s4, p5], "expired")


def test_replacing_a_latest_still_in_the_window_evicts_nothing():
    log = make()
    a = log.append("session", {"v": 1}, 0.0)
    b = log.append("session", {"v": 2}, 0.0)
    assert log.evictions == 0 and len(log) == 2 and log.bytes == a.size + b.size
    assert log.snapshot() == [b]


def test_the_byte_bound_is_inclusive():
    probe = make()
    sizes = [probe.append("session", {"v": i}, 0.0).size for i in range(3)]
    exact = make(max_bytes=sum(sizes))
    for i in range(3):
        exact.append("session", {"v": i}, 0.0)
    assert (len(exact), exact.evictions, exact.bytes) == (3, 0, sum(sizes))
    tight = make(max_bytes=sum(sizes) - 1)
    for i in range(3):
        tight.append("session", {"v": i}, 0.0)
    assert (len(tight), tight.evictions, tight.first_seq) == (2, 1, 2)
    assert tight.bytes == sizes[1] + sizes[2]


def test_the_count_bound_is_inclusive():
    log = make(max_messages=3)
    for i in range(3):
        log.append("session", {"v": i}, 0.0)
    assert (len(log), log.first_seq, log.evictions) == (3, 1, 0)
    log.append("session", {"v": 3}, 0.0)
    assert (len(log), log.first_seq, log.evictions) == (3, 2, 1)


def test_the_age_bound_is_inclusive():
    log = make(max_age=10.0)
    first = log.append("session", {"v": 1}, 0.0)
    second = log.append("presence", {"online": []}, 1.0)
    assert log.read("E", 0, 10.0) == Resumed([first, second])  # exactly max_age old: kept
    assert log.first_seq == 1
    log.trim(10.5)  # first is now too old, but the latest session: pinned, not evicted
    assert (log.first_seq, len(log), log.evictions) == (2, 2, 0)
    assert log.bytes == first.size + second.size
    assert log.read("E", 0, 10.5) == Reset([first, second], "expired")
    assert log.read("E", 1, 10.5) == Resumed([second])


def test_reset_reasons_and_their_boundaries():
    log = make(max_messages=2)
    p = log.append("presence", {"online": []}, 0.0)
    for i in range(4):
        log.append("session", {"v": i}, 0.0)
    snap = log.snapshot()
    assert [e.seq for e in snap] == [1, 5] and log.first_seq == 4
    assert log.read(None, 3, 0.0) == Reset(snap, "fresh")
    assert log.read("E", None, 0.0) == Reset(snap, "fresh")
    assert log.read("F", 5, 0.0) == Reset(snap, "epoch")
    assert log.read("E", 2, 0.0) == Reset(snap, "expired")  # 3 is gone
    assert [e.seq for e in log.read("E", 3, 0.0).entries] == [4, 5]  # first_seq - 1
    assert log.read("E", 5, 0.0) == Resumed([])  # up to date
    assert log.read("E", 6, 0.0) == Reset(snap, "ahead")
    assert log.read("E", -1, 0.0) == Reset(snap, "expired")
    assert p in snap


def test_accepting_the_next_seq_keeps_the_window():
    log = make()
    a = log.accept(1, "presence", {"online": ["u"]}, 0.0)
    b = log.accept(2, "session", {"v": 1}, 0.0)
    assert a.message == {"type": "presence", "seq": 1, "payload": {"online": ["u"]}}
    assert b.message == {"type": "session", "seq": 2, "payload": {"v": 1}}
    assert (log.first_seq, log.head, len(log), log.evictions) == (1, 2, 2, 0)
    assert log.read("E", 0, 0.0) == Resumed([a, b])


def test_accepting_past_a_hole_drops_the_window_but_keeps_the_latest():
    log = make()
    a = log.accept(1, "presence", {"online": []}, 0.0)
    b = log.accept(2, "session", {"v": 1}, 0.0)
    c = log.accept(3, "session", {"v": 2}, 0.0)
    d = log.accept(6, "session", {"v": 3}, 0.0)
    assert (log.first_seq, log.head, len(log)) == (6, 6, 2)
    assert log.evictions == 2  # b; a and c pinned, then c replaced by d
    assert log.bytes == a.size + d.size
    assert log.snapshot() == [a, d] and b not in log.snapshot() and c not in log.snapshot()
    assert log.read("E", 5, 0.0) == Resumed([d])
    assert log.read("E", 3, 0.0) == Reset([a, d], "expired")


def test_a_hole_of_a_single_seq_restarts_the_window():
    log = make()
    a = log.accept(1, "session", {"v": 1}, 0.0)
    b = log.accept(3, "presence", {"online": []}, 0.0)  # 2 is not coming
    assert (log.first_seq, log.head, len(log)) == (3, 3, 2)
    assert log.read("E", 2, 0.0) == Resumed([b])
    assert log.read("E", 1, 0.0) == Reset([a, b], "expired")
    assert log.read("E", 0, 0.0) == Reset([a, b], "expired")
