"""Metrics after a real scenario, the names the dashboard and alerts use, the
alert rules under promtool, and the admin endpoints."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from bridge.transports.common import METRICS
from tests.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]


def samples(stack: Stack) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in stack.bridge_server.app[METRICS].registry.collect():
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(snapshot, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in snapshot.items() if n == name and want <= set(ls))


async def test_each_family_moves_after_a_scenario(make_stack):
    stack = await make_stack({"heartbeat": {"interval": "200ms", "timeout": "2s"},
                              "presence": {"grace": "10s"}})  # fmt: skip
    a = await stack.connect("m", "a")
    # a client that fell back from WebSocket to SSE says so in its connect
    b = await stack.connect("m", "b", transport="sse", previous_transport="websocket")
    await a.command("vote", {"vote": "1"}, id="same")
    await a.command("vote", {"vote": "1"}, id="same")  # a de-dupe hit
    await b.command("reveal")
    await a.wait_state(lambda s: s["revealed"])
    await a.wait_for(lambda m: m["type"] == "ping")  # answered with a pong by the test client
    await asyncio.sleep(0.3)
    params = a.resume_params()
    a.abort()
    await asyncio.sleep(0.2)
    back = await stack.connect("m", "a", **params)
    assert back.welcome_msg["resumed"]
    async with stack.http.get(stack.url("/api/poll"), params={"sessionId": "m", "userId": "c"},
                              headers={"Accept-Encoding": "gzip"}) as r:  # fmt: skip
        assert r.status == 200
    snap = samples(stack)
    assert value(snap, "bridge_resumes_total", outcome="resumed") == 1
    assert value(snap, "bridge_transport_switches_total", **{"from": "websocket", "to": "sse"}) == 1
    assert value(snap, "bridge_dedupe_hits_total") == 1
    assert value(snap, "bridge_heartbeat_rtt_seconds_count") >= 1
    assert value(snap, "bridge_connections_opened_total", transport="websocket") == 2
    assert value(snap, "bridge_connections_opened_total", transport="poll") == 1
    assert value(snap, "bridge_connections_closed_total", transport="websocket") == 1
    assert value(snap, "bridge_connections_active", transport="sse") == 1
    assert value(snap, "bridge_messages_total", direction="in", type="vote") == 2
    assert value(snap, "bridge_upstream_requests_total", command="vote", status="2xx") == 1
    assert value(snap, "bridge_upstream_requests_total", command="join", status="2xx") == 3
    assert value(snap, "bridge_upstream_request_duration_seconds_count", command="state") >= 1
    assert value(snap, "bridge_state_polls_total", result="changed") >= 1
    assert value(snap, "bridge_state_changes_total", source="poll") >= 3
    assert value(snap, "bridge_stream_deliveries_total", transport="sse") >= 3
    assert value(snap, "bridge_delivery_latency_seconds_count") >= 3
    assert value(snap, "bridge_wire_bytes_total", transport="websocket", stage="encoded") > 0
    poll_in = value(snap, "bridge_wire_bytes_total", transport="poll", stage="encoded")
    poll_out = value(snap, "bridge_wire_bytes_total", transport="poll", stage="sent")
    assert poll_in > 0 and poll_out > 0
    assert value(snap, "bridge_sessions") == 1
    assert value(snap, "bridge_present_users") == 3
    assert value(snap, "bridge_upstream_breaker_state") == 0
    async with stack.http.get(stack.url("/metrics")) as r:
        text = await r.text()
    assert "bridge_replay_entries " in text and "bridge_replay_evictions_total" in text
    assert not re.search(r'session(Id)?="|user(Id)?="', text), "no session or user labels"


def names_used(expr: str) -> set[str]:
    return set(re.findall(r"\b(bridge_[a-z_]+)", expr))


def dashboard_exprs() -> list[str]:
    board = json.loads((ROOT / "dashboards" / "bridge.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


async def test_every_metric_the_dashboard_and_alerts_use_is_exported(stack: Stack):
    exported = {
        family.name + suffix
        for family in stack.bridge_server.app[METRICS].registry.collect()
        for suffix in SUFFIXES[family.type]
    }
    used = set().union(*(names_used(e) for e in dashboard_exprs() + alert_exprs()))
    assert len(used) >= 15
    assert sorted(used - exported) == []


def test_dashboard_has_datasource_and_instance_variables():
    board = json.loads((ROOT / "dashboards" / "bridge.json").read_text())
    variables = {v["name"]: v["type"] for v in board["templating"]["list"]}
    assert variables == {"datasource": "datasource", "instance": "query"}
    for panel in board["panels"]:
        for target in panel["targets"]:
            assert 'instance=~"$instance"' in target["expr"], panel["title"]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package")
    return found


def test_alert_rules_pass_promtool_check_and_unit_tests():
    rules = ROOT / "deploy" / "prometheus"
    check = subprocess.run([promtool(), "check", "rules", "alerts.yml"], cwd=rules,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 8 rules found" in check.stdout
    test = subprocess.run([promtool(), "test", "rules", "alerts.test.yml"], cwd=rules,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert test.returncode == 0, test.stdout + test.stderr


async def test_admin_endpoints(make_stack):
    off = await make_stack()
    async with off.http.get(off.url("/bridge/admin/sessions")) as r:
        assert r.status == 404, "off without admin.token"
    stack = await make_stack({"admin": {"token": "sesame"}})
    c = await stack.connect("adm", "u1", transport="poll")
    await c.wait_state(lambda s: True)
    url = stack.url("/bridge/admin/sessions")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        async with stack.http.get(url, headers=headers) as r:
            assert r.status == 401 and (await r.json())["error"]["code"] == "unauthorized"
    auth = {"Authorization": "Bearer sesame"}
    async with stack.http.get(url, headers=auth) as r:
        listing = await r.json()
    assert [s["sessionId"] for s in listing["sessions"]] == ["adm"]
    async with stack.http.get(url + "/adm", headers=auth) as r:
        detail = await r.json()
        raw = json.dumps(detail)
    assert detail["clients"][0]["transport"] == "poll" and detail["clients"][0]["userId"] == "u1"
    assert detail["replay"]["head"] >= 2 and detail["presence"]["online"] == ["u1"]
    assert detail["upstream"]["polling"] is True
    assert detail["upstream"]["pollsHere"] is True  # memory: always this instance
    assert c.token not in raw, "no resume tokens in admin answers"
    async with stack.http.get(url + "/nope", headers=auth) as r:
        assert r.status == 404
