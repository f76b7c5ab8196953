"""Shared fixtures: real servers on loopback (the demo legacy backend and the bridge)
and a small WebSocket test client that speaks protocol v1."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestServer

from bridge.app import make_app
from bridge.config import Config, config_from_dict
from bridge.demo.backend import BACKEND, Backend, make_backend_app
from bridge.transports.common import BRIDGE


class _ErrorRecords(logging.Handler):
    """Every ERROR (and worse) logged anywhere during one test."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _describe(record: logging.LogRecord) -> str:
    text = f"{record.name}: {record.getMessage()}"
    if record.exc_info and record.exc_info[1] is not None:
        text += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
    return text


@pytest.fixture(autouse=True)
def no_silent_failures(request: pytest.FixtureRequest):
    """Fails the test when anything logged an ERROR it did not expect: a bridge's
    own errors, aiohttp's "Error handling request", and the event loop's
    unhandled exceptions ("Task exception was never retrieved", "Exception in
    callback", logged by asyncio). Tasks that died unobserved are collected
    first, so their report lands in the test that made them.
    Expected errors: ``@pytest.mark.allow_errors("regex", ...)``."""
    handler = _ErrorRecords()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    gc.collect()
    root.removeHandler(handler)
    marker = request.node.get_closest_marker("allow_errors")
    allowed = [re.compile(p) for p in (marker.args if marker else ())]
    unexpected = [
        _describe(r) for r in handler.records
        if not any(p.search(_describe(r)) for p in allowed)
    ]  # fmt: skip
    if unexpected:
        pytest.fail("unexpected errors were logged:\n  " + "\n  ".join(unexpected[:20]),
                    pytrace=False)  # fmt: skip


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


#: what `session-bridge run` gives aiohttp to end requests still running after
#: the drain (aiohttp's default is 60 s; a chaos-test restart was seen to hang
#: for over 30 s, probably there)
SHUTDOWN_TIMEOUT = 2.0


class Stack:
    """A demo backend with a bridge in front of it, both on loopback."""

    def __init__(self, backend_server: TestServer, bridge_server: TestServer, cfg: Config):
        self.backend_server = backend_server
        self.bridge_server = bridge_server
        self.bridge_port = bridge_server.port
        self.cfg = cfg
        self.http = aiohttp.ClientSession()
        self.clients: list[WSClient] = []

    @property
    def backend(self) -> Backend:
        return self.backend_server.app[BACKEND]

    @property
    def bridge(self):
        return self.bridge_server.app[BRIDGE]

    async def stop_bridge(self) -> None:
        """Stop the bridge: its sessions, logs and de-dupe windows are lost."""
        await self.bridge_server.close()

    async def restart_bridge(self, down: float = 0.0) -> None:
        """Stop the bridge (if running) and start a new one on the same port
        with the same configuration, as after a crash or a deploy."""
        if self.bridge_server.port is not None:
            await self.stop_bridge()
        await asyncio.sleep(down)
        self.bridge_server = await self.server_factory(
            self.rebuild(), port=self.bridge_port, shutdown_timeout=SHUTDOWN_TIMEOUT
        )

    def url(self, path: str) -> str:
        return str(self.bridge_server.make_url(path))

    async def connect(
        self, session: str = "s1", user: str = "u1", *, expect_welcome: bool = True,
        protocols: tuple[str, ...] = ("bridge.v1.json",), headers: dict[str, str] | None = None,
        transport: str = "websocket", **params: Any,
    ) -> Any:  # fmt: skip
        query = {"sessionId": session, "userId": user}
        if "previous_transport" in params:  # the 'transport' connect parameter
            query["transport"] = params.pop("previous_transport")
        query.update({k: str(v) for k, v in params.items() if v is not None})
        if transport != "websocket":
            cls = SSEClient if transport == "sse" else PollClient
            client = cls(self, session, user, params)
            self.clients.append(client)
            await client.open(query, headers or {})
            if expect_welcome:
                await client.welcome()
            return client
        ws = await self.http.ws_connect(
            self.url(self.cfg.paths.websocket), params=query, protocols=protocols,
            headers=headers or {}, autoping=True, max_msg_size=0,
        )  # fmt: skip
        client = WSClient(ws, session, user, params)
        self.clients.append(client)
        if expect_welcome:
            await client.welcome()
        return client

    async def state(self, session: str) -> Any:
        async with self.http.get(self.backend_server.make_url(f"/api/sessions/{session}")) as r:
            return await r.json()

    def commands(self, path_part: str = "", method: str | None = None) -> list[dict[str, Any]]:
        return [
            c for c in self.backend.commands
            if path_part in c["path"] and (method is None or c["method"] == method)
        ]  # fmt: skip

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        await self.http.close()


class WSClient:
    """Collects everything the bridge sends; helpers wait for what a test needs."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, session: str, user: str,
                 params: dict[str, Any]) -> None:  # fmt: skip
        self.ws = ws
        self.session = session
        self.user = user
        self.params = params
        self.received: list[dict[str, Any]] = []
        self.stream: list[dict[str, Any]] = []
        self.welcome_msg: dict[str, Any] | None = None
        self.close_code: int | None = None
        self._n = 0

    async def next(self, timeout: float = 5.0) -> dict[str, Any] | None:
        """The next message, or None when the connection closed."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING, WSMsgType.ERROR):
                self.close_code = self.ws.close_code
                return None
            data = json.loads(msg.data) if msg.type is WSMsgType.TEXT else msg.data
            if not isinstance(data, dict):  # pragma: no cover - the bridge sends maps
                raise AssertionError(f"not a map: {data!r}")
            self.received.append(data)
            if "seq" in data and data.get("type") in ("session", "presence"):
                self.stream.append(data)
            if data.get("type") == "ping":
                await self.ws.send_json({"type": "pong", "ts": data["ts"]})
            return data

    async def welcome(self) -> dict[str, Any]:
        msg = await self.next()
        assert msg is not None, f"closed with {self.close_code} before welcome"
        assert msg["type"] == "welcome", msg
        self.welcome_msg = msg
        return msg

    async def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Read until a message matches (messages already read count too)."""
        for m in self.received:
            if pred(m):
                return m
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no matching message; got {self.received[-5:]}")
            msg = await self.next(timeout=remaining)
            if msg is None:
                raise AssertionError(f"closed ({self.close_code}) while waiting")
            if pred(msg):
                return msg

    async def wait_state(self, pred: Callable[[Any], bool], timeout: float = 5.0) -> dict[str, Any]:
        return await self.wait_for(lambda m: m.get("type") == "session" and pred(m["payload"]),
                                   timeout)  # fmt: skip

    @property
    def last_state(self) -> Any:
        states = [m for m in self.stream if m["type"] == "session"]
        return states[-1]["payload"] if states else None

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send_json(message)

    async def command(self, type_: str, payload: dict[str, Any] | None = None,
                      id: str | None = None, timeout: float = 5.0) -> dict[str, Any]:  # fmt: skip
        """Send a command with an id and wait for its ack."""
        self._n += 1
        cid = id or f"{self.user}-{self._n}"
        await self.send({"type": type_, "id": cid, "payload": payload or {}})
        return await self.wait_for(lambda m: m.get("type") == "ack" and m.get("id") == cid, timeout)

    async def closed(self, timeout: float = 5.0) -> int | None:
        """Read until the bridge closes the connection; returns the close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.close_code is None:
            if await self.next(timeout=max(0.01, deadline - loop.time())) is None:
                break
        return self.close_code

    def resume_params(self) -> dict[str, Any]:
        assert self.welcome_msg is not None
        last = self.stream[-1]["seq"] if self.stream else self.welcome_msg["seq"]
        return {
            "resumeToken": self.welcome_msg["resumeToken"],
            "epoch": self.welcome_msg["epoch"],
            "lastSeq": last,
        }

    def abort(self) -> None:
        """Drop the TCP connection without a close frame (a network failure)."""
        conn = self.ws._response.connection
        assert conn is not None and conn.transport is not None
        conn.transport.abort()

    async def close(self) -> None:
        if not self.ws.closed:
            await self.ws.close()


FAST = {
    "upstream": {
        "timeout": "2s",
        "retry": {"attempts": 2, "initial": "20ms", "max": "50ms"},
        "state": {"every": "200ms"},
        "keepalive": {"path": "/api/sessions/{sessionId}/heartbeat",
                      "json": {"userId": "{userId}"}, "every": "1s"},
        "push": {"path": "/bridge/push", "secret": "push-secret"},
    },
    "presence": {"grace": "1s"},
    "shutdown": {"timeout": "3s"},
    "security": {"token_secret": "test-secret"},
    "logging": {"debug": True},
}  # fmt: skip


@pytest.fixture
async def make_stack(aiohttp_server):
    stacks: list[Stack] = []

    async def make(
        overrides: dict[str, Any] | None = None,
        backend_expiry: float = 30.0,
        pages: dict[str, str] | None = None,
    ) -> Stack:
        backend_server = await aiohttp_server(make_backend_app(backend_expiry))
        data = deep_merge(FAST, {"upstream": {"url": str(backend_server.make_url(""))}})
        cfg = config_from_dict(deep_merge(data, overrides or {}))

        def build() -> web.Application:
            app = make_app(cfg)
            for path, html in (pages or {}).items():
                app.router.add_get(path, _page(html))
            return app

        bridge_server = await aiohttp_server(build(), shutdown_timeout=SHUTDOWN_TIMEOUT)
        stack = Stack(backend_server, bridge_server, cfg)
        stack.rebuild = build
        stack.server_factory = aiohttp_server
        stacks.append(stack)
        return stack

    yield make
    for s in stacks:
        await s.close()


@pytest.fixture
async def stack(make_stack) -> Stack:
    return await make_stack()


class HTTPClient(WSClient):
    """Shared by the SSE and poll test clients: commands go over POST /api/messages,
    and what the POST answers is recorded as if it had arrived on the stream."""

    def __init__(self, stack: Stack, session: str, user: str, params: dict[str, Any]) -> None:
        super().__init__(None, session, user, params)  # type: ignore[arg-type]
        self.stack = stack
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.token: str | None = params.get("resumeToken")
        self.epoch: str | None = params.get("epoch")
        self.http_status: int | None = None

    async def next(self, timeout: float = 5.0) -> dict[str, Any] | None:
        if self.close_code is not None and self.queue.empty():
            return None
        try:
            msg = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            raise TimeoutError("nothing received") from None
        if msg is None:
            self.close_code = self.close_code or 1006
            return None
        self.received.append(msg)
        if msg.get("type") in ("session", "presence") and "seq" in msg:
            self.stream.append(msg)
        if msg.get("type") == "welcome":
            self.token, self.epoch = msg["resumeToken"], msg["epoch"]
            if msg["resumed"] is False:
                self.stream_reset_at = len(self.stream)
        return msg

    async def send(self, message: Any) -> None:
        await self.post(message)

    async def post(self, body: Any, **kw: Any) -> dict[str, Any]:
        assert self.token, "no token yet"
        async with self.stack.http.post(
            self.stack.url(self.stack.cfg.paths.messages),
            params={"resumeToken": self.token}, json=body, **kw,
        ) as r:  # fmt: skip
            answer = await r.json()
            assert r.status == 200, answer
        for item in answer.get("acks", []) + answer.get("errors", []):
            self.queue.put_nowait(item)
        return answer

    def resume_params(self) -> dict[str, Any]:
        last = self.stream[-1]["seq"] if self.stream else self.welcome_msg["seq"]
        return {"resumeToken": self.token, "epoch": self.epoch, "lastSeq": last}

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def close(self) -> None:
        self.abort()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


class SSEClient(HTTPClient):
    transport = "sse"

    async def open(self, query: dict[str, Any], headers: dict[str, str]) -> None:
        resp = await self.stack.http.get(
            self.stack.url(self.stack.cfg.paths.events), params=query, headers=headers
        )
        self.response = resp
        self.http_status = resp.status
        if resp.status != 200:
            self.close_code = resp.status
            self.error = await resp.json()
            resp.release()
            self.queue.put_nowait(None)
            return
        self.task = asyncio.create_task(self._read(resp))

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        event: dict[str, str] = {}
        try:
            async for raw in resp.content:
                line = raw.decode().rstrip("\n")
                if line == "":
                    if "data" in event:
                        msg = json.loads(event["data"])
                        assert msg["type"] == event.get("event"), (msg, event)
                        if "id" in event:
                            assert int(event["id"]) == msg["seq"]
                        self.queue.put_nowait(msg)
                    event = {}
                    continue
                name, _, value = line.partition(": ")
                event[name] = value
        except (aiohttp.ClientError, asyncio.CancelledError):
            pass
        finally:
            resp.close()
            self.close_code = self.close_code or 1006
            self.queue.put_nowait(None)

    def abort(self) -> None:
        conn = self.response.connection
        if conn is not None and conn.transport is not None:
            conn.transport.abort()
        super().abort()


class PollClient(HTTPClient):
    transport = "poll"
    wait = 1.0

    async def open(self, query: dict[str, Any], headers: dict[str, str]) -> None:
        self.cursor: int | None = query.pop("lastSeq", None)
        self.query = query
        self.headers = headers
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        try:
            while True:
                params = dict(self.query)
                if self.token:
                    params.update(resumeToken=self.token, wait=str(self.wait))
                    if self.epoch:
                        params["epoch"] = self.epoch
                    if self.cursor is not None:
                        params["cursor"] = str(self.cursor)
                async with self.stack.http.get(
                    self.stack.url(self.stack.cfg.paths.poll), params=params, headers=self.headers
                ) as r:
                    self.http_status = r.status
                    body = await r.json()
                if r.status != 200:
                    self.close_code = r.status
                    self.error = body
                    return
                for msg in body["messages"]:
                    if msg.get("type") == "welcome":
                        self.token, self.epoch = msg["resumeToken"], msg["epoch"]
                    self.queue.put_nowait(msg)
                self.cursor = body["cursor"]
        except (aiohttp.ClientError, asyncio.CancelledError):
            pass
        finally:
            self.queue.put_nowait(None)

    async def welcome(self) -> dict[str, Any]:
        if self.token and self.cursor is not None:
            # A client this instance still holds gets no new welcome: it just polls on.
            self.welcome_msg = {"resumed": True, "seq": self.cursor, "epoch": self.epoch,
                                "resumeToken": self.token, "clientId": None}  # fmt: skip
            return self.welcome_msg
        return await super().welcome()


TRANSPORTS = ["websocket", "sse", "poll"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _page(text: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        ctype = "text/javascript" if request.path.endswith(".js") else "text/html"
        return web.Response(text=text, content_type=ctype)

    return handler


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """redis_server is set up before any other fixture of a test, so it is torn
    down after them: the bridges stop while Redis is still there, as in a
    deployment (a test that wants Redis gone first kills it itself). Otherwise
    their Redis connections could be left to the garbage collector, whose
    ResourceWarnings then fail whichever later test is running."""
    for item in items:
        names = getattr(item, "fixturenames", None)
        if names and "redis_server" in names and names[0] != "redis_server":
            names.remove("redis_server")
            names.insert(0, "redis_server")


@pytest.fixture
async def redis_server(tmp_path):
    """A real redis-server on a free port (tests may kill and restart it)."""
    from tests.cluster import RedisServer

    server = RedisServer(tmp_path / "redis")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def make_cluster(aiohttp_server, redis_server, tmp_path):
    """``make_cluster(n, overrides)``: the demo backend (in this process, so tests
    can read what it was asked), ``n`` bridge processes on ``redis_server``,
    and nginx round-robin in front of them."""
    from tests.cluster import Cluster

    clusters: list[Cluster] = []

    async def make(n: int = 2, overrides: dict[str, Any] | None = None, expiry: float = 30.0):
        backend_server = await aiohttp_server(make_backend_app(expiry))
        backend_url = str(backend_server.make_url("")).rstrip("/")
        data = deep_merge(FAST, {
            "listen": {"host": "127.0.0.1", "port": 0},
            "upstream": {"url": backend_url},
            "backplane": {"kind": "redis", "url": redis_server.url, "lease": "1500ms"},
            "logging": {"debug": False},
        })  # fmt: skip
        data = deep_merge(data, overrides or {})
        config_from_dict(data)  # fail here, not in n processes
        workdir = tmp_path / f"cluster{len(clusters)}"
        workdir.mkdir()
        cluster = Cluster(workdir, redis_server, backend_url, n, data)
        cluster.backend = backend_server.app[BACKEND]  # type: ignore[attr-defined]
        cluster.backend_url = backend_url
        clusters.append(cluster)
        await cluster.start()
        return cluster

    yield make
    for c in clusters:
        await c.stop()
    errors = [e for c in clusters for e in c.unexpected_errors()]
    if errors:
        pytest.fail("bridge instances logged errors:\n  " + "\n  ".join(errors[:20]),
                    pytrace=False)  # fmt: skip
