"""The planning-poker demo page on the shipped browser client, in real Chromium."""

from __future__ import annotations

from playwright.async_api import Page, expect


async def join(page: Page, url: str, name: str) -> None:
    await page.goto(url)
    await page.fill("#session", "room1")
    await page.fill("#name", name)
    await page.click("#join button")
    await expect(page.locator("#badge")).to_contain_text("websocket", timeout=10_000)


async def test_two_pages_vote_and_reveal(make_stack, browser):
    stack = await make_stack(demo_page=True)
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


async def test_the_page_resumes_after_the_socket_drops(make_stack, browser):
    stack = await make_stack(demo_page=True, overrides={"presence": {"grace": "10s"}})
    page = await (await browser.new_context()).new_page()
    await join(page, stack.url("/"), "Carol")
    await expect(page.locator("#users tr")).to_have_count(1, timeout=10_000)
    client_id = await page.evaluate("window.pokerManager().clientId")
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


async def test_a_screenshot_of_the_demo_page_for_people(make_stack, browser):
    """Writes tests/artifacts/demo.png (ignored by git) for a person to look at."""
    from pathlib import Path

    stack = await make_stack(demo_page=True)
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
