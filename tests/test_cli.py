"""The console entry points as an operator runs them: real processes, real sockets."""

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from bridge.demo.backend import make_backend_app


async def start(*args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
    )  # fmt: skip


async def read_until(proc: asyncio.subprocess.Process, needle: str, timeout: float = 15) -> str:
    seen = []
    assert proc.stdout is not None
    async with asyncio.timeout(timeout):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError("process ended: " + "".join(seen))
            seen.append(line)
            if needle in line:
                return line


async def stop(proc: asyncio.subprocess.Process) -> int:
    """Wait for the process to end, sending SIGTERM if it does not end by itself."""
    try:
        return await asyncio.wait_for(proc.wait(), 2)
    except TimeoutError:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(15):
        return await proc.wait()


async def test_run_with_a_config_file_and_port_override(
    tmp_path: Path, aiohttp_server, unused_tcp_port_factory
):
    backend = await aiohttp_server(make_backend_app())
    port = unused_tcp_port_factory()
    config = tmp_path / "bridge.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: 1}}\nupstream: {{url: '{backend.make_url('')}'}}\n"
    )
    proc = await start("run", "--config", str(config), "--port", str(port))
    try:
        await read_until(proc, f"listening on http://127.0.0.1:{port}")
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(
                f"http://127.0.0.1:{port}/api/websocket", params={"sessionId": "s", "userId": "u"}
            ) as ws:
                welcome = await ws.receive_json(timeout=5)
                assert welcome["type"] == "welcome"

                async def read_to_close() -> int | None:
                    while not (await ws.receive(timeout=10)).type.name.startswith("CLOS"):
                        pass
                    return ws.close_code

                reader = asyncio.create_task(read_to_close())
                await asyncio.sleep(0.2)
                proc.send_signal(signal.SIGTERM)
                assert await reader == 1012, "SIGTERM drains: clients reconnect elsewhere"
    finally:
        code = await stop(proc)
    assert code == 0


async def test_demo_prints_a_url_that_serves_the_planning_poker_page(unused_tcp_port_factory):
    port = unused_tcp_port_factory()
    proc = await start("demo", "--port", str(port))
    try:
        line = await read_until(proc, "planning poker through the bridge:")
        url = line.split(": ", 1)[1].strip()
        assert url == f"http://127.0.0.1:{port}/"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as r:
                page = await r.text()
                assert r.status == 200 and 'from "/bridge/client.js"' in page
            async with http.ws_connect(
                url + "api/websocket", params={"sessionId": "demo", "userId": "u", "name": "A"}
            ) as ws:
                assert (await ws.receive_json(timeout=5))["type"] == "welcome"
                while True:
                    msg = await ws.receive_json(timeout=5)
                    if msg["type"] == "session":
                        assert msg["payload"]["users"][0]["name"] == "A"
                        break
    finally:
        await stop(proc)


async def test_run_without_a_token_secret_says_once_what_a_restart_costs(
    tmp_path: Path, aiohttp_server, unused_tcp_port_factory
):
    backend = await aiohttp_server(make_backend_app())
    port = unused_tcp_port_factory()
    config = tmp_path / "bridge.yaml"
    config.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\nupstream: {{url: '{backend.make_url('')}'}}\n"
    )
    proc = await start("run", "--config", str(config))
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(15):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "process ended: " + "".join(lines)
                lines.append(line)
                if "listening on" in line:
                    break
        proc.send_signal(signal.SIGHUP)  # a reload does not say it again
        await asyncio.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None
        lines += [(await proc.stdout.read()).decode()]
        await stop(proc)
    said = [line for line in "".join(lines).splitlines() if "token_secret is not set" in line]
    assert len(said) == 1, lines
    assert "after a restart" in said[0] and "connects afresh" in said[0]
    assert "resumed=false" in said[0] and "Set security.token_secret" in said[0]
