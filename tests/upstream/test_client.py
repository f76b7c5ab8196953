"""The upstream client against a real aiohttp server on loopback."""

import asyncio

import aiohttp
import pytest
from aiohttp import web

from bridge.config import config_from_dict
from bridge.exceptions import (
    CircuitOpen,
    MissingValue,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamUnreadable,
)
from bridge.metrics import Metrics
from bridge.protocol.backoff import delay
from bridge.upstream.client import UpstreamClient, select


def fetch(client, session_id, etag, last_modified):
    """The state of one session, as the poller asks for it."""
    ctx = {"sessionId": session_id, "params": {}, "payload": {}, "user": {}, "session": {}}
    return client.fetch_state("state", client.cfg.state, ctx, None, etag, last_modified)


class Scripted:
    """A legacy app whose answers are scripted per path."""

    def __init__(self):
        self.script: dict[str, list] = {}
        self.seen: list[tuple[str, str, object, dict]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.seen.append((request.method, request.path, body, request.headers.copy()))
        answers = self.script.get(request.path, [200])
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if answer == "stall":
            await asyncio.sleep(5)
            answer = 200
        if isinstance(answer, tuple):
            status, headers = answer
            return web.json_response({"s": status}, status=status, headers=headers)
        if answer == 304:
            return web.Response(status=304)
        if answer == "text":
            return web.Response(text="plain")
        if answer == "badjson":
            return web.Response(text="{oops", content_type="application/json")
        return web.json_response(
            {"data": {"id": request.path, "n": len(self.seen)}}, status=answer,
            headers={"ETag": '"e1"'},
        )  # fmt: skip


@pytest.fixture
async def app_and_client(aiohttp_server):
    scripted = Scripted()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    server = await aiohttp_server(app)

    async def make(**upstream):
        cfg = config_from_dict(
            {
                "upstream": {
                    "url": str(server.make_url("")),
                    "timeout": "300ms",
                    "retry": {"attempts": 3, "initial": "10ms", "max": "20ms"},
                    "breaker": {"failures": 3, "recovery": "200ms"},
                    **upstream,
                }
            }
        )
        http = aiohttp.ClientSession()
        sessions.append(http)
        return UpstreamClient(cfg.upstream, http, Metrics()), cfg

    sessions: list[aiohttp.ClientSession] = []
    yield scripted, make
    for s in sessions:
        await s.close()


CTX = {"sessionId": "s1", "userId": "u1", "clientId": "c", "params": {}, "payload": {"vote": 3}}


async def test_templated_request_with_forwarded_headers(app_and_client):
    scripted, make = app_and_client
    client, cfg = await make()
    resp = await client.request("vote", cfg.upstream.commands["vote"], CTX, {"cookie": "a=b"})
    assert resp.status == 200
    method, path, body, headers = scripted.seen[0]
    assert (method, path, body) == ("PUT", "/api/sessions/s1/votes/u1", {"vote": 3})
    assert headers["cookie"] == "a=b"


async def test_missing_template_value_sends_nothing(app_and_client):
    scripted, make = app_and_client
    client, cfg = await make()
    with pytest.raises(MissingValue):
        await client.request("vote", cfg.upstream.commands["vote"], {**CTX, "payload": {}})
    assert scripted.seen == []


async def test_4xx_is_rejected_without_retry(app_and_client):
    scripted, make = app_and_client
    client, cfg = await make()
    scripted.script["/api/sessions/s1/reveal"] = [409]
    with pytest.raises(UpstreamRejected) as info:
        await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    assert info.value.status == 409 and info.value.code == "upstream_rejected"
    assert len(scripted.seen) == 1


async def test_500_on_a_non_idempotent_route_is_not_retried(app_and_client):
    scripted, make = app_and_client
    client, cfg = await make()
    scripted.script["/api/sessions/s1/reveal"] = [500, 200]
    with pytest.raises(UpstreamFailed) as info:
        await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    assert info.value.code == "upstream_error"
    assert len(scripted.seen) == 1


async def test_503_and_429_are_retried_on_any_route(app_and_client):
    scripted, make = app_and_client
    client, cfg = await make()
    scripted.script["/api/sessions/s1/reveal"] = [503, (429, {"Retry-After": "0"}), 200]
    resp = await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    assert resp.status == 200 and len(scripted.seen) == 3


async def test_idempotent_route_retries_5xx_and_timeouts_up_to_attempts(app_and_client):
    scripted, make = app_and_client
    client, cfg = await make()
    scripted.script["/api/sessions/s1/votes/u1"] = [500, "stall", 200]
    resp = await client.request("vote", cfg.upstream.commands["vote"], CTX)
    assert resp.status == 200 and len(scripted.seen) == 3
    scripted.seen.clear()
    scripted.script["/api/sessions/s1/votes/u1"] = [502]
    with pytest.raises(UpstreamFailed):
        await client.request("vote", cfg.upstream.commands["vote"], CTX)
    assert len(scripted.seen) == 3


async def test_timeout_on_non_idempotent_route(app_and_client):
    scripted, make = app_and_client
    client, cfg = await make()
    scripted.script["/api/sessions/s1/reveal"] = ["stall"]
    with pytest.raises(UpstreamTimeout) as info:
        await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    assert isinstance(info.value, TimeoutError)


async def test_connection_refused_is_retried_then_unavailable(unused_tcp_port_factory):
    port = unused_tcp_port_factory()
    cfg = config_from_dict(
        {"upstream": {"url": f"http://127.0.0.1:{port}", "retry": {"initial": "1ms", "max": "2ms"},
                      "breaker": {"failures": 10}}}
    )  # fmt: skip
    metrics = Metrics()
    async with aiohttp.ClientSession() as http:
        client = UpstreamClient(cfg.upstream, http, metrics)
        with pytest.raises(UpstreamUnavailable) as info:
            await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    assert info.value.code == "upstream_unavailable"
    assert metrics.upstream_retries.labels("reveal")._value.get() == 2


async def test_breaker_opens_then_half_opens(app_and_client):
    scripted, make = app_and_client
    client, cfg = await make()
    # 504: the app as a whole is unwell (a 500 of one session would not open it, see
    # test_one_sessions_500s_do_not_open_the_breaker)
    scripted.script["/api/sessions/s1/reveal"] = [504]
    for _ in range(3):
        with pytest.raises(UpstreamFailed):
            await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    assert client.breaker_state() == "open"
    with pytest.raises(CircuitOpen):
        await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    assert len(scripted.seen) == 3
    await asyncio.sleep(0.25)
    scripted.script["/api/sessions/s1/reveal"] = [200]
    await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    assert client.breaker_state() == "closed"


async def test_fetch_state_conditional_and_select(app_and_client):
    scripted, make = app_and_client
    client, _ = await make(state={"select": "data"})
    first = await fetch(client, "s1", None, None)
    assert first.changed and first.payload["id"] == "/api/sessions/s1" and first.etag == '"e1"'
    scripted.script["/api/sessions/s1"] = [304]
    second = await fetch(client, "s1", '"e1"', "Thu, 01 Jan 2026 00:00:00 GMT")
    assert not second.changed and second.etag == '"e1"'
    headers = scripted.seen[-1][3]
    assert headers["If-None-Match"] == '"e1"'
    assert headers["If-Modified-Since"] == "Thu, 01 Jan 2026 00:00:00 GMT"


async def test_non_json_bodies(app_and_client):
    # a route that does not use its answer is fine with any; one that does is strict
    scripted, make = app_and_client
    client, cfg = await make()
    reveal = cfg.upstream.commands["reveal"]
    for answer in ("text", "badjson"):
        scripted.script["/api/sessions/s1/reveal"] = [answer]
        assert (await client.request("reveal", reveal, CTX)).status == 200
    scripted.script["/api/sessions/s1"] = ["text"]
    with pytest.raises(UpstreamUnreadable, match="expected a JSON answer, got text/plain"):
        await fetch(client, "s1", None, None)
    scripted.script["/api/sessions/s1"] = ["badjson"]
    with pytest.raises(UpstreamUnreadable, match="not valid JSON"):
        await fetch(client, "s1", None, None)


def test_backoff_and_select():
    # the upstream retries use the one backoff of bridge/protocol/backoff.py (factor 2)
    def backoff(attempt, initial, maximum, jitter, rnd):
        return delay(attempt, initial, maximum, jitter=jitter, rnd=rnd)

    assert backoff(1, 0.2, 5.0, 0.5, 0.0) == 0.2
    assert backoff(3, 0.2, 5.0, 0.5, 0.0) == pytest.approx(0.8)
    assert backoff(100, 0.2, 5.0, 0.5, 0.999) == pytest.approx(5.0 * (1 - 0.4995))
    doc = {"a": {"b": [{"c": 1}]}}
    assert select(doc, "a.b.0.c") == 1
    assert select(doc, None) is doc
    assert select(doc, "a.x") is None
    assert select(doc, "a.b.5") is None


async def test_a_cancelled_half_open_trial_does_not_close_the_app_off_for_good(app_and_client):
    """Issue 11.1: the trial request is cancelled (its poller dropped, a join cut by
    the handshake timeout); the next request must still be let through."""
    scripted, make = app_and_client
    client, cfg = await make()
    scripted.script["/api/sessions/s1/reveal"] = [504]
    for _ in range(3):
        with pytest.raises(UpstreamFailed):
            await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    assert client.breaker_state() == "open"
    await asyncio.sleep(0.25)  # recovery: half-open
    scripted.script["/api/sessions/s1/reveal"] = ["stall"]
    trial = asyncio.create_task(client.request("reveal", cfg.upstream.commands["reveal"], CTX))
    await asyncio.sleep(0.05)
    assert len(scripted.seen) == 4, "the trial reached the app"
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    scripted.script["/api/sessions/s1/reveal"] = [200]
    resp = await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    assert resp.status == 200 and client.breaker_state() == "closed"


async def test_one_sessions_500s_do_not_open_the_breaker(app_and_client):
    """Issue 11.6 (upstream.md, "Failure isolation"): a route failing for one session."""
    scripted, make = app_and_client
    client, cfg = await make()
    scripted.script["/api/sessions/bad"] = [500]
    for _ in range(10):
        with pytest.raises(UpstreamFailed):
            await fetch(client, "bad", None, None)
    assert client.breaker_state() == "closed"
    assert (await fetch(client, "good", None, None)).changed
    # sessions that worked, failing one after the other: the app as a whole is unwell
    for sid in ("a", "b", "c"):
        assert (await fetch(client, sid, None, None)).changed
    for sid in ("a", "b", "c"):
        scripted.script[f"/api/sessions/{sid}"] = [500]
    for sid in ("a", "b", "bad", "b"):
        with pytest.raises(UpstreamFailed):
            await fetch(client, sid, None, None)
    assert client.breaker_state() == "closed", "two sessions that worked (threshold 3)"
    with pytest.raises(UpstreamFailed):
        await fetch(client, "c", None, None)
    assert client.breaker_state() == "open"


async def test_a_trial_answered_429_gives_the_slot_back(app_and_client):
    scripted, make = app_and_client
    client, cfg = await make(retry={"attempts": 2, "initial": "10ms", "max": "20ms"})
    scripted.script["/api/sessions/s1/reveal"] = [504]
    for _ in range(3):
        with pytest.raises(UpstreamFailed):
            await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    await asyncio.sleep(0.25)  # half-open
    scripted.script["/api/sessions/s1/reveal"] = [(429, {"Retry-After": "0"}), 200]
    resp = await client.request("reveal", cfg.upstream.commands["reveal"], CTX)
    assert resp.status == 200, "its own retry was let through as the next trial"
    assert client.breaker_state() == "closed"
