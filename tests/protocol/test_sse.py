"""bridge.protocol.sse: the event formatter, and the incremental parser against
the WHATWG rules (§9.2.6), whole stream vs byte-at-a-time vs any chunking."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.exceptions import MessageTooBig
from bridge.protocol.sse import MAX_SIZE, Event, EventParser, event, retry


def parse(data: bytes, **kw: int) -> list[Event]:
    return EventParser(**kw).feed(data)


def bytewise(data: bytes, **kw: int) -> list[Event]:
    parser = EventParser(**kw)
    return [e for i in range(len(data)) for e in parser.feed(data[i : i + 1])]


# -- formatting


def test_event_and_retry_format():
    assert event("session", b'{"seq":3}', 3) == b'event: session\nid: 3\ndata: {"seq":3}\n\n'
    assert event("ack", b"{}") == b"event: ack\ndata: {}\n\n"
    assert event("s\xe9", b"{}") == b"event: s?\ndata: {}\n\n"
    assert retry(1000) == b"retry: 1000\n\n"


def test_what_the_bridge_writes_parses_back():
    body = json.dumps({"type": "session", "seq": 7, "payload": {"a": "x\ny"}}).encode()
    stream = retry(250) + event("ping", b'{"type":"ping"}') + event("session", body, 7)
    assert parse(stream) == [
        Event("ping", '{"type":"ping"}', "", 250),
        Event("session", body.decode(), "7", 250),
    ]


# -- the rules, one at a time


def test_defaults():
    parser = EventParser()
    assert MAX_SIZE == 1 << 20
    assert parser.max_size == MAX_SIZE
    assert parser.last_event_id == "" and parser.retry is None and parser.error is None
    assert Event("message", "x") == Event("message", "x", "", None)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol):
    stream = eol.join([b"event: a", b"data: 1", b"", b"data: 2", b"", b""])
    assert parse(stream) == [Event("a", "1"), Event("message", "2")]
    assert bytewise(stream) == [Event("a", "1"), Event("message", "2")]


def test_mixed_line_endings_and_cr_cr_is_two_lines():
    assert parse(b"data: 1\r\rdata: 2\r\n\ndata: 3\n\r") == [
        Event("message", "1"),
        Event("message", "2"),
        Event("message", "3"),
    ]


def test_cr_at_a_chunk_end_pairs_with_a_lf_opening_the_next():
    parser = EventParser()
    assert parser.feed(b"data: 1\r") == []
    assert parser.feed(b"\n") == []  # the LF of the CR LF: no blank line
    assert parser.feed(b"\r") == [Event("message", "1")]
    assert parser.feed(b"data: 2\r") == []
    assert parser.feed(b"\n\n") == [Event("message", "2")]  # CR LF, then a blank line
    assert parser.feed(b"data: 3\r") == []
    assert parser.feed(b"") == []  # an empty chunk changes nothing
    assert parser.feed(b"\ndata: 4\n\n") == [Event("message", "3\n4")]


def test_the_line_state_flags_are_booleans():
    # White-box: both are read only for their truth, so a None there would pass
    # every test above; the mutation run checks that nothing else takes their place.
    parser = EventParser()
    assert parser._after_cr is False and parser._first is True
    parser.feed(b"x\r")
    assert parser._after_cr is True and parser._first is False
    parser.feed(b"\n")
    assert parser._after_cr is False


def test_a_lf_not_after_cr_is_a_line_end():
    parser = EventParser()
    assert parser.feed(b"data: 1\n") == []
    assert parser.feed(b"\n") == [Event("message", "1")]


def test_comments_are_skipped():
    assert parse(b": hello\ndata: x\n:\n: data: y\n\n") == [Event("message", "x")]
    assert parse(b": only a comment\n\n") == []


def test_one_leading_space_is_stripped_and_no_more():
    assert parse(b"data:x\n\n") == [Event("message", "x")]
    assert parse(b"data: x\n\n") == [Event("message", "x")]
    assert parse(b"data:  x\n\n") == [Event("message", " x")]
    assert parse(b"data: x \n\n") == [Event("message", "x ")]
    assert parse(b"data:\tx\n\n") == [Event("message", "\tx")]
    assert parse(b"event:  a\ndata\n\n") == [Event(" a", "")]


def test_a_value_may_hold_colons():
    assert parse(b"data: a: b:c\n\n") == [Event("message", "a: b:c")]


def test_a_field_without_colon_has_an_empty_value():
    assert parse(b"data\n\n") == [Event("message", "")]
    assert parse(b"data\ndata\n\n") == [Event("message", "\n")]
    assert parse(b"event\ndata: x\n\n") == [Event("message", "x")]


def test_data_lines_are_joined_with_lf():
    assert parse(b"data: a\ndata: b\ndata:\ndata: c\n\n") == [Event("message", "a\nb\n\nc")]


def test_no_data_no_event_and_the_type_does_not_leak():
    assert parse(b"event: a\n\ndata: x\n\n") == [Event("message", "x")]
    assert parse(b"\n\n\n") == []
    assert parse(b"event: a\ndata: 1\n\ndata: 2\n\n") == [Event("a", "1"), Event("message", "2")]


def test_an_empty_event_type_is_message():
    assert parse(b"event:\ndata: x\n\n") == [Event("message", "x")]


def test_the_last_field_wins():
    assert parse(b"event: a\nevent: b\ndata: x\n\n") == [Event("b", "x")]


def test_id_persists_and_an_id_with_nul_is_ignored():
    parser = EventParser()
    assert parser.feed(b"id: 7\ndata: a\n\n") == [Event("message", "a", "7")]
    assert parser.feed(b"data: b\n\n") == [Event("message", "b", "7")]
    assert parser.feed(b"id: 8\x00\ndata: c\n\n") == [Event("message", "c", "7")]
    assert parser.last_event_id == "7"
    assert parser.feed(b"id\ndata: d\n\n") == [Event("message", "d", "")]  # empty resets
    assert parser.feed(b"id: 9\n\n") == []  # set without an event
    assert parser.last_event_id == "9"
    assert parser.feed(b"data: e\n\n") == [Event("message", "e", "9")]


def test_retry_takes_ascii_digits_only():
    parser = EventParser()
    assert parser.feed(b"retry: 1500\n\n") == []
    assert parser.retry == 1500
    for bad in (b"retry: 15x\n", b"retry: -3\n", b"retry: 1.5\n", b"retry:\n",
                b"retry: \xc2\xb2\n", b"retry:  20\n"):  # fmt: skip
        parser.feed(bad)
        assert parser.retry == 1500, bad
    assert parser.feed(b"retry:0\ndata: x\n\n") == [Event("message", "x", "", 0)]
    assert parser.retry == 0


def test_unknown_fields_are_ignored():
    assert parse(b"foo: bar\nDATA: x\nEvent: y\ndata: z\n\n") == [Event("message", "z")]


def test_a_leading_bom_is_dropped_once():
    assert parse(b"\xef\xbb\xbfdata: x\n\n") == [Event("message", "x")]
    assert bytewise(b"\xef\xbb\xbfdata: x\n\n") == [Event("message", "x")]
    # anywhere else it is part of the line: here a field named "\ufeffdata"
    assert parse(b"\n\xef\xbb\xbfdata: x\n\ndata: y\n\n") == [Event("message", "y")]
    assert parse(b"data: \xef\xbb\xbfx\n\n") == [Event("message", "\ufeffx")]
    assert parse(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\n") == []  # only one is dropped


def test_utf8_split_across_chunks_and_invalid_bytes_replaced():
    stream = "data: café ☕\n\n".encode()
    assert bytewise(stream) == [Event("message", "café ☕")]
    assert parse(b"data: \xff\xfeok\n\n") == [Event("message", "\ufffd\ufffdok")]
    assert parse(b"event: \xe2\x98\n\xe2\x98\ndata: x\n\n") == [Event("\ufffd", "x")]


def test_an_unfinished_event_is_not_dispatched():
    parser = EventParser()
    assert parser.feed(b"data: a\ndata: b") == []
    assert parser.feed(b"\n") == []
    assert parser.feed(b"\n") == [Event("message", "a\nb")]
    assert parser.feed(b"data: c\n") == []  # the stream may end here: nothing comes of it


# -- limits: the parser stops instead of growing


def test_an_unfinished_line_over_the_limit_stops_the_parser():
    parser = EventParser(max_size=8)
    assert parser.feed(b"data: 12") == []  # 8 bytes: at the limit
    assert parser.error is None
    assert parser.feed(b"3") == []
    assert isinstance(parser.error, MessageTooBig)
    assert parser.error.message == "an unfinished line is over 8 bytes"
    assert parser.feed(b"\n\ndata: x\n\n") == []  # stopped for good


def test_a_complete_line_is_not_held_against_the_limit():
    parser = EventParser(max_size=8)
    assert parser.feed(b"event: abcdefgh\ndata: 1\n\n") == [Event("abcdefgh", "1")]
    assert parser.error is None


def test_data_over_the_limit_stops_the_parser():
    parser = EventParser(max_size=6)
    assert parser.feed(b"data: ab\ndata: cd\n") == []  # "ab\ncd\n": 6, at the limit
    assert parser.error is None
    assert parser.feed(b"\n") == [Event("message", "ab\ncd")]
    events = parser.feed(b"data: 1\n\ndata: abc\ndata: def\n\ndata: 2\n\n")
    assert events == [Event("message", "1")]  # what came before the failure still counts
    assert isinstance(parser.error, MessageTooBig)
    assert parser.error.message == "an event's data is over 6 characters"
    assert parser.feed(b"data: 3\n\n") == []


def test_the_data_count_restarts_with_each_event():
    parser = EventParser(max_size=4)
    for _ in range(5):
        assert parser.feed(b"data: abc\n\n") == [Event("message", "abc")]
    assert parser.error is None


def test_after_a_failure_the_buffers_are_dropped():
    parser = EventParser(max_size=4)
    parser.feed(b"data: abcdef")
    assert parser.error is not None
    assert parser._line == bytearray() and parser._data == []


# -- whole vs byte-at-a-time vs any chunking (Hypothesis)

LINE_PARTS = st.sampled_from(
    [b"data", b"data:", b"data: ", b"event: ", b"id: ", b"id", b"retry: ", b"retry:",
     b":", b": c", b"x", b"12", b"\x00", b"\xc3\xa9", b"\xe2\x98\x95", b"\xff", b" ",
     b"\xef\xbb\xbf", b"\n", b"\r", b"\r\n", b"\n\n", b"\r\r"]
)  # fmt: skip
STREAMS = st.lists(LINE_PARTS, max_size=40).map(b"".join) | st.binary(max_size=200)


def chunked(data: bytes, cuts: list[int]) -> list[Event]:
    parser = EventParser()
    points = sorted({c % (len(data) + 1) for c in cuts})
    out: list[Event] = []
    start = 0
    for p in [*points, len(data)]:
        out += parser.feed(data[start:p])
        start = p
    return out


@given(STREAMS)
def test_whole_equals_byte_at_a_time(data):
    assert parse(data) == bytewise(data)


@given(STREAMS, st.lists(st.integers(0, 10_000), max_size=10))
def test_whole_equals_any_chunking(data, cuts):
    assert parse(data) == chunked(data, cuts)


@given(STREAMS)
def test_state_after_the_stream_is_the_same_however_it_came(data):
    whole, bytes_ = EventParser(), EventParser()
    whole.feed(data)
    for i in range(len(data)):
        bytes_.feed(data[i : i + 1])
    assert (whole.last_event_id, whole.retry) == (bytes_.last_event_id, bytes_.retry)


def reference(data: bytes) -> list[Event]:
    """A plain reading of §9.2.6 over the whole decoded stream, for comparison."""
    text = data.decode("utf-8", "replace").removeprefix("\ufeff")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:-1]  # last: unfinished
    out, data_buf, type_buf, last_id, retry_ms = [], "", "", "", None
    for line in lines:
        if line == "":
            if data_buf:
                out.append(Event(type_buf or "message", data_buf[:-1], last_id, retry_ms))
            data_buf, type_buf = "", ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            name, value = line.split(":", 1)
            value = value[1:] if value.startswith(" ") else value
        else:
            name, value = line, ""
        if name == "event":
            type_buf = value
        elif name == "data":
            data_buf += value + "\n"
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and value and all(c in "0123456789" for c in value):
            retry_ms = int(value)
    return out


@given(STREAMS)
def test_agrees_with_a_plain_reading_of_the_spec(data):
    assert parse(data) == reference(data)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["session", "presence", "ack", "ping", "welcome"]),
            st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3),
            st.none() | st.integers(0, 10**9),
        ),
        max_size=10,
    )
)
def test_round_trip_with_the_formatter(items):
    stream = b"".join(event(t, json.dumps(d, ensure_ascii=False).encode(), i) for t, d, i in items)
    events = bytewise(stream)
    assert [(e.type, json.loads(e.data)) for e in events] == [(t, d) for t, d, _ in items]
    last = ""
    for e, (_, _, i) in zip(events, items, strict=True):
        last = str(i) if i is not None else last
        assert e.id == last
