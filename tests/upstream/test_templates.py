import pytest

from bridge.upstream.templates import (
    MissingValue,
    TemplateError,
    compile_template,
    render_json,
    render_path,
)

CTX = {
    "sessionId": "s 1",
    "userId": "u/1",
    "clientId": "c1",
    "params": {"name": "Alice"},
    "payload": {"vote": 5, "nested": {"x": [1, 2]}, "note": None, "list": ["a", "b"]},
}


def test_lone_placeholder_keeps_json_type():
    assert render_json({"vote": "{payload.vote}"}, CTX) == {"vote": 5}
    assert render_json({"n": "{payload.nested}"}, CTX) == {"n": {"x": [1, 2]}}
    assert render_json("{payload.list.1}", CTX) == "b"


def test_text_interpolation_and_lists():
    assert render_json({"m": "hi {params.name}, {payload.vote}!"}, CTX) == {"m": "hi Alice, 5!"}
    # in an array a missing optional value is null: positions never shift
    assert render_json(["{userId}", "{payload.missing?}", 3], CTX) == ["u/1", None, 3]
    assert render_json({"x": "{payload.nested}"}, CTX) == {"x": {"x": [1, 2]}}
    assert render_json({"x": "v={payload.nested}"}, CTX) == {"x": 'v={"x":[1,2]}'}
    assert render_json(None, CTX) is None
    assert render_json(7, CTX) == 7


def test_optional_placeholders_leave_the_key_out():
    body = {"userId": "{userId}", "name": "{params.nick?}", "note": "{payload.note?}"}
    assert render_json(body, CTX) == {"userId": "u/1"}
    assert render_json({"t": "a{params.nick?}b"}, CTX) == {"t": "ab"}
    assert render_json("{payload.absent?}", CTX) is None


def test_missing_required_value():
    with pytest.raises(MissingValue) as info:
        render_json({"vote": "{payload.score}"}, CTX)
    assert str(info.value) == "missing value for {payload.score}"
    with pytest.raises(MissingValue):
        render_json({"t": "x{payload.note}"}, CTX)
    with pytest.raises(MissingValue):
        render_path("/a/{params.nick}", CTX)


def test_paths_are_percent_encoded():
    assert render_path("/api/sessions/{sessionId}/votes/{userId}", CTX) == (
        "/api/sessions/s%201/votes/u%2F1"
    )
    assert render_path("/x/{payload.vote}", CTX) == "/x/5"
    assert render_path("/x/{params.nick?}", CTX) == "/x/"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("/{nope}", "unknown placeholder {nope}"),
        ("/{sessionId.x}", "{sessionId} has no fields"),
        ({"a": ["{params}"]}, "{params} needs a field name"),
        ("/{unclosed", "unbalanced or malformed placeholder"),
        ("/}", "unbalanced or malformed placeholder"),
    ],
)
def test_compile_errors(template, message):
    with pytest.raises(TemplateError, match=message.replace("{", r"\{").replace("}", r"\}")):
        compile_template(template)


def test_compile_accepts_valid_templates():
    compile_template({"a": "{payload.x?}", "b": ["{userId}", 1, None], "c": "/{clientId}"})


def test_arrays_keep_their_positions():
    ctx = {**CTX, "user": {"pid": "p-1"}, "session": {"round": 3}}
    assert render_json(["{sessionId}", "{user.pid}", "{payload.vote?}"], ctx) == ["s 1", "p-1", 5]
    assert render_json(["{sessionId}", "{payload.score?}", "{user.pid}"], ctx) == [
        "s 1",
        None,
        "p-1",
    ]
    assert render_json(["{payload.note?}", "{session.round}"], ctx) == [None, 3]
    assert render_json([["{payload.gone?}"], {"k": "{payload.gone?}"}], ctx) == [[None], {}]


def test_query_header_and_form_values_are_text():
    from bridge.exceptions import UnsafeValue
    from bridge.upstream.templates import render_fields, render_text

    ctx = {**CTX, "user": {"appId": "a b&c"}}
    assert render_text("{user.appId}", ctx, "q") == "a b&c"  # encoded by the HTTP client
    assert render_text("{payload.vote}", ctx, "q") == "5"
    assert render_text("{payload.nested}", ctx, "q") == '{"x":[1,2]}'
    assert render_text("{params.nick?}", ctx, "q") is None  # its key is left out
    assert render_text("x{params.nick?}", ctx, "q") == "x"
    assert render_fields({"a": "{userId}", "b": "{params.nick?}", "c": "k"}, ctx, "query") == [
        ("a", "u/1"), ("c", "k"),
    ]  # fmt: skip
    with pytest.raises(MissingValue):
        render_text("{user.nope}", ctx, "q")
    for evil in ("a\r\nX-Injected: 1", "a\nb", "a\x00b", "a\rb"):
        with pytest.raises(UnsafeValue, match="control character"):
            render_fields({"X-Name": "{params.name}"}, {**ctx, "params": {"name": evil}}, "header")


def test_user_and_session_roots_need_a_field():
    compile_template("{user.appId} {session.round}")
    with pytest.raises(TemplateError, match="needs a field name"):
        compile_template("{user}")
    with pytest.raises(TemplateError, match="needs a field name"):
        compile_template({"a": ["{session}"]})
