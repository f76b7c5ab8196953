"""The systemd unit, the container image and the Kubernetes manifests: verified
where the tool exists here (systemd-analyze), parsed and cross-checked where it
does not (no Docker engine, no cluster on the development machine)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bridge.config import config_from_dict, parse_duration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def unit() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (DEPLOY / "systemd" / "bridge.service").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), value.strip())
    return values


def test_the_systemd_unit_is_hardened_and_drains():
    u = unit()
    for key, want in {
        "DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
        "ProtectHome": "yes", "PrivateTmp": "yes", "KillSignal": "SIGTERM",
        "ExecReload": "/bin/kill -HUP $MAINPID",
    }.items():  # fmt: skip
        assert u[key] == want, key
    assert "session-bridge run --config" in u["ExecStart"]
    assert parse_duration(u["TimeoutStopSec"]) > 30, "longer than the default drain"


def test_systemd_analyze_verifies_the_unit(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    text = (DEPLOY / "systemd" / "bridge.service").read_text()
    exe = Path(sys.executable).parent / "session-bridge"
    assert exe.exists()
    (tmp_path / "bridge.service").write_text(
        text.replace("/opt/session-bridge/.venv/bin/session-bridge", str(exe))
    )
    res = subprocess.run([analyze, "verify", str(tmp_path / "bridge.service")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_the_container_image_is_slim_non_root_and_checks_health():
    text = (DEPLOY / "container" / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines()
                    if line and not line.startswith("#") and not line.startswith(" ")]  # fmt: skip
    names = [i[0] for i in instructions]
    assert names[0] == "FROM" and "python:3.11-slim" in instructions[0][1]
    user = [i[1] for i in instructions if i[0] == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert "HEALTHCHECK" in names and "/healthz" in text
    assert ["EXPOSE", "8080"] in instructions
    assert ["STOPSIGNAL", "SIGTERM"] in instructions
    assert re.search(r'ENTRYPOINT \["session-bridge", "run"', text)
    # the files it copies exist
    for src in re.findall(r"^COPY (?!--from)(\S+(?: \S+)*) \S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), path


def manifests() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests_name_the_right_probes_ports_and_grace():
    docs = {d["kind"]: d for d in manifests()}
    assert {"Deployment", "Service", "ConfigMap", "Secret"} <= set(docs)
    cfg_text = docs["ConfigMap"]["data"]["bridge.yaml"]
    env = dict(docs["Secret"]["stringData"])
    cfg = config_from_dict(yaml.safe_load(cfg_text), env)
    pod = docs["Deployment"]["spec"]["template"]
    bridge = next(c for c in pod["spec"]["containers"] if c["name"] == "session-bridge")
    ports = {p["name"]: p["containerPort"] for p in bridge["ports"]}
    assert ports["bridge"] == cfg.listen.port
    assert bridge["livenessProbe"]["httpGet"] == {"path": cfg.paths.health, "port": "bridge"}
    assert bridge["readinessProbe"]["httpGet"] == {"path": cfg.paths.ready, "port": "bridge"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(cfg.listen.port)
    assert annotations["prometheus.io/path"] == cfg.paths.metrics
    pre_stop = bridge["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(pre_stop[1]) + cfg.shutdown.timeout, "the drain fits in the grace period"
    assert cfg.upstream.url == "http://127.0.0.1:3000"
    app = next(c for c in pod["spec"]["containers"] if c["name"] == "legacy-app")
    assert app["ports"][0]["containerPort"] == 3000
    service_ports = {p["name"]: p["targetPort"] for p in docs["Service"]["spec"]["ports"]}
    assert service_ports["bridge"] == "bridge"
