import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.headers import accepts_coding, weight


@pytest.mark.parametrize(
    ("params", "q"),
    [
        ("", 1.0), ("q=1", 1.0), (" q=0.5 ", 0.5), ("Q=0.25", 0.25), ("q=0", 0.0),
        ("q=0.", 0.0), ("q=1.000", 1.0), ("q=0.001", 0.001), ("level=1", 1.0),
        ("level=1;q=0.2", 0.2), (";q=0.3", 0.3),
    ],
)  # fmt: skip
def test_weights(params, q):
    assert weight(params) == q


@pytest.mark.parametrize(
    "params", ["q=high", "q=", "q=1.5", "q=0.1234", "q=1.01", "q=-1", "q=.5", "q", "x", "q=2"]
)
def test_malformed_weights(params):
    assert weight(params) is None


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("gzip", True), ("GZIP", True), (" gzip ", True), ("br, gzip", True),
        ("gzip;q=0", False), ("gzip;q=0.0", False), ("gzip;q=0.001", True),
        ("*", True), ("*;q=0", False), ("gzip;q=0, *", False), ("*, gzip;q=0", False),
        ("identity", False), ("br;q=1, *;q=0.1", True), ("", False), (None, False),
        ("gzip;q=high", False), ("*;q=x", False), ("deflate, gzip;q=oops, *", False),
        ("x-gzip", False), ("br,gzip", True), ("gzip;q=0.5,br", True), ("br;q=0,*", True),
        ("br,gzip;q=0", False),
    ],
)  # fmt: skip
def test_accepts_coding(header, ok):
    assert accepts_coding(header, "gzip") is ok


@given(st.text(max_size=60))
def test_never_raises(header):
    assert accepts_coding(header, "gzip") in (True, False)
