"""Operating the bridge as a process: SIGHUP reload, SIGTERM drain to a second
instance under load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aiohttp

from bridge.client import BridgeClient
from bridge.demo.backend import BACKEND, make_backend_app


async def start_bridge(config: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "run", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while b"listening on" not in await proc.stdout.readline():
            pass
    return proc


async def read_log_until(proc: asyncio.subprocess.Process, needle: str) -> str:
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        while True:
            line = (await proc.stdout.readline()).decode()
            assert line, "the process ended"
            if needle in line:
                return line


def write_config(path: Path, port: int, upstream: str, extra: str = "") -> None:
    path.write_text(
        f"listen: {{host: 127.0.0.1, port: {port}}}\n"
        f"upstream: {{url: '{upstream}', state: {{every: 200ms}}}}\n"
        "security: {token_secret: shared-secret}\n"
        "shutdown: {timeout: 5s}\n"
        "reconnect: {initial: 100ms, max: 500ms}\n" + extra
    )


async def test_sighup_applies_a_good_file_and_keeps_the_old_one_for_a_bad_one(
    tmp_path: Path, aiohttp_server, unused_tcp_port_factory
):
    backend = await aiohttp_server(make_backend_app())
    port = unused_tcp_port_factory()
    config = tmp_path / "bridge.yaml"
    write_config(config, port, str(backend.make_url("")))
    proc = await start_bridge(config)
    poll = f"http://127.0.0.1:{port}/api/poll"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(poll, params={"sessionId": "s", "userId": "u"}) as r:
                assert r.status == 200
            write_config(config, port, str(backend.make_url("")), "transports: {poll: false}\n")
            proc.send_signal(signal.SIGHUP)
            await read_log_until(proc, "configuration reloaded")
            async with http.get(poll, params={"sessionId": "s", "userId": "u"}) as r:
                assert r.status == 404, "the reloaded file turned poll off"
            config.write_text("listen: {port: nope}\nupstream: {}\n")
            proc.send_signal(signal.SIGHUP)
            line = await read_log_until(proc, "reload of")
            assert "refused" in line and "listen.port" in line
            async with http.get(poll, params={"sessionId": "s", "userId": "u"}) as r:
                assert r.status == 404, "a bad file keeps the running configuration"
            async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            await proc.wait()


class SwitchingRelay:
    """A TCP relay standing in for the load balancer: new connections go to
    ``target``, which the test moves once an instance is told to stop."""

    def __init__(self, target: int) -> None:
        self.target = target

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        with contextlib.suppress(Exception):
            w.close()

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            cw.close()
            return
        await asyncio.gather(self._pipe(cr, sw), self._pipe(sr, cw))


async def test_sigterm_under_load_moves_every_client_to_another_instance(
    tmp_path: Path, aiohttp_server, unused_tcp_port_factory
):
    backend_server = await aiohttp_server(make_backend_app())
    backend = backend_server.app[BACKEND]
    upstream = str(backend_server.make_url(""))
    port_a, port_b = unused_tcp_port_factory(), unused_tcp_port_factory()
    write_config(tmp_path / "a.yaml", port_a, upstream)
    write_config(tmp_path / "b.yaml", port_b, upstream)
    a = await start_bridge(tmp_path / "a.yaml")
    b = await start_bridge(tmp_path / "b.yaml")
    relay = SwitchingRelay(port_a)
    base = f"http://127.0.0.1:{await relay.start()}"
    transports = ["websocket", "sse", "poll"]
    clients = [
        BridgeClient(base, "drain", f"u{i}", transports=[transports[i % 3]], poll_wait=1)
        for i in range(12)
    ]
    try:
        await asyncio.gather(*(c.connect() for c in clients))
        acks = await asyncio.gather(*(c.send_vote(str(i)) for i, c in enumerate(clients)))
        assert all(x["status"] == "ok" for x in acks)
        # SIGTERM to A; the load balancer sends new connections to B from now on.
        relay.target = port_b
        a.send_signal(signal.SIGTERM)
        # Commands keep coming during the drain: each is acked once, wherever it lands.
        late = asyncio.gather(*(c.send_reveal() if i == 0 else c.send("vote", {"vote": "x"})
                                for i, c in enumerate(clients[:4])))  # fmt: skip
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(10):
            assert await a.wait() == 0
        assert asyncio.get_running_loop().time() - started < 6, "exits within shutdown.timeout"
        assert all(x["status"] == "ok" for x in await asyncio.wait_for(late, 15))
        for c in clients:
            assert any(m.get("type") == "reconnect" for m in c.received), c.user_id
        async with asyncio.timeout(15):
            while not all(c.connection_type != "none" for c in clients):
                await asyncio.sleep(0.05)
        final = backend.sessions["drain"].view()
        async with asyncio.timeout(15):
            while not all(c.state == final for c in clients):
                await asyncio.sleep(0.05)
        votes = [x for x in backend.commands if "/votes/" in x["path"]]
        assert len(votes) == 12 + 3, "every vote reached the legacy app exactly once"
        assert final["revealed"]
    finally:
        relay.server.close()
        await relay.server.wait_closed()
        for c in clients:
            await c.close()
        for proc in (a, b):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
