"""Debug tooling: each connection's lifecycle as structured lines; JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from bridge.config import Logging
from bridge.logsetup import JsonFormatter, setup_logging


async def test_debug_logs_each_connection_lifecycle(stack, caplog):
    caplog.set_level(logging.INFO, logger="bridge.runtime")
    c = await stack.connect("dbg", "u1")
    await c.close()
    for _ in range(50):
        if any("disconnect transport=websocket" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.runtime"]
    connect = next(line for line in lines if line.startswith("connect "))
    fields = dict(part.split("=", 1) for part in connect.split()[1:])
    assert fields["transport"] == "websocket" and fields["session"] == "dbg"
    assert fields["user"] == "u1" and fields["resumed"] == "False"
    assert any(line.startswith("disconnect ") and "reason=client" in line for line in lines)


def test_json_log_format():
    record = logging.LogRecord(
        "bridge.x", logging.WARNING, __file__, 1, "hello %s", ("world",), None
    )
    out = json.loads(JsonFormatter().format(record))
    assert out["level"] == "warning" and out["message"] == "hello world"
    assert out["logger"] == "bridge.x" and out["ts"].endswith("Z")


def test_setup_logging_levels(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(Logging(level="warning", format="json"))
        logging.getLogger("bridge.test").warning("careful")
        assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "careful"
        setup_logging(Logging(level="info", format="text", debug=True))
        assert root.level == logging.DEBUG
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
