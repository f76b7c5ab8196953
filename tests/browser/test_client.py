"""The shipped browser client (/bridge/client.js) in real Chromium: fallback,
return to WebSocket, the outbox across a bridge restart, and backoff."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Page

from tests.conftest import Stack

PAGE = """<!doctype html><meta charset="utf-8"><title>client test</title>
<script type="module">
import { ConnectionManager } from "/bridge/client.js";
const q = new URLSearchParams(location.search);
const m = new ConnectionManager({ sessionId: q.get("s"), userId: q.get("u"), debug: true,
  outboxLimit: Number(q.get("limit") || 500) });
window.log = { states: [], seqs: [], transports: [], connects: [], disconnects: [], errors: [] };
m.onSessionUpdate((st, seq) => { log.states.push(st); log.seqs.push(seq); });
m.onPresence((online, seq) => log.seqs.push(seq));
m.onTransportChange((t) => log.transports.push(t));
m.onConnect((i) => log.connects.push(i));
m.onDisconnect((r) => log.disconnects.push(r));
m.onError((e) => log.errors.push(e.code));
window.mgr = m;
m.connect();
</script>"""

FAST_RECONNECT = {
    "reconnect": {"initial": "200ms", "max": "1500ms", "factor": 2, "jitter": 0.5,
                  "upgrade_interval": "1500ms"},
    "presence": {"grace": "30s"},
}  # fmt: skip


async def open_page(browser, stack: Stack, session: str, user: str, extra: str = "") -> Page:
    page = await (await browser.new_context()).new_page()
    page.on("pageerror", lambda exc: print("page error:", exc))
    await page.goto(stack.url(f"/t?s={session}&u={user}{extra}"))
    return page


async def wait_js(page: Page, expression: str, timeout: float = 10.0) -> None:
    # polling by interval: requestAnimationFrame (the default) may not run in a
    # headless page that is not in front
    await page.wait_for_function(expression, timeout=timeout * 1000, polling=100)


def contiguous(seqs: list[int]) -> bool:
    """Strictly increasing, and no gaps except where a reset starts over."""
    return all(b == a + 1 for a, b in zip(seqs, seqs[1:], strict=False))


async def push(stack: Stack, session: str, state: dict) -> None:
    async with stack.http.post(
        stack.url("/bridge/push"), json={"sessionId": session, "state": state},
        headers={"Authorization": "Bearer push-secret"},
    ) as r:  # fmt: skip
        assert r.status == 202


async def test_fallback_to_sse_then_poll_and_back_to_websocket(make_stack, browser):
    stack = await make_stack(
        {**FAST_RECONNECT, "transports": {"websocket": False}}, pages={"/t": PAGE}
    )
    on_sse = await open_page(browser, stack, "fb", "a")
    await wait_js(on_sse, "window.mgr && window.mgr.getState().connectionType === 'sse'")
    cfg = stack.bridge.cfg
    stack.bridge.cfg = cfg.replace(transports=type(cfg.transports)(websocket=False, sse=False))
    on_poll = await open_page(browser, stack, "fb", "b")
    await wait_js(on_poll, "window.mgr && window.mgr.getState().connectionType === 'poll'")
    for i in range(5):
        await push(stack, "fb", {"i": i})
        await asyncio.sleep(0.1)
    stack.bridge.cfg = cfg.replace(transports=type(cfg.transports)())
    for page in (on_sse, on_poll):
        await wait_js(page, "window.mgr.getState().connectionType === 'websocket'", timeout=6)
    for i in range(5, 10):
        await push(stack, "fb", {"i": i})
    for page in (on_sse, on_poll):
        await wait_js(page, "log.states.length && log.states.at(-1).i === 9")
        seqs = await page.evaluate("log.seqs")
        assert contiguous(seqs), seqs
        states = [s["i"] for s in await page.evaluate("log.states") if "i" in s]
        assert states == sorted(set(states)), states
        transports = await page.evaluate("log.transports")
        assert transports[-1] == "websocket" and transports[0] in ("sse", "poll")
    # the fallbacks were closed after the switch: one connection per page remains
    conns = stack.bridge.sessions["fb"].conns.values()
    assert sorted(c.transport for c in conns) == ["websocket", "websocket"]


async def test_votes_queued_while_the_bridge_is_down_are_delivered_once(make_stack, browser):
    stack = await make_stack(FAST_RECONNECT, pages={"/t": PAGE})
    page = await open_page(browser, stack, "cut", "voter")
    await wait_js(page, "window.mgr && window.mgr.getState().isConnected")
    await wait_js(page, "log.states.length > 0")
    await stack.stop_bridge()  # the bridge is gone
    await wait_js(page, "!window.mgr.getState().isConnected")
    await page.evaluate(
        "() => { window.acks = []; for (const v of ['1','2','3']) "
        "mgr.sendVote(v).then((a) => acks.push(a.status), (e) => acks.push('err:' + e.code)); }"
    )
    assert (await page.evaluate("mgr.getState().queued")) == 3
    await asyncio.sleep(2.5)  # several reconnect attempts fail meanwhile
    assert (await page.evaluate("mgr.getState().queued")) == 3
    await stack.restart_bridge()
    await wait_js(page, "window.acks.length === 3", timeout=15)
    assert await page.evaluate("window.acks") == ["ok", "ok", "ok"]
    assert (await page.evaluate("mgr.getState().queued")) == 0
    votes = [c["body"]["vote"] for c in stack.commands("/votes/voter")]
    assert votes == ["1", "2", "3"], "each vote reached the backend once, in order"
    # The bridge drained on its way down: the first delay is uniform(0, retry_after)
    # of its reconnect notice. The next ones followed the advertised backoff
    # (initial 200 ms, factor 2, max 1.5 s, jitter 0.5): within [(1 - jitter) d, d].
    delays = await page.evaluate("mgr.delays")
    assert len(delays) >= 3, delays
    assert 0 <= delays[0] <= 2000, delays
    for n, delay in enumerate(delays[1:], start=2):
        bound = min(1500, 200 * 2 ** (n - 1))
        assert 0.5 * bound - 1 <= delay <= bound + 1, (n, delay, delays)
    await wait_js(page, "window.mgr.getState().connectionType === 'websocket'")


async def test_pages_converge_after_a_bridge_restart(make_stack, browser):
    stack = await make_stack(FAST_RECONNECT, pages={"/t": PAGE})
    pages = [await open_page(browser, stack, "conv", u) for u in ("p1", "p2", "p3")]
    for page in pages:
        await wait_js(page, "window.mgr && window.mgr.getState().isConnected")
    await pages[0].evaluate("() => { mgr.sendVote('8'); }")
    epoch = await pages[0].evaluate("mgr.epoch")
    await stack.restart_bridge(down=0.5)
    await pages[1].evaluate("() => { mgr.sendVote('5'); }")  # queued or sent, it lands once
    for page in pages:
        await wait_js(page, f"mgr.getState().isConnected && mgr.epoch !== '{epoch}'", timeout=15)
    final = None
    for _ in range(50):
        final = await stack.state("conv")
        if sum(1 for u in final["users"] if u.get("voted")) == 2:
            break
        await asyncio.sleep(0.1)
    for page in pages:
        await page.wait_for_function(
            "(want) => JSON.stringify(mgr.state) === want",
            arg=_canonical(final), timeout=10_000, polling=100,
        )  # fmt: skip
    assert len(stack.commands("/votes/p2")) == 1


def _canonical(state: dict) -> str:
    import json

    return json.dumps(state, separators=(",", ":"))


async def test_the_online_event_retries_at_once_and_the_outbox_reports_overflow(
    make_stack, browser
):
    slow = {**FAST_RECONNECT, "reconnect": {"initial": "20s", "max": "30s", "jitter": 0.1}}
    stack = await make_stack(slow, pages={"/t": PAGE})
    page = await open_page(browser, stack, "on", "u1", "&limit=2")
    await wait_js(page, "window.mgr && window.mgr.getState().isConnected")
    await stack.stop_bridge()
    await wait_js(page, "!mgr.getState().isConnected")
    await page.evaluate(
        "() => { window.results = []; for (const v of ['1', '2', '3']) mgr.sendVote(v)"
        ".then((a) => results.push(v + ':' + a.status), (e) => results.push(v + ':' + e.code)); }"
    )
    await wait_js(page, "results.includes('1:outbox_overflow')")
    assert "outbox_overflow" in await page.evaluate("log.errors")
    assert await page.evaluate("mgr.getState().queued") == 2
    await stack.restart_bridge()
    # The backoff now waits about 20 s; the browser coming back online retries at once.
    await page.evaluate("() => window.dispatchEvent(new Event('online'))")
    await wait_js(page, "mgr.getState().isConnected", timeout=5)
    await wait_js(page, "results.length === 3", timeout=5)
    assert sorted(await page.evaluate("results")) == ["1:outbox_overflow", "2:ok", "3:ok"]
    assert [c["body"]["vote"] for c in stack.commands("/votes/u1")] == ["2", "3"]


async def test_a_failed_post_of_commands_is_retried_while_the_transport_stays_up(
    make_stack, browser
):
    """Over SSE a command goes by POST; a POST that fails (here: aborted by the
    network) must be sent again although the event stream never drops."""
    stack = await make_stack(FAST_RECONNECT, pages={"/t": PAGE.replace(
        "debug: true,", 'debug: true, transports: ["sse"],')})  # fmt: skip
    page = await open_page(browser, stack, "retry", "u1")
    await wait_js(page, "window.mgr && window.mgr.getState().isConnected")
    aborted: list[str] = []

    async def once(route) -> None:
        if not aborted:
            aborted.append(route.request.url)
            await route.abort()
        else:
            await route.continue_()

    await page.route("**/api/messages**", once)
    await page.evaluate(
        "() => { window.results = []; mgr.sendVote('8').then((a) => results.push(a.status)); }"
    )
    await wait_js(page, "results.length === 1", timeout=10)
    assert await page.evaluate("results") == ["ok"] and len(aborted) == 1
    assert await page.evaluate("log.disconnects.length") == 0  # the stream never dropped
    assert [c["body"]["vote"] for c in stack.commands("/votes/u1")] == ["8"]


# The transports a page uses, from its URL (&t=sse,poll); the default order without.
PAGE_T = PAGE.replace(
    "debug: true,",
    'debug: true, transports: (q.get("t") || "websocket,sse,poll").split(","),',
)


@pytest.mark.parametrize("transport", ["websocket", "sse", "poll"])
async def test_a_page_comes_back_afresh_after_a_restart_without_a_secret(
    make_stack, browser, transport
):
    """Without security.token_secret the restarted bridge refuses the page's
    resume token (4401 / 401): the page drops it and connects afresh, its
    queued vote is delivered once, and the state keeps coming."""
    stack = await make_stack(
        {**FAST_RECONNECT, "security": {"token_secret": ""}}, pages={"/t": PAGE_T}
    )
    page = await open_page(browser, stack, "nosecret", "u1", f"&t={transport}")
    await wait_js(page, "window.mgr && mgr.getState().isConnected && log.states.length > 0")
    assert await page.evaluate("mgr.getState().connectionType") == transport
    epoch = await page.evaluate("mgr.epoch")
    await stack.stop_bridge()
    await wait_js(page, "!mgr.getState().isConnected")
    await page.evaluate(
        "() => { window.acks = []; mgr.sendVote('3')"
        ".then((a) => acks.push(a.status), (e) => acks.push('err:' + e.code)); }"
    )
    await stack.restart_bridge()
    await wait_js(page, f"mgr.getState().isConnected && mgr.epoch !== '{epoch}'", timeout=15)
    connects = await page.evaluate("log.connects")
    assert connects[-1]["resumed"] is False, connects
    assert await page.evaluate("mgr.getState().connectionType") == transport
    await wait_js(page, "window.acks.length === 1")
    assert await page.evaluate("window.acks") == ["ok"]
    assert [c["body"]["vote"] for c in stack.commands("/votes/u1")] == ["3"]
    await push(stack, "nosecret", {"after": "restart"})
    await wait_js(page, "log.states.at(-1).after === 'restart'")
    errors = await page.evaluate("log.errors")
    assert "close_4401" not in errors and "unauthorized" not in errors, errors


async def test_the_reconnect_policy_of_the_page_matches_the_protocol(make_stack, browser):
    """backoffDelay, endingOf and reconnectDelay as exported by /bridge/client.js:
    the same values as bridge/protocol/backoff.py for each way a transport ends."""
    stack = await make_stack(FAST_RECONNECT, pages={"/t": PAGE})
    page = await open_page(browser, stack, "policy", "u1")
    got = await page.evaluate(
        """async () => {
          const { backoffDelay, endingOf, reconnectDelay } = await import("/bridge/client.js");
          const cfg = { initial_ms: 1000, max_ms: 30000, factor: 2, jitter: 0.5 };
          return {
            backoff: [1, 2, 3, 6, 7, 5000].map((n) => backoffDelay(n, cfg, 0)),
            jittered: backoffDelay(3, cfg, 0.5),
            unbounded: backoffDelay(5000, { ...cfg, max_ms: Infinity }, 0) === 1000 * 2 ** 1000,
            endings: [
              endingOf({}), endingOf({ closeCode: 1012 }), endingOf({ closeCode: 1013 }),
              endingOf({ status: 503 }), endingOf({ closeCode: 1006 }),
              endingOf({ reason: "draining" }), endingOf({ reason: "overloaded" }),
              endingOf({ reason: "draining", closeCode: 1013 }),
            ],
            delays: [
              reconnectDelay(5000, 2000, "draining", 0.25), reconnectDelay(300, 2000, "overloaded", 0.5),
              reconnectDelay(5000, 2000, "overloaded", 0.5), reconnectDelay(300, null, "draining", 0.5),
              reconnectDelay(300, 2000, "lost", 0.5),
            ],
          };
        }"""
    )
    endings = ["lost", "draining", "overloaded", "overloaded", "lost", "draining", "overloaded"]
    assert got == {
        "backoff": [1000, 2000, 4000, 30000, 30000, 30000],
        "jittered": 3000,
        "unbounded": True,
        "endings": [*endings, "draining"],
        "delays": [500, 2000, 5000, 300, 300],
    }


async def test_a_503_while_connecting_waits_at_least_retry_after(make_stack, browser):
    """A poll refused 503 (code draining, Retry-After: 1) while connecting: the
    next try waits max(backoff, 1 s), not uniform(0, 1 s)."""
    stack = await make_stack(FAST_RECONNECT, pages={"/t": PAGE_T})
    refused: list[str] = []

    async def first_refused(route) -> None:
        if not refused:
            refused.append(route.request.url)
            await route.fulfill(
                status=503, headers={"Retry-After": "1"}, content_type="application/json",
                body='{"error": {"code": "draining", "message": "server restarting"}}',
            )  # fmt: skip
        else:
            await route.continue_()

    context = await browser.new_context()
    await context.route("**/api/poll**", first_refused)
    page = await context.new_page()
    await page.goto(stack.url("/t?s=busy&u=u1&t=poll"))
    await wait_js(page, "window.mgr && mgr.getState().isConnected", timeout=10)
    assert len(refused) == 1
    assert await page.evaluate("mgr.delays") == [1000]
