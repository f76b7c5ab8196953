import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.exceptions import BadMessage
from bridge.protocol.codecs import CODECS, JSON, MSGPACK, SUBPROTOCOLS
from bridge.protocol.frames import OP_BINARY, OP_TEXT, frame


def test_json_round_trip_is_compact_and_utf8():
    data = JSON.encode({"type": "vote", "payload": {"vote": "☕"}})
    assert data == '{"type":"vote","payload":{"vote":"☕"}}'.encode()
    assert JSON.decode(data) == {"type": "vote", "payload": {"vote": "☕"}}
    assert JSON.decode(data.decode()) == {"type": "vote", "payload": {"vote": "☕"}}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"[1, 2]", "a message must be a JSON object"),
        (b"NaN", "a message must be a JSON object"),
        (b"[" * 100000, "not valid JSON"),
    ],
)
def test_json_decode_errors_are_returned(data, message):
    result = JSON.decode(data)
    assert isinstance(result, BadMessage)
    assert result.message == message
    assert result.code == "bad_message"


def test_msgpack_round_trip():
    msg = {"type": "session", "seq": 3, "payload": {"users": [1, 2]}}
    assert MSGPACK.decode(MSGPACK.encode(msg)) == msg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("text", "msgpack messages must be binary"),
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "a message must be a msgpack map"),
        (msgpack.packb({1: 2}), "not valid msgpack"),
        (msgpack.packb({"a": 1}) + b"\x00", "not valid msgpack"),
    ],
)
def test_msgpack_decode_errors_are_returned(data, message):
    result = MSGPACK.decode(data)
    assert isinstance(result, BadMessage)
    assert result.message == message


def test_registries():
    assert CODECS["json"] is JSON and CODECS["msgpack"] is MSGPACK
    assert SUBPROTOCOLS["bridge.v1.json"] is JSON
    assert SUBPROTOCOLS["bridge.v1.msgpack"] is MSGPACK
    assert (JSON.binary, MSGPACK.binary) == (False, True)
    assert JSON.content_type == "application/json"
    assert MSGPACK.content_type == "application/msgpack"


@given(st.binary(max_size=300))
def test_decoders_never_raise_on_any_bytes(data):
    for codec in (JSON, MSGPACK):
        result = codec.decode(data)
        assert isinstance(result, dict | BadMessage)


@pytest.mark.parametrize(
    ("n", "header"),
    [
        (0, b"\x81\x00"),
        (125, b"\x81\x7d"),
        (126, b"\x81\x7e\x00\x7e"),
        (65535, b"\x81\x7e\xff\xff"),
        (65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_frame_headers_follow_rfc6455(n, header):
    payload = b"x" * n
    assert frame(payload, OP_TEXT) == header + payload


def test_binary_frame_opcode():
    assert frame(b"ab", OP_BINARY)[:2] == b"\x82\x02"


def test_decode_batch_one_or_many():
    from bridge.protocol.codecs import decode_batch

    assert decode_batch(JSON, b'{"type":"vote"}') == [{"type": "vote"}]
    assert decode_batch(JSON, '[{"type":"a"}, 3]') == [{"type": "a"}, 3]
    assert decode_batch(MSGPACK, msgpack.packb([{"type": "a"}])) == [{"type": "a"}]
    assert decode_batch(JSON, b"7") == BadMessage(
        "the body must be a message or an array of messages"
    )
    assert decode_batch(JSON, b"\xff") == BadMessage("not valid UTF-8")
    assert decode_batch(JSON, b"[") == BadMessage("not valid JSON")
    assert decode_batch(MSGPACK, b"\xc1") == BadMessage("not valid msgpack")
    assert decode_batch(MSGPACK, "text") == BadMessage("msgpack bodies must be binary")


def test_encode_batch_joins_pre_encoded_messages():
    import json

    from bridge.protocol.codecs import encode_batch

    items = [{"type": "welcome"}, {"type": "session", "seq": 4, "payload": {"a": [1]}}]
    as_json = encode_batch(JSON, [JSON.encode(m) for m in items], 4)
    assert json.loads(as_json) == {"messages": items, "cursor": 4}
    as_msgpack = encode_batch(MSGPACK, [MSGPACK.encode(m) for m in items], 4)
    assert msgpack.unpackb(as_msgpack) == {"messages": items, "cursor": 4}
    assert json.loads(encode_batch(JSON, [], 0)) == {"messages": [], "cursor": 0}


@pytest.mark.parametrize(
    ("value", "codec"),
    [
        ("application/json; charset=utf-8", JSON),
        ("*/*", JSON),
        ("application/msgpack", MSGPACK),
        ("application/x-msgpack", MSGPACK),
        ("text/html", None),
        ("", None),
        (None, None),
    ],
)
def test_codec_for_media_type(value, codec):
    from bridge.protocol.codecs import codec_for_media_type

    assert codec_for_media_type(value) is codec


def test_sse_events():
    from bridge.protocol.sse import event, retry

    assert event("session", b'{"seq":3}', 3) == b'event: session\nid: 3\ndata: {"seq":3}\n\n'
    assert event("ping", b"{}") == b"event: ping\ndata: {}\n\n"
    assert retry(1500) == b"retry: 1500\n\n"


@given(st.text(max_size=50))
def test_json_data_is_always_one_sse_line(text):
    from bridge.protocol.sse import event

    out = event("session", JSON.encode({"v": text}), 1)
    assert out.count(b"\n") == 4  # event, id, data, blank line: no newline inside the data


@pytest.mark.parametrize(
    ("value", "codec"),
    [
        ("application/vnd.msgpack", MSGPACK),
        (" Application/X-MsgPack ; q=1", MSGPACK),
        ("text/json", JSON),
        ("application/*", JSON),
        ("APPLICATION/JSON", JSON),
        ("application/json; charset=utf-8; q=0.9", JSON),  # the type is before the first ";"
        ("application/msgpack;a=1;b=2", MSGPACK),
        ("text/*", None),
        ("application/json-seq", None),
    ],
)
def test_codec_for_media_type_every_name(value, codec):
    from bridge.protocol.codecs import codec_for_media_type

    assert codec_for_media_type(value) is codec


def test_decode_batch_refuses_what_the_message_decoders_refuse():
    from bridge.protocol.codecs import decode_batch

    # map keys must be strings (strict_map_key), in a batch as in one message
    assert decode_batch(MSGPACK, msgpack.packb({1: 2})) == BadMessage("not valid msgpack")
    assert decode_batch(MSGPACK, msgpack.packb([{"a": 1}, {1: 2}])) == BadMessage(
        "not valid msgpack"
    )
    # JSON bodies are UTF-8 (RFC 8259 §8.1): not UTF-16, no BOM, no encoded surrogate
    utf16 = '{"type":"a"}'.encode("utf-16")
    assert decode_batch(JSON, utf16) == BadMessage("not valid UTF-8")
    assert JSON.decode(utf16) == BadMessage("not valid UTF-8")
    assert decode_batch(JSON, b"\xef\xbb\xbf{}") == BadMessage("not valid JSON")
    assert decode_batch(JSON, b'"\xed\xa0\x80"') == BadMessage("not valid UTF-8")
    assert decode_batch(JSON, '[{"v":"☕"}]'.encode()) == [{"v": "☕"}]


def test_msgpack_uses_the_str8_and_bin_formats():
    # use_bin_type: strings of 32-255 bytes as str 8 (0xd9), bytes as bin (0xc4)
    assert MSGPACK.encode({"s": "x" * 32}) == b"\x81\xa1s\xd9\x20" + b"x" * 32
    assert MSGPACK.encode({"b": b"\x01"}) == b"\x81\xa1b\xc4\x01\x01"
    assert MSGPACK.decode(MSGPACK.encode({"b": b"\x01"})) == {"b": b"\x01"}
