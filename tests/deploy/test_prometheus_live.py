"""The dashboard and the alerts proven on a real Prometheus: Debian's
``prometheus`` scrapes a bridge (Redis backplane) under a small load — clients on
every transport, a fallback, a resume, commands and a repeat, pass-through and
intercepted legacy polls — and an upstream fault. Every panel query of
dashboards/bridge.json must return series through Prometheus' HTTP API (or be
listed below, with the reason, as empty by design in this scenario); every alert
expression is evaluated, and the fault's alert is pending in Prometheus."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

#: panel queries that return nothing here, and why (the scenario provokes no such thing)
EMPTY_BY_DESIGN = {
    "bridge_slow_consumer_closes_total": "no client reads too slowly here",
    "bridge_task_errors_total": "no background task fails (it would be a bug)",
    "bridge_backplane_errors_total": "Redis stays up",
    "bridge_backplane_resyncs_total": "no instance falls behind the stream",
}
#: the alerts that must fire (be pending) in this scenario; the others must stay quiet
FIRING = {"BridgeUpstreamErrorRatio"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def panel_queries() -> list[tuple[str, str]]:
    board = json.loads((ROOT / "dashboards" / "bridge.json").read_text())
    return [(p["title"], t["expr"].replace("$instance", ".*"))
            for p in board["panels"] for t in p.get("targets", [])]  # fmt: skip


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: `make test` installs Debian's prometheus package")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(ROOT / "deploy" / "prometheus" / "alerts.yml")],
            "scrape_configs": [{"job_name": "bridge", "static_configs": [{"targets": [target]}]}],
        }))  # fmt: skip
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip

    async def ready(self, http: aiohttp.ClientSession, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, "prometheus exited: see prometheus.log"
            try:
                async with http.get(self.url + "/-/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert time.monotonic() < deadline, "prometheus never became ready"
            await asyncio.sleep(0.2)

    async def query(self, http: aiohttp.ClientSession, expr: str) -> list[dict[str, Any]]:
        async with http.get(self.url + "/api/v1/query", params={"query": expr}) as r:
            body = await r.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def scrapes(self, http: aiohttp.ClientSession, after: int = 0) -> int:
        """How many scrapes of the bridge Prometheus holds (waiting for more than ``after``)."""
        deadline = time.monotonic() + 30
        while True:
            got = await self.query(http, "count_over_time(up[10m])")
            n = int(got[0]["value"][1]) if got else 0
            if n > after:
                return n
            assert time.monotonic() < deadline, f"only {n} scrapes"
            await asyncio.sleep(0.3)

    async def alerts(self, http: aiohttp.ClientSession) -> dict[str, str]:
        async with http.get(self.url + "/api/v1/alerts") as r:
            body = await r.json()
        return {a["labels"]["alertname"]: a["state"] for a in body["data"]["alerts"]}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
        self.log.close()


async def test_every_panel_and_alert_query_on_a_live_prometheus(make_stack, redis_server, tmp_path):
    stack = await make_stack({
        "backplane": {"kind": "redis", "url": redis_server.url},
        "heartbeat": {"interval": "300ms", "timeout": "5s"},
        "upstream": {"state": {"intercept": True}},
        "presence": {"grace": "10s"},
    })  # fmt: skip
    target = f"127.0.0.1:{stack.bridge_server.port}"
    prom = Prometheus(tmp_path, target)
    try:
        await prom.ready(stack.http)
        # the load: every transport, a fallback, commands and a repeat, a resume
        ws = await stack.connect("live", "a")
        sse = await stack.connect("live", "b", transport="sse", previous_transport="websocket")
        poll = await stack.connect("live", "c", transport="poll")
        upgraded = await stack.connect("live", "d", previous_transport="sse")  # back on WebSocket
        await ws.command("vote", {"vote": "3"}, id="once")
        await ws.command("vote", {"vote": "3"}, id="once")  # answered from the de-dupe
        await sse.command("reveal")
        await poll.wait_state(lambda s: s.get("revealed"))
        await ws.wait_for(lambda m: m["type"] == "ping")
        params = ws.resume_params()
        ws.abort()
        await asyncio.sleep(0.3)
        back = await stack.connect("live", "a", **params)
        assert back.welcome_msg["resumed"]
        # the app's own traffic through the bridge: its page, and its legacy state poll
        async with stack.http.get(stack.url("/")) as r:
            assert r.status == 200  # passed through to the app
        async with stack.http.get(stack.url("/api/sessions/live")) as r:
            assert r.status == 200  # intercepted: the bridge's copy
        # the fault: the sessions' state routes answer 500 (their polls fail; each
        # session's own failure, so the breaker stays closed: only the error ratio alerts)
        faults = {"failPaths": ["/api/sessions/broken", "/api/sessions/live"]}
        async with stack.http.post(stack.backend_server.make_url("/_demo/faults"),
                                   json=faults) as r:  # fmt: skip
            assert r.status == 200
        broken = await stack.connect("broken", "x")
        await asyncio.sleep(1.0)
        await broken.close()
        # enough scrapes after it for every rate() to have two samples, rules evaluated
        await prom.scrapes(stack.http, after=await prom.scrapes(stack.http) + 3)

        empty = []
        for title, expr in panel_queries():
            if not await prom.query(stack.http, expr):
                empty.append((title, expr))
        unexplained = [(t, e) for t, e in empty if not any(m in e for m in EMPTY_BY_DESIGN)]
        assert unexplained == [], f"panel queries with no series: {unexplained}"
        # the list is honest: each entry is empty here (else it should come off it)
        listed_but_there = [m for m in EMPTY_BY_DESIGN if not any(m in e for _t, e in empty)]
        assert listed_but_there == [], f"these returned data: unlist them {listed_but_there}"

        for rule in alert_rules():
            series = await prom.query(stack.http, rule["expr"])
            if rule["alert"] in FIRING:
                assert series, f"{rule['alert']} should hold in this scenario"
            else:
                assert series == [], f"{rule['alert']} holds: {series}"
        deadline = time.monotonic() + 10
        while (states := await prom.alerts(stack.http)).keys() < FIRING:
            assert time.monotonic() < deadline, f"alerts seen: {states}"
            await asyncio.sleep(0.5)
        assert set(states) == FIRING and all(s in ("pending", "firing") for s in states.values())
        for c in (back, sse, poll, upgraded):
            await c.close()
    finally:
        prom.stop()
