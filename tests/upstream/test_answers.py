"""What the bridge takes from the app's answers: strict JSON, reject_when, captures."""

import pytest

from bridge.config import Capture
from bridge.upstream.answers import (
    MAX_CAPTURE_BYTES,
    Captured,
    Unusable,
    decode_json,
    rejection,
    take_captures,
)


@pytest.mark.parametrize(
    "ctype", ["application/json", "application/json; charset=utf-8", "application/problem+json",
              "Application/JSON"],
)  # fmt: skip
def test_json_by_its_content_type(ctype):
    assert decode_json("join", {"Content-Type": ctype}, b'{"a": [1]}') == {"a": [1]}


@pytest.mark.parametrize(
    ("headers", "body", "reason", "words"),
    [
        ({"Content-Type": "text/html"}, b"<!DOCTYPE html>", "content_type", "got text/html"),
        ({}, b'{"a": 1}', "content_type", "got no content type"),
        ({"Content-Type": "text/x-component"}, b"0:{}", "content_type", "text/x-component"),
        ({"Content-Type": "application/json"}, b"{oops", "invalid", "not valid JSON"),
        ({"Content-Type": "application/json"}, b"\xff\xfe", "invalid", "not valid JSON"),
        ({"Content-Type": "application/jsonx"}, b"{}", "content_type", "jsonx"),
    ],
)
def test_anything_else_is_unusable(headers, body, reason, words):
    with pytest.raises(Unusable) as info:
        decode_json("vote", headers, body)
    assert info.value.reason == reason
    assert words in str(info.value) and str(info.value).startswith("vote: ")
    assert info.value.code == "upstream_error"


def test_reject_when():
    assert rejection({"error": "not admin"}, "error") == "not admin"
    assert rejection({"error": {"code": 7}}, "error") == '{"code":7}'
    assert rejection({"result": {"errors": ["x"]}}, "result.errors") == '["x"]'
    assert rejection({"errors": ["é"]}, "errors") == '["é"]'
    for fine in ({"error": None}, {"error": ""}, {"error": False}, {"error": []}, {}, [1], None):
        assert rejection(fine, "error") is None
    assert rejection({"error": "x"}, None) is None
    assert rejection([{"error": "first"}], "0.error") == "first"


def test_captures_by_scope_and_path():
    cap = Capture(user={"appId": "user_id", "first": "items.0.id"}, session={"round": "round.n"})
    got = take_captures("join", {"user_id": "u-9", "items": [{"id": 4}], "round": {"n": 2}}, cap)
    assert got == Captured(user={"appId": "u-9", "first": 4}, session={"round": 2})
    assert got and not Captured()
    assert take_captures("join", {"x": 1}, None) == Captured()
    # a value that is present but null or false is captured as it is
    assert take_captures("j", {"user_id": None}, Capture(user={"a": "user_id"})).user == {"a": None}


def test_a_missing_capture_fails_the_command():
    with pytest.raises(Unusable, match="join answer has no user_id") as info:
        take_captures("join", {"id": "x"}, Capture(user={"appId": "user_id"}))
    assert info.value.reason == "capture"
    with pytest.raises(Unusable, match="has no items.3"):
        take_captures("join", {"items": [1]}, Capture(session={"x": "items.3"}))


def test_captures_are_capped_and_must_be_carried_by_every_codec():
    big = "x" * MAX_CAPTURE_BYTES
    with pytest.raises(Unusable, match=r"is 4098 bytes \(over 4096\)"):
        take_captures("join", {"v": big}, Capture(user={"v": "v"}))
    fits = "x" * (MAX_CAPTURE_BYTES - 2)  # its JSON is 4096 bytes with the quotes
    assert take_captures("join", {"v": fits}, Capture(user={"v": "v"})).user["v"] == fits
    with pytest.raises(Unusable, match="cannot be kept"):
        take_captures("join", {"v": float("inf")}, Capture(user={"v": "v"}))
    with pytest.raises(Unusable, match="cannot be kept"):
        take_captures("join", {"v": 2**64}, Capture(session={"v": "v"}))
