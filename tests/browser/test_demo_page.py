"""The planning-poker demo page on the shipped browser client, in real Chromium.

The page is the legacy app's (bridge/demo/backend.py serves it, with its login);
the browser loads it through the bridge's pass-through, so the bridge serves
none of the app's files itself, only its own /bridge/client.js."""

from __future__ import annotations

from playwright.async_api import Page, expect


async def login(page: Page, url: str, name: str) -> None:
    await page.goto(url)
    await page.fill("#name", name)
    await page.click("#login button")
    await expect(page.locator("#me")).to_have_text(name, timeout=10_000)


async def join(page: Page, url: str, name: str) -> None:
    await login(page, url, name)
    await page.fill("#session", "room1")
    await page.click("#join button")
    await expect(page.locator("#badge")).to_contain_text("websocket", timeout=10_000)


async def test_two_pages_vote_and_reveal(make_stack, browser):
    stack = await make_stack()
    url = stack.url("/")
    alice = await (await browser.new_context()).new_page()
    bob = await (await browser.new_context()).new_page()
    errors: list[str] = []
    for page in (alice, bob):
        page.on("pageerror", lambda exc: errors.append(str(exc)))
    await join(alice, url, "Alice")
    await join(bob, url, "Bob")
    for page in (alice, bob):
        await expect(page.locator("#users tr")).to_have_count(2, timeout=10_000)
    await alice.click("#cards button:text-is('5')")
    await bob.click("#cards button:text-is('8')")
    await expect(alice.locator("#users")).to_contain_text("✓")
    await bob.click("#reveal")
    for page in (alice, bob):
        await expect(page.locator("#round")).to_contain_text("revealed", timeout=10_000)
        await expect(page.locator("#users")).to_contain_text("5")
        await expect(page.locator("#users")).to_contain_text("8")
    state = await stack.state("room1")
    assert state["revealed"] and sorted(u["vote"] for u in state["users"]) == ["5", "8"]
    assert errors == []
    # the app minted the players' ids at login; the bridge carried each browser's
    # login cookie to the app with its join and its vote
    ids = {u["name"]: u["id"] for u in state["users"]}
    for name in ("Alice", "Bob"):
        joins = [c for c in stack.commands("/join") if c["body"]["userId"] == ids[name]]
        votes = stack.commands(f"/votes/{ids[name]}")
        assert len(joins) == 1 and len(votes) == 1
        for c in joins + votes:
            assert "poker_login=" in c["headers"].get("Cookie", ""), c
    # a new round from the page
    await alice.click("#reset")
    for page in (alice, bob):
        await expect(page.locator("#round")).to_have_text("round 2", timeout=10_000)
    assert (await stack.state("room1"))["round"] == 2


async def test_the_page_resumes_after_the_socket_drops(make_stack, browser):
    stack = await make_stack(overrides={"presence": {"grace": "10s"}})
    page = await (await browser.new_context()).new_page()
    await join(page, stack.url("/"), "Carol")
    await expect(page.locator("#users tr")).to_have_count(1, timeout=10_000)
    client_id = await page.evaluate("window.pokerManager().clientId")
    me = await page.evaluate("fetch('/api/me').then((r) => r.json())")
    # Drop the socket from the server side, as a network failure would.
    conn = stack.bridge.sessions["room1"].conns[client_id]
    conn.ws._writer.transport.abort()
    await expect(page.locator("#badge")).to_contain_text("websocket", timeout=15_000)
    other = await stack.connect("room1", "dave", name="Dave")
    await other.command("vote", {"vote": "3"})
    await expect(page.locator("#users tr")).to_have_count(2, timeout=10_000)
    state = await page.evaluate("window.pokerManager().getState()")
    assert state["isConnected"] and state["connectionType"] == "websocket"
    assert state["reconnectAttempts"] >= 1
    assert await page.evaluate("window.pokerManager().clientId") == client_id
    assert stack.commands("/leave") == []
    # the resumed socket still carries the login: the app still takes its votes
    await page.click("#cards button:text-is('8')")
    await expect(page.locator("#users")).to_contain_text("✓")
    assert len(stack.commands(f"/votes/{me['id']}")) == 1


async def test_a_screenshot_of_the_demo_page_for_people(make_stack, browser):
    """Writes tests/artifacts/demo.png (ignored by git) for a person to look at."""
    from pathlib import Path

    stack = await make_stack()
    pages = []
    for name, card in (("Ada", "5"), ("Brian", "8"), ("Chen", "13")):
        page = await (await browser.new_context(viewport={"width": 900, "height": 600})).new_page()
        await join(page, stack.url("/"), name)
        pages.append((page, card))
    for page, card in pages:
        await expect(page.locator("#users tr")).to_have_count(3, timeout=10_000)
        await page.click(f"#cards button:text-is('{card}')")
    await pages[0][0].click("#reveal")
    shot = pages[0][0]
    await expect(shot.locator("#round")).to_contain_text("revealed", timeout=10_000)
    await expect(shot.locator("#users")).to_contain_text("13")
    out = Path(__file__).resolve().parents[1] / "artifacts" / "demo.png"
    out.parent.mkdir(exist_ok=True)
    await shot.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 10_000


async def test_the_login_is_the_apps_and_logging_out_leaves_the_table(make_stack, browser):
    stack = await make_stack()
    page = await (await browser.new_context()).new_page()
    await page.goto(stack.url("/"))
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#join")).to_be_hidden()  # not logged in: nothing to join
    await join(page, stack.url("/"), "Erin")
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["poker_login"]["httpOnly"]  # set by the app, through the bridge
    await page.reload()  # the cookie keeps the login
    await expect(page.locator("#me")).to_have_text("Erin", timeout=10_000)
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    assert "poker_login" not in {c["name"] for c in await page.context.cookies()}
