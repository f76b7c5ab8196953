"""The React hook (/bridge/use-connection-manager.js) in a page using real React
from the npm registry, bundled by esbuild for the test, in real Chromium."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from playwright.async_api import expect

APP = Path(__file__).parent / "react_app"
HTML = '<!doctype html><meta charset="utf-8"><div id="root"></div><script type="module" src="/react.js"></script>'


@pytest.fixture(scope="session")
def react_bundle(tmp_path_factory: pytest.TempPathFactory) -> str:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: run `make test`, which installs it")
    if not (APP / "node_modules" / "react").exists():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=APP, check=True, timeout=300,
            capture_output=True,
        )  # fmt: skip
    out = tmp_path_factory.mktemp("react") / "bundle.js"
    subprocess.run(
        [str(APP / "node_modules" / ".bin" / "esbuild"), "app.jsx", "--bundle", "--format=esm",
         "--jsx=automatic", f"--outfile={out}", '--define:process.env.NODE_ENV="development"',
         "--log-level=warning"],
        cwd=APP, check=True, timeout=120, env={**os.environ, "NODE_PATH": str(APP / "node_modules")},
    )  # fmt: skip
    return out.read_text()


@pytest.mark.parametrize("transports", ["websocket,sse,poll", "poll"])
async def test_the_hook_renders_updates_and_reports_the_connection(
    make_stack, browser, react_bundle, transports
):
    stack = await make_stack(pages={"/": HTML, "/react.js": react_bundle})
    page = await (await browser.new_context()).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(stack.url(f"/?s=react&u=r1&t={transports}"))
    expected = transports.split(",")[0]
    await expect(page.locator("#connected")).to_have_text("true", timeout=10_000)
    await expect(page.locator("#type")).to_have_text(expected)
    await expect(page.locator("#users")).to_have_text("1")
    await expect(page.locator("#online")).to_have_text("r1")
    await page.click("#vote")
    await expect(page.locator("#voted")).to_have_text("yes")
    await page.click("#reveal")
    await expect(page.locator("#revealed")).to_have_text("yes")
    assert int(await page.locator("#updates").text_content()) >= 3
    # Strict mode mounted twice: the first manager was closed. Its WebSocket is gone at
    # once; an abandoned poll client is held until heartbeat.timeout (no poll arrives).
    clients = stack.bridge.sessions["react"].conns
    for _ in range(20):  # a poll client is busy while its poll is held, nearly always
        live = [c for c in clients.values() if c.transport == "websocket" or c.busy]
        if len(live) == 1:
            break
        await asyncio.sleep(0.05)
    assert len(live) == 1, clients
    assert [c["body"] for c in stack.commands("/votes/r1")] == [{"vote": "13"}]
    assert errors == []
    if expected == "websocket":
        # Unmounting (closing the page) closes the manager: the bridge sees it go.
        await page.close()
        for _ in range(50):
            if not clients:
                break
            await asyncio.sleep(0.1)
        assert not clients
