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
    assert render_json(["{userId}", 3, "{payload.missing?}"], CTX) == ["u/1", 3]
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
