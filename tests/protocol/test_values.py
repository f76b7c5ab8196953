import math

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.codecs import JSON, MSGPACK
from bridge.protocol.values import INT_MAX, INT_MIN, MAX_DEPTH, problem


@pytest.mark.parametrize(
    "value",
    [None, True, False, 0, -1, INT_MIN, INT_MAX, 1.5, -0.0, "x", "", [], {}, (1, 2),
     {"a": [1, {"b": None}]}, 1e308],
)  # fmt: skip
def test_values_every_codec_carries(value):
    assert problem(value) is None
    JSON.encode({"v": value})
    MSGPACK.encode({"v": value})


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (math.inf, "a number is not finite (NaN or infinity)"),
        (-math.inf, "a number is not finite (NaN or infinity)"),
        (math.nan, "a number is not finite (NaN or infinity)"),
        (INT_MAX + 1, "an integer does not fit in 64 bits"),
        (INT_MIN - 1, "an integer does not fit in 64 bits"),
        (2**70, "an integer does not fit in 64 bits"),
        ({1: "x"}, "a map key is not a string"),
        ({"a": b"raw"}, "a value of type bytes is not allowed"),
        ([object()], "a value of type object is not allowed"),
        ({"deep": [1, 2, {"x": [math.inf]}]}, "a number is not finite (NaN or infinity)"),
        ("\ud800", "a string is not valid Unicode (a lone surrogate)"),
        (["ok", "caf\u00e9 \udfff"], "a string is not valid Unicode (a lone surrogate)"),
        ({"\udc80": 1}, "a string is not valid Unicode (a lone surrogate)"),
    ],
)
def test_values_some_codec_cannot_carry(value, why):
    assert problem(value) == why


def test_non_ascii_strings_are_fine():
    assert problem({"caf\u00e9": "\U0001f600 \u2603"}) is None


def test_each_wrong_value_breaks_an_encoder_it_would_have_met():
    with pytest.raises(UnicodeEncodeError):
        JSON.encode({"v": "\ud800"})
    with pytest.raises(ValueError):
        JSON.encode({"v": math.inf})
    with pytest.raises(OverflowError):
        msgpack.packb({"v": INT_MAX + 1})


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_depth():
    assert MAX_DEPTH == 100
    assert problem(nested(MAX_DEPTH)) is None  # 100 lists around a number
    assert problem(nested(MAX_DEPTH + 1)) == "nested deeper than 100 levels"
    assert problem(nested(3), max_depth=3) is None
    assert problem(nested(4), max_depth=3) == "nested deeper than 3 levels"
    assert problem({"a": {"b": {"c": 1}}}, max_depth=3) is None
    assert problem({"a": {"b": {"c": {}}}}, max_depth=3) == "nested deeper than 3 levels"
    assert problem("scalars do not nest", max_depth=0) is None


def test_a_very_deep_value_costs_no_recursion():
    assert problem(nested(100_000)) == "nested deeper than 100 levels"


def containers(children: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.lists(children, max_size=4) | st.dictionaries(
        st.text(max_size=4), children, max_size=4
    )


scalars = (
    st.none() | st.booleans() | st.integers(INT_MIN, INT_MAX)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5)
)  # fmt: skip
json_values = st.recursive(scalars, containers, max_leaves=30)


@given(json_values)
def test_what_it_accepts_both_codecs_encode_and_decode_alike(value):
    assert problem(value) is None
    assert JSON.decode(JSON.encode({"v": value})) == MSGPACK.decode(MSGPACK.encode({"v": value}))


@pytest.mark.parametrize("ok", ["x", None, True, 7, 1.5])
def test_a_good_scalar_does_not_end_the_check(ok):
    # the stack is last in, first out: ``ok`` is looked at first, then the bad value
    assert problem([math.inf, ok]) == "a number is not finite (NaN or infinity)"
    assert problem({"a": "\ud800", "b": ok}) == "a string is not valid Unicode (a lone surrogate)"
    assert problem([[object()], ok, ok]) == "a value of type object is not allowed"
