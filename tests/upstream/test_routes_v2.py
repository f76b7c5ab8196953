"""Routes v2 through the upstream client, against a real aiohttp app on loopback:
query, headers, forms, arrays, captures, reject_when, strict decoding, hooks, caps."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.config import ConfigError, config_from_dict
from bridge.exceptions import UnsafeValue, UpstreamRejected, UpstreamUnreadable
from bridge.metrics import Metrics
from bridge.upstream.client import UpstreamClient

CTX = {"sessionId": "s/1", "userId": "u1", "clientId": "c1", "params": {"name": "Ann"},
       "payload": {"vote": 5}, "user": {"appId": "a 1&2"}, "session": {"round": 3}}  # fmt: skip

HOOKS = """
import time

def lines(status, headers, body):
    for line in body.decode().splitlines():
        row, _, value = line.partition(":")
        if row == "1":
            import json
            return json.loads(value)
    raise ValueError("no line 1")

def broken(status, headers, body):
    raise KeyError("bug in the hook")

def slow(status, headers, body):
    time.sleep(0.3)
    return {}
"""


class App:
    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.answer: Any = None  # a function making the next answer

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append({
            "method": request.method, "path": request.raw_path.split("?")[0], "query": dict(request.query),
            "headers": dict(request.headers), "body": await request.read(),
        })  # fmt: skip
        if self.answer is not None:
            return self.answer()
        return web.json_response({"user_id": "minted-1", "ok": True})


@pytest.fixture
async def setup(aiohttp_server, tmp_path: Path):
    app = App()
    web_app = web.Application()
    web_app.router.add_route("*", "/{tail:.*}", app.handle)
    server = await aiohttp_server(web_app)
    (tmp_path / "hooks.py").write_text(textwrap.dedent(HOOKS))
    sessions: list[aiohttp.ClientSession] = []

    def make(**upstream: Any) -> tuple[UpstreamClient, Any, Metrics]:
        cfg = config_from_dict({"upstream": {
            "url": str(server.make_url("")), "timeout": "1s",
            "retry": {"attempts": 1}, "breaker": {"failures": 2}, **upstream,
        }}, base_dir=tmp_path)  # fmt: skip
        http = aiohttp.ClientSession()
        sessions.append(http)
        metrics = Metrics()
        return UpstreamClient(cfg.upstream, http, metrics, cfg.base_dir), cfg, metrics

    yield app, make
    for s in sessions:
        await s.close()


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_query_headers_and_precedence(setup):
    app, make = setup
    client, cfg, _ = make(
        headers={"X-Api-Key": "k1", "X-Who": "{sessionId}", "Cookie": "from-config",
                 "content-type": "text/plain;charset=UTF-8"},
        commands={"vote": {"path": "/rooms/{sessionId}/vote",
                           "query": {"user_id": "{user.appId}", "page": "{params.page?}"},
                           "headers": {"X-Who": "route-{user.appId}", "Next-Action": "7f3a"},
                           "json": {"v": "{payload.vote}"}}},
    )  # fmt: skip
    await client.request("vote", cfg.upstream.commands["vote"], CTX, {"Cookie": "sid=1"})
    seen = app.seen[-1]
    assert seen["path"] == "/rooms/s%2F1/vote"  # a value never adds a path segment
    assert seen["query"] == {"user_id": "a 1&2"}  # percent-encoded on the wire; no `page`
    h = seen["headers"]
    assert h["X-Api-Key"] == "k1" and h["Next-Action"] == "7f3a"
    assert h["X-Who"] == "route-a 1&2"  # the route's header wins over upstream.headers
    assert h["Cookie"] == "sid=1"  # the client's forwarded header wins over upstream.headers
    assert json.loads(seen["body"]) == {"v": 5}
    # headers are matched whatever their case: upstream.headers' content-type wins
    # over the bridge's default for a JSON body (Next.js actions post text/plain)
    assert h["Content-Type"] == "text/plain;charset=UTF-8"
    assert list(h).count("Content-Type") + list(h).count("content-type") == 1


async def test_forms_and_arrays(setup):
    app, make = setup
    client, cfg, _ = make(commands={
        "vote": {"path": "/issue/vote", "form": {"name": "{userId}", "vote": "{payload.vote}",
                                                  "note": "{payload.note?}"}},
        "reveal": {"path": "/rpc", "json": ["{sessionId}", "{payload.missing?}", "{user.appId}"]},
    })  # fmt: skip
    await client.request("vote", cfg.upstream.commands["vote"], CTX)
    assert app.seen[-1]["headers"]["Content-Type"] == "application/x-www-form-urlencoded"
    assert app.seen[-1]["body"] == b"name=u1&vote=5"
    await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    assert json.loads(app.seen[-1]["body"]) == ["s/1", None, "a 1&2"]


async def test_a_header_value_with_a_line_break_sends_nothing(setup):
    app, make = setup
    client, cfg, _ = make(commands={"vote": {"path": "/v", "headers": {"X-Name": "{params.name}"}}})
    evil = {**CTX, "params": {"name": "Ann\r\nX-Admin: 1"}}
    with pytest.raises(UnsafeValue):
        await client.request("vote", cfg.upstream.commands["vote"], evil)
    client2, cfg2, _ = make(commands={"vote": {"path": "/v", "query": {"q": "{params.name}"}}})
    with pytest.raises(UnsafeValue):
        await client2.request("vote", cfg2.upstream.commands["vote"], evil)
    assert app.seen == []


async def test_capture_and_reject_when(setup):
    app, make = setup
    client, cfg, metrics = make(commands={
        "join": {"path": "/join", "capture": {"user": {"appId": "user_id"}}, "reject_when": "error"},
    })  # fmt: skip
    join = cfg.upstream.commands["join"]
    resp = await client.request("join", join, CTX)
    assert resp.captured.user == {"appId": "minted-1"} and resp.body["ok"] is True
    assert sample(metrics, "bridge_upstream_captures_total", scope="user") == 1
    app.answer = lambda: web.json_response({"error": "not admin"})
    with pytest.raises(UpstreamRejected) as info:
        await client.request("join", join, CTX)
    assert info.value.message == "not admin" and info.value.code == "upstream_rejected"
    assert len(app.seen) == 2  # not retried
    app.answer = lambda: web.json_response({"id": "x"})
    with pytest.raises(UpstreamUnreadable, match="join answer has no user_id"):
        await client.request("join", join, CTX)
    app.answer = lambda: web.Response(text="<!DOCTYPE html><p>login</p>", content_type="text/html")
    with pytest.raises(UpstreamUnreadable, match="expected a JSON answer, got text/html"):
        await client.request("join", join, CTX)
    assert sample(metrics, "bridge_upstream_unusable_answers_total", command="join",
                  reason="content_type") == 1  # fmt: skip
    assert client.breaker_state() == "closed"  # one session's unusable answers: its own failure


async def test_decode_hooks(setup):
    app, make = setup
    client, cfg, metrics = make(commands={
        "vote": {"path": "/a", "decode": "hooks:lines", "reject_when": "error",
                 "capture": {"session": {"round": "round"}}},
        "reveal": {"path": "/b", "decode": "hooks:broken", "reject_when": "error"},
        "reset": {"path": "/c", "decode": "hooks:slow", "reject_when": "error"},
    })  # fmt: skip
    app.answer = lambda: web.Response(
        text='0:{"a":1}\n1:{"round":4}\n', content_type="text/x-component"
    )
    resp = await client.request("vote", cfg.upstream.commands["vote"], CTX)
    assert resp.body == {"round": 4} and resp.captured.session == {"round": 4}
    app.answer = lambda: web.Response(
        text='0:{}\n1:{"error":"not admin"}\n', content_type="text/plain"
    )
    with pytest.raises(UpstreamRejected, match="not admin"):
        await client.request("vote", cfg.upstream.commands["vote"], CTX)
    app.answer = lambda: web.Response(text="<html>", content_type="text/html")
    with pytest.raises(UpstreamUnreadable, match="refused the answer: no line 1"):
        await client.request("vote", cfg.upstream.commands["vote"], CTX)
    with pytest.raises(UpstreamUnreadable, match="raised KeyError"):
        await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamUnreadable, match="took over 100 ms"):
        await client.request("reset", cfg.upstream.commands["reset"], CTX)
    assert loop.time() - started < 0.3  # not waited for
    assert sample(metrics, "bridge_upstream_unusable_answers_total", command="reset",
                  reason="hook_slow") == 1  # fmt: skip
    assert sample(metrics, "bridge_upstream_unusable_answers_total", command="reveal",
                  reason="hook_error") == 1  # fmt: skip


def test_a_missing_hook_is_a_config_error_naming_the_key(tmp_path):
    (tmp_path / "hooks.py").write_text("def ok(s, h, b):\n    return b\n")
    base = {"url": "http://x"}
    with pytest.raises(ConfigError) as info:
        config_from_dict({"upstream": {**base, "commands": {
            "vote": {"path": "/v", "decode": "hooks:nope"},
            "reveal": {"path": "/r", "decode": "no_such_module_here:f"},
            "reset": {"path": "/r", "decode": "not a spec"},
        }}}, base_dir=tmp_path)  # fmt: skip
    text = str(info.value)
    assert "upstream.commands.vote.decode: module 'hooks' has no function 'nope'" in text
    assert "upstream.commands.reveal.decode: no module 'no_such_module_here'" in text
    assert "upstream.commands.reset.decode: expected MODULE:FUNCTION" in text
    cfg = config_from_dict({"upstream": {**base, "commands": {
        "vote": {"path": "/v", "decode": "hooks:ok"}}}}, base_dir=tmp_path)  # fmt: skip
    assert cfg.upstream.commands["vote"].decode == "hooks:ok"


async def test_answers_are_read_up_to_a_cap(setup):
    app, make = setup
    client, cfg, metrics = make(
        max_response="1KiB",
        commands={"join": {"path": "/j", "capture": {"user": {"a": "user_id"}}},
                  "vote": {"path": "/v"}},
    )  # fmt: skip
    app.answer = lambda: web.json_response({"user_id": "x" * 2000})
    with pytest.raises(UpstreamUnreadable, match="over 1024 bytes"):
        await client.request("join", cfg.upstream.commands["join"], CTX)
    assert sample(metrics, "bridge_upstream_unusable_answers_total", command="join",
                  reason="too_big") == 1  # fmt: skip
    # a route that does not use its answer is not failed by a big one
    assert (await client.request("vote", cfg.upstream.commands["vote"], CTX)).status == 200


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        ({"headers": {"Bad Name": "x"}}, "upstream.headers.Bad Name: 'Bad Name' is not a valid"),
        ({"commands": {"vote": {"path": "/v", "headers": {"X-A": "a\nb"}}}},
         "upstream.commands.vote.headers.X-A: a header value cannot hold CR, LF or NUL"),
        ({"commands": {"vote": {"path": "/v", "json": {}, "form": {}}}},
         "upstream.commands.vote: give json or form, not both"),
        ({"commands": {"vote": {"path": "/v", "method": "GET", "form": {"a": "b"}}}},
         "upstream.commands.vote.form: a GET has no body"),
        ({"commands": {"vote": {"path": "/v?x=1"}}},
         "upstream.commands.vote.path: put query values under upstream.commands.vote.query"),
        ({"commands": {"vote": {"path": "/v", "query": {"a": "{nope}"}}}},
         "upstream.commands.vote.query: unknown placeholder {nope}"),
        ({"commands": {"join": {"path": "/j", "capture": {"user": {"a-b": "x"}}}}},
         "upstream.commands.join.capture.user.a-b: a name is [A-Za-z0-9_]"),
        ({"commands": {"join": {"path": "/j", "capture": {"user": {"a": "x..y"}}}}},
         "upstream.commands.join.capture.user.a: expected a dotted path, got 'x..y'"),
        ({"commands": {"join": {"path": "/j", "capture": {"team": {}}}}},
         "upstream.commands.join.capture.team: unknown key (allowed: session, user)"),
        ({"state": {"capture": {"user": {"a": "b"}}}},
         "upstream.state.capture.user: a state answer is the session's; capture into session"),
        ({"state": {"path": "/s/{sessionId}", "parts": {"a": {"path": "/a"}}}},
         "upstream.state: give either parts or path (each part has its own), not both"),
        ({"state": {"select": "data", "parts": {"a": {"path": "/a"}}}},
         "upstream.state: give either parts or select"),
        ({"commands": {"vote": {"path": "/v/{userId}?x=1"}}},
         "upstream.commands.vote.path: put query values under"),
        ({"commands": {"vote": {"path": "/v/../admin"}}},
         "upstream.commands.vote.path: no '.' or '..' segments"),
        ({"headers": {"X-Who": "{userId}"}},
         "upstream.headers.X-Who: {userId} has no value in a state request; set "
         "upstream.state.as: present_user"),
        ({"state": {"query": {"u": "{user.appId}"}}},
         "upstream.state.query: {user.…} has no value in a state request"),
        ({"state": {"parts": {}}}, "upstream.state.parts: name at least one part"),
        ({"state": {"as": "someone"}},
         "upstream.state.as: expected one of none, present_user, got 'someone'"),
        ({"session_concurrency": 0}, "upstream.session_concurrency: must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_v2_config_errors_name_the_key(upstream, expected):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"upstream": {"url": "http://x", **upstream}})
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_demo_routes_in_effect_are_said():
    full = config_from_dict({"upstream": {"url": "http://x"}})
    assert len(full.notes) == 1 and "no route map is given" in full.notes[0]
    partial = config_from_dict({"upstream": {"url": "http://x",
                                             "commands": {"vote": {"path": "/v"}}}})  # fmt: skip
    assert [n.split(":")[0] for n in partial.notes] == ["upstream.keepalive", "upstream.state"]
    assert "POST /api/sessions/{sessionId}/heartbeat" in partial.notes[0]
    assert "keepalive: null" in partial.notes[0]
    mapped = config_from_dict({"upstream": {"url": "http://x", "commands": {},
                                            "keepalive": None, "state": {"path": "/s"}}})  # fmt: skip
    assert mapped.notes == ()
    # a v1 config means what it meant: the demo keep-alive is still sent
    assert partial.upstream.keepalive is not None
    assert partial.upstream.keepalive.path == "/api/sessions/{sessionId}/heartbeat"


async def test_no_value_climbs_out_of_its_path_segment(setup):
    app, make = setup
    client, cfg, _ = make(
        commands={"leave": {"method": "DELETE", "path": "/rooms/{sessionId}/users/{userId}"}}
    )
    for evil, sent in ((".", "%2E"), ("..", "%2E%2E"), ("../..", "..%2F.."), ("a..", "a..")):
        await client.request("leave", cfg.upstream.commands["leave"],
                             {**CTX, "sessionId": "s1", "userId": evil})  # fmt: skip
        assert app.seen[-1]["path"] == f"/rooms/s1/users/{sent}", app.seen[-1]["path"]
    # literal text that is not a URL character is encoded too; %XX is sent as written
    client2, cfg2, _ = make(commands={"vote": {"path": "/a b/%41/{userId}"}})
    await client2.request("vote", cfg2.upstream.commands["vote"], {**CTX, "userId": "ü/?#"})
    assert app.seen[-1]["path"] == "/a%20b/%41/%C3%BC%2F%3F%23"


async def test_form_values_may_hold_line_breaks(setup):
    app, make = setup
    client, cfg, _ = make(commands={"vote": {"path": "/v", "form": {"note": "{payload.note}"}}})
    await client.request("vote", cfg.upstream.commands["vote"],
                         {**CTX, "payload": {"note": "line 1\r\nline 2"}})  # fmt: skip
    assert app.seen[-1]["body"] == b"note=line+1%0D%0Aline+2"


async def test_the_state_routes_own_accept_and_text_json(setup):
    app, make = setup
    client, cfg, _ = make(state={"headers": {"accept": "text/x-component"}})
    app.answer = lambda: web.Response(text='{"a": 1}', content_type="text/json")
    ctx = {"sessionId": "s1", "params": {}, "payload": {}, "user": {}, "session": {}}
    result = await client.fetch_state("state", cfg.upstream.state, ctx, None, None, None)
    assert result.payload == {"a": 1}  # text/json is JSON (v1 read it so)
    sent = app.seen[-1]["headers"]
    assert [v for k, v in sent.items() if k.lower() == "accept"] == ["text/x-component"]


async def test_a_hooks_wait_for_a_thread_is_not_its_run_time():
    import time as _time

    from bridge.upstream import hooks

    def sixty_ms(status, headers, body):
        _time.sleep(0.06)
        return status

    # more hooks at once than threads: the later ones wait for a thread, then run 60 ms
    n = hooks.HOOK_THREADS + 4
    got = await asyncio.gather(*(hooks.run(sixty_ms, 200 + i, {}, b"") for i in range(n)))
    assert got == [200 + i for i in range(n)]
