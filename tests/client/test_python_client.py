"""The Python client in-process against a real bridge: transports, codecs,
fallback and return to WebSocket, resume, and the outbox across a restart."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from bridge.cli import parse_command_line
from bridge.client import BridgeClient, ClientError, CommandFailed, backoff
from tests.conftest import Stack

FAST = {
    "reconnect": {"initial": "100ms", "max": "800ms", "factor": 2, "jitter": 0.5,
                  "upgrade_interval": "700ms"},
    "presence": {"grace": "30s"},
}  # fmt: skip


def client(stack: Stack, user: str, **kw) -> BridgeClient:
    c = BridgeClient(stack.url("").rstrip("/"), "py", user, http=stack.http, **kw)
    stack.py_clients = getattr(stack, "py_clients", []) + [c]
    return c


async def until(predicate, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("transport", "codec"),
    [("websocket", "json"), ("websocket", "msgpack"), ("sse", "json"), ("poll", "json"),
     ("poll", "msgpack")],  # SSE is JSON only
)  # fmt: skip
async def test_commands_and_state_over_each_transport(stack: Stack, transport, codec):
    c = client(stack, "u1", transports=[transport], codec=codec, params={"name": "Py"})
    seen: list[int] = []
    c.on_session = lambda state, seq: seen.append(seq)
    await c.connect()
    assert c.connection_type == transport
    ack = await c.send_vote("5")
    assert ack["status"] == "ok"
    await c.send_reveal()
    await until(lambda: c.state and c.state["revealed"])
    assert c.state["users"] == [{"id": "u1", "name": "Py", "voted": True, "vote": "5"}]
    with pytest.raises(CommandFailed) as info:
        await c.send("dance")
    assert info.value.code == "unknown_type"
    assert seen == sorted(set(seen))
    await c.close()


async def test_falls_back_and_returns_to_websocket(make_stack):
    stack = await make_stack({**FAST, "transports": {"websocket": False, "sse": False}})
    c = client(stack, "u1")
    kinds: list[str] = []
    c.on_transport = kinds.append
    seqs: list[int] = []
    c.on_session = lambda state, seq: seqs.append(seq)
    c.on_presence = lambda online, seq: seqs.append(seq)
    await c.connect()
    assert c.connection_type == "poll"
    cfg = stack.bridge.cfg
    stack.bridge.cfg = cfg.replace(transports=type(cfg.transports)())
    await until(lambda: c.connection_type == "websocket", timeout=5)
    assert kinds == ["poll", "websocket"]
    other = await stack.connect("py", "u2")
    await other.command("vote", {"vote": "3"})
    await until(lambda: c.state and any(u.get("voted") for u in c.state["users"]))
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), seqs
    assert [x.transport for x in stack.bridge.sessions["py"].conns.values()].count("poll") == 0
    await c.close()


async def test_resume_after_a_drop_loses_and_repeats_nothing(make_stack):
    stack = await make_stack(FAST)
    c = client(stack, "u1", transports=["websocket"])
    seqs: list[int] = []
    c.on_session = lambda state, seq: seqs.append(seq)
    c.on_presence = lambda online, seq: seqs.append(seq)
    await c.connect()
    await until(lambda: c.state is not None)
    epoch = c.epoch
    conn = stack.bridge.sessions["py"].conns[c.client_id]
    conn.ws._writer.transport.abort()  # the network drops
    other = await stack.connect("py", "u2")
    await other.command("vote", {"vote": "1"})
    await until(lambda: c.state and len(c.state["users"]) == 2 and c.connection_type != "none")
    await until(lambda: any(u.get("voted") for u in c.state["users"]))
    assert c.epoch == epoch and c.reconnect_attempts >= 1
    assert seqs == list(range(1, seqs[-1] + 1)), seqs
    await c.close()


async def test_the_outbox_survives_a_bridge_restart(make_stack):
    stack = await make_stack(FAST)
    c = client(stack, "u1", transports=["websocket", "poll"])
    await c.connect()
    await stack.stop_bridge()
    await until(lambda: c.connection_type == "none")
    votes = [asyncio.create_task(c.send_vote(v)) for v in ("1", "2")]
    await asyncio.sleep(0.8)
    assert c.get_state()["queued"] == 2 and not any(v.done() for v in votes)
    await stack.restart_bridge()
    acks = await asyncio.wait_for(asyncio.gather(*votes), 15)
    assert [a["status"] for a in acks] == ["ok", "ok"]
    assert [x["body"]["vote"] for x in stack.commands("/votes/u1")] == ["1", "2"]
    assert c.delays and all(d <= 0.8 for d in c.delays)
    await c.close()


async def test_a_refused_client_gets_an_error(stack: Stack):
    c = client(stack, "banned-1", transports=["poll"])
    with pytest.raises(ClientError) as info:
        await c.connect()
    assert info.value.code == "unauthorized" and info.value.fatal
    await c.close()


def test_backoff_formula_and_validation():
    cfg = {"initial_ms": 1000, "max_ms": 30000, "factor": 2, "jitter": 0.5}
    assert backoff(1, cfg, 0.0) == 1.0
    assert backoff(3, cfg, 0.0) == 4.0
    assert backoff(3, cfg, 1.0) == 2.0
    assert backoff(50, cfg, 0.0) == 30.0
    with pytest.raises(ValueError):
        BridgeClient("http://x", "s", "u", codec="xml")
    with pytest.raises(ValueError):
        BridgeClient("http://x", "s", "u", transports=["carrier-pigeon"])


def test_command_lines():
    assert parse_command_line("vote 5\n") == ("vote", {"vote": "5"})
    assert parse_command_line("reveal") == ("reveal", {})
    assert parse_command_line("  ") is None
    assert parse_command_line('{"type": "vote", "payload": {"vote": 8}}') == ("vote", {"vote": 8})
    assert parse_command_line('{"type": "vote", "vote": 3}') == ("vote", {"vote": 3})
    with pytest.raises(ValueError):
        parse_command_line("vote")
    with pytest.raises(ValueError):
        parse_command_line('{"payload": {}}')


async def test_the_client_command_watches_and_sends(stack: Stack):
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "client", stack.url("").rstrip("/"),
        "--session", "cli", "--user", "op", "--name", "Operator",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    lines: list[dict] = []

    async def read_until(pred) -> dict:
        # Lines already read count too: the bridge may answer "nonsense" (no upstream
        # call) after the vote's ack and state, or before them.
        for m in lines:
            if pred(m):
                return m
        async with asyncio.timeout(15):
            while True:
                line = await proc.stdout.readline()
                assert line, "the client ended early"
                lines.append(json.loads(line))
                if pred(lines[-1]):
                    return lines[-1]

    await read_until(lambda m: m["type"] == "session")
    proc.stdin.write(b"vote 8\nnonsense\n")
    await proc.stdin.drain()
    await read_until(lambda m: m["type"] == "ack" and m["status"] == "ok")
    await read_until(lambda m: m["type"] == "ack" and m["status"] == "error")
    await read_until(lambda m: m["type"] == "session" and m["payload"]["users"][0]["voted"])
    proc.stdin.close()
    async with asyncio.timeout(15):
        assert await proc.wait() == 0
    assert lines[0]["type"] in ("presence", "session")
    assert stack.commands("/votes/op")[0]["body"] == {"vote": "8"}


async def test_a_failed_post_of_commands_is_retried_while_the_transport_stays_up(stack: Stack):
    """Over SSE a command goes by POST; when the POST fails but the event stream
    stays up, nothing else would send it again: the client retries by itself."""
    c = client(stack, "u1", transports=["sse"], paths={"messages": "/api/nowhere"})
    drops: list[object] = []
    c.on_disconnect = drops.append
    await c.connect()
    sending = asyncio.create_task(c.send_vote("3"))
    await asyncio.sleep(0.6)  # a few failed POSTs (404)
    assert not sending.done()
    c.paths["messages"] = "/api/messages"  # the network is back
    ack = await asyncio.wait_for(sending, 10)
    assert ack["status"] == "ok" and drops == []
    assert [x["body"]["vote"] for x in stack.commands("/votes/u1")] == ["3"]
    await c.close()
