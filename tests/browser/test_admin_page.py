"""The admin page (/bridge/admin/) in real Chromium: sign in with the token, watch
numbers change as clients come and go, a reconnect wave in the history; the token
never in a URL. Writes tests/artifacts/admin.png for a person to look at."""

from __future__ import annotations

import asyncio
from pathlib import Path

from playwright.async_api import expect

ADMIN = {"admin": {"token": "sesame"}}


async def test_the_admin_page_live(make_stack, browser):
    stack = await make_stack(ADMIN)
    context = await browser.new_context(viewport={"width": 1200, "height": 900})
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    await page.goto(stack.url("/bridge/admin/"))
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#token", "wrong")
    await page.click("#login button")
    await expect(page.locator("#login-error")).to_have_text("that is not the admin token")
    await page.fill("#token", "sesame")
    await page.click("#login button")
    await expect(page.locator("#status")).to_contain_text("live", timeout=10_000)
    await expect(page.locator("#conn-total")).to_have_text("0")

    a = await stack.connect("planning", "alice")
    b = await stack.connect("planning", "bob", transport="sse")
    c = await stack.connect("retro", "carol", transport="poll")
    await expect(page.locator("#conn-total")).to_have_text("3", timeout=5_000)
    await expect(page.locator("#conn-sse b")).to_have_text("1")
    await expect(page.locator("#session-count")).to_have_text("2")
    await expect(page.locator("#sessions")).to_contain_text("planning")
    await expect(page.locator("#sessions")).to_contain_text("alice, bob")
    await a.command("vote", {"vote": "5"})
    await expect(page.locator("#up-breaker")).to_have_text("closed")
    await b.close()
    await expect(page.locator("#conn-total")).to_have_text("2", timeout=5_000)

    # a wave: many clients at once
    crowd = await asyncio.gather(*(stack.connect(f"standup{i}", f"w{i}") for i in range(30)))
    await expect(page.locator("#history")).to_contain_text("reconnect wave", timeout=5_000)
    await expect(page.locator("#conn-total")).to_have_text("32", timeout=5_000)
    # the chart has drawn a line per transport
    points = await page.locator("#chart polyline[data-transport=websocket]").get_attribute("points")
    assert points and len(points.split(" ")) >= 3

    assert "sesame" not in page.url
    assert await page.evaluate("sessionStorage.getItem('sessionBridgeAdminToken')") == "sesame"
    out = Path(__file__).resolve().parents[1] / "artifacts" / "admin.png"
    out.parent.mkdir(exist_ok=True)
    await page.screenshot(path=str(out), full_page=True)
    assert out.stat().st_size > 20_000

    for client in crowd:
        await client.close()
    await expect(page.locator("#conn-total")).to_have_text("2", timeout=5_000)
    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('sessionBridgeAdminToken')") is None
    # the one refused request: the wrong token, on purpose
    assert [p for p in problems if "status of 401" not in p] == [], problems
    await c.close()
    await a.close()
