"""The React example (clients/js/examples/react) in real Chromium: a Vite build of
a page that imports `session-bridge-client` and `session-bridge-client/react` by
name (the package linked with file:), served through the bridge."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from playwright.async_api import expect

PACKAGE = Path(__file__).parents[2] / "clients" / "js"
EXAMPLE = PACKAGE / "examples" / "react"


def _npm(*args: str, cwd: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: run `make test`, which installs it")
    done = subprocess.run([npm, *args], cwd=cwd, timeout=300, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"npm {' '.join(args)} in {cwd} failed:\n{done.stdout}\n{done.stderr}")


def _installed(folder: Path) -> bool:
    marker = folder / "node_modules" / ".package-lock.json"
    lock = folder / "package-lock.json"
    return marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime


@pytest.fixture(scope="session")
def vite_pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The example's build (npm run build: tsc --noEmit, vite build) as bridge pages."""
    for folder in (PACKAGE, EXAMPLE):
        if not _installed(folder):
            _npm("ci", "--no-audit", "--no-fund", cwd=folder)
    _npm("run", "build", cwd=PACKAGE)  # the example imports the package's dist/
    out = tmp_path_factory.mktemp("vite")
    vite_args = ["--outDir", str(out), "--emptyOutDir", "--logLevel", "warn"]
    _npm("run", "build", "--", *vite_args, cwd=EXAMPLE)
    pages = {"/" + p.relative_to(out).as_posix(): p.read_text() for p in out.rglob("*.js")}
    assert pages, "vite built no script"
    pages["/"] = (out / "index.html").read_text()
    return pages


@pytest.mark.parametrize("transports", ["websocket,sse,poll", "poll"])
async def test_the_vite_example_connects_renders_updates_and_votes(
    make_stack, browser, vite_pages, transports
):
    stack = await make_stack(pages=vite_pages)
    page = await (await browser.new_context()).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(stack.url(f"/?s=vite&u=r1&t={transports}"))
    expected = transports.split(",")[0]
    await expect(page.locator("#connected")).to_have_text("true", timeout=10_000)
    await expect(page.locator("#type")).to_have_text(expected)
    await expect(page.locator("#users")).to_have_text("1")
    await expect(page.locator("#online")).to_have_text("r1")
    await expect(page.locator("#events")).to_contain_text(f"connected over {expected}")
    await page.click("#vote")
    await expect(page.locator("#voted")).to_have_text("yes")
    await page.click("#reveal")
    await expect(page.locator("#revealed")).to_have_text("yes")
    assert int(await page.locator("#updates").text_content() or "0") >= 3
    assert [c["body"] for c in stack.commands("/votes/r1")] == [{"vote": "13"}]
    # Strict mode mounted twice: the first manager was closed. Its WebSocket is gone at
    # once; an abandoned poll client is held until heartbeat.timeout (no poll arrives).
    clients = stack.bridge.sessions["vite"].conns
    for _ in range(20):  # a poll client is busy while its poll is held, nearly always
        live = [c for c in clients.values() if c.transport == "websocket" or c.busy]
        if len(live) == 1:
            break
        await asyncio.sleep(0.05)
    assert len(live) == 1, clients
    assert errors == []
    if expected == "websocket":
        # Unmounting (closing the page) closes the manager: the bridge sees it go.
        await page.close()
        for _ in range(50):
            if not clients:
                break
            await asyncio.sleep(0.1)
        assert not clients
