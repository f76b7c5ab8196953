"""The dashboard and the alerts proven on a real Prometheus: Debian's
``prometheus`` scrapes a bridge (Redis backplane) under a small load — clients on
every transport, a fallback, a resume, commands and a repeat, pass-through and
intercepted legacy polls, twice, with scrapes between — and an upstream fault.
Every panel query of dashboards/bridge.json must return series through
Prometheus' HTTP API with a real value, not only 0 or NaN (or be listed below,
with the reason, as empty or zero by design in this scenario); every alert
expression is evaluated, and the fault's alert fires (the rules' ``for:`` cut to
0 s here; the shipped durations are tested by promtool)."""

from __future__ import annotations

import asyncio
import json
import math
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
#: panel queries whose value here may rightly be 0
ZERO_BY_DESIGN = {
    "bridge_upstream_breaker_state": "0 is closed: the fault is one session's, not the app's",
    "bridge_upstream_in_flight": "often nothing is at the app at the scrape's instant",
    "bridge_replay_evictions_total": "the replay log never fills in a short run",
    "bridge_heartbeat_timeouts_total": "every client answers its pings",
}
#: the alerts that must fire in this scenario; the others must stay quiet
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
    def __init__(self, workdir: Path, target: str, rules: Path) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("prometheus is missing: `make test` installs Debian's prometheus package")
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
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


async def load_round(stack: Any, n: int) -> list[Any]:
    """Every transport, a fallback and an upgrade, commands and a repeat, state
    changes, a resume, a close; the app's own page and its legacy state poll."""
    ws = await stack.connect("live", f"a{n}")
    sse = await stack.connect("live", f"b{n}", transport="sse", previous_transport="websocket")
    poll = await stack.connect("live", f"c{n}", transport="poll")
    upgraded = await stack.connect("live", f"d{n}", previous_transport="sse")  # back on WebSocket
    await ws.command("vote", {"vote": str(n)}, id=f"once{n}")
    await ws.command("vote", {"vote": str(n)}, id=f"once{n}")  # answered from the de-dupe
    await sse.command("reveal" if n % 2 else "reset")
    await poll.wait_state(lambda s: bool(s.get("revealed")) == bool(n % 2))
    await ws.wait_for(lambda m: m["type"] == "ping")
    params = ws.resume_params()
    ws.abort()
    await asyncio.sleep(0.3)
    back = await stack.connect("live", f"a{n}", **params)
    assert back.welcome_msg["resumed"]
    async with stack.http.get(stack.url("/")) as r:
        assert r.status == 200  # passed through to the app
    async with stack.http.get(stack.url("/api/sessions/live")) as r:
        assert r.status == 200  # intercepted: the bridge's copy
    await upgraded.close()
    return [back, sse, poll]


def finite(series: list[dict[str, Any]]) -> list[float]:
    return [v for s in series if math.isfinite(v := float(s["value"][1]))]


async def test_every_panel_and_alert_query_on_a_live_prometheus(make_stack, redis_server, tmp_path):
    stack = await make_stack({
        "backplane": {"kind": "redis", "url": redis_server.url},
        "heartbeat": {"interval": "300ms", "timeout": "5s"},
        "upstream": {"state": {"intercept": True}},
        "presence": {"grace": "10s"},
    })  # fmt: skip
    # the shipped rules with every `for:` cut to 0 s, so what holds fires here at once
    # (the shipped durations are promtool's to test: alerts.test.yml)
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    target = f"127.0.0.1:{stack.bridge_server.port}"
    prom = Prometheus(tmp_path, target, tmp_path / "alerts.yml")
    clients: list[Any] = []
    try:
        await prom.ready(stack.http)
        # two rounds of the same load with scrapes between: every series the first
        # one makes is seen at its value, then moves, so each rate() is above 0
        clients += await load_round(stack, 1)
        await prom.scrapes(stack.http, after=await prom.scrapes(stack.http) + 2)
        clients += await load_round(stack, 2)
        # the fault: the sessions' state routes answer 500 (their polls fail; each
        # session's own failure, so the breaker stays closed: only the error ratio alerts)
        faults = {"failPaths": ["/api/sessions/broken", "/api/sessions/live"]}
        async with stack.http.post(stack.backend_server.make_url("/_demo/faults"),
                                   json=faults) as r:  # fmt: skip
            assert r.status == 200
        broken = await stack.connect("broken", "x")
        await asyncio.sleep(1.0)
        await broken.close()
        await prom.scrapes(stack.http, after=await prom.scrapes(stack.http) + 3)

        empty, zero = [], []
        for title, expr in panel_queries():
            series = await prom.query(stack.http, expr)
            if not series:
                empty.append((title, expr))
            elif not any(v != 0 for v in finite(series)):
                zero.append((title, expr, [s["value"][1] for s in series]))
        unexplained = [(t, e) for t, e in empty if not any(m in e for m in EMPTY_BY_DESIGN)]
        assert unexplained == [], f"panel queries with no series: {unexplained}"
        # the list is honest: each entry is empty here (else it should come off it)
        listed_but_there = [m for m in EMPTY_BY_DESIGN if not any(m in e for _t, e in empty)]
        assert listed_but_there == [], f"these returned data: unlist them {listed_but_there}"
        # and every panel with series shows a real number: no 0 or NaN where the
        # scenario did the thing the panel counts
        unexplained_zero = [z for z in zero if not any(m in z[1] for m in ZERO_BY_DESIGN)]
        assert unexplained_zero == [], f"panels showing nothing but 0 or NaN: {unexplained_zero}"

        for rule in alert_rules():
            series = await prom.query(stack.http, rule["expr"])
            if rule["alert"] in FIRING:
                assert finite(series), f"{rule['alert']} should hold in this scenario"
            else:
                assert series == [], f"{rule['alert']} holds: {series}"
        deadline = time.monotonic() + 10
        while (states := await prom.alerts(stack.http)).get("BridgeUpstreamErrorRatio") != "firing":
            assert time.monotonic() < deadline, f"alerts seen: {states}"
            await asyncio.sleep(0.5)
        assert states == {name: "firing" for name in FIRING}
    finally:
        for c in clients:
            await c.close()
        prom.stop()
