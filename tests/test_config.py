import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from bridge.config import (
    Config,
    config_from_dict,
    json_schema,
    load_config,
    parse_duration,
    parse_size,
)
from bridge.exceptions import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "config").glob("*.yaml"))


def problems(data, env=None):
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, env or {})
    return info.value.problems


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_and_match_the_schema(path):
    cfg = load_config(path, env={})
    assert isinstance(cfg, Config)
    jsonschema.validate(yaml.safe_load(path.read_text()), json_schema())


def test_there_are_examples():
    assert {p.name for p in EXAMPLES} >= {"bridge.example.yaml", "minimal.yaml"}


def test_schema_file_is_up_to_date():
    on_disk = json.loads((ROOT / "config" / "bridge.schema.json").read_text())
    assert on_disk == json_schema(), "run `make schema` and commit config/bridge.schema.json"


def test_schema_rejects_unknown_keys():
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"upstream": {"url": "http://x"}, "bogus": 1}, json_schema())


def test_defaults_for_everything_but_the_url():
    cfg = config_from_dict({"upstream": {"url": "http://127.0.0.1:3000"}})
    assert cfg.listen.port == 8080
    assert cfg.heartbeat.interval == 25.0 and cfg.heartbeat.timeout == 60.0
    assert cfg.replay.max_bytes == 1024 * 1024 and cfg.replay.max_age == 300.0
    assert cfg.limits.max_message_bytes == 64 * 1024
    assert set(cfg.upstream.commands) == {"join", "vote", "reveal", "reset", "leave"}
    assert cfg.upstream.commands["vote"].idempotent
    assert cfg.upstream.keepalive is not None and cfg.upstream.keepalive.every == 10.0
    assert cfg.upstream.push is None
    assert cfg.upstream.forward_headers == ("cookie", "authorization")
    assert problems({}) == ["upstream: required key is missing"]
    assert problems(None) == ["upstream: required key is missing"]


def test_config_is_frozen():
    cfg = config_from_dict({"upstream": {"url": "http://x"}})
    with pytest.raises(AttributeError):
        cfg.listen = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.upstream.commands["x"] = None  # type: ignore[index]
    assert cfg.replace(listen=cfg.listen).listen is cfg.listen


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"upstream": {"url": "http://x", "retry": {"attempts": 0}}},
         "upstream.retry.attempts: must be >= 1, got 0"),
        ({"upstream": {"url": "http://x"}, "heartbeat": {"interval": "5x"}},
         "heartbeat.interval: expected a duration like 200ms, 5s or 1m, got '5x'"),
        ({"upstream": {"url": "http://x"}, "replay": {"max_bytes": "lots"}},
         "replay.max_bytes: expected a size like 512, 64KiB or 1MiB, got 'lots'"),
        ({"upstream": {"url": "http://x"}, "replay": {"max_bytes": 0}},
         "replay.max_bytes: must be at least 1 bytes, got 0"),
        ({"upstream": {"url": "http://x"}, "heartbeat": {"interval": 0}},
         "heartbeat.interval: must be greater than 0, got 0"),
        ({"upstream": {"url": "http://x"}, "listen": {"port": 70000}},
         "listen.port: must be <= 65535, got 70000"),
        ({"upstream": {"url": "http://x"}, "listen": {"port": "80"}},
         "listen.port: expected an integer, got '80'"),
        ({"upstream": {"url": "http://x"}, "reconnect": {"jitter": "half"}},
         "reconnect.jitter: expected a number, got 'half'"),
        ({"upstream": {"url": "http://x"}, "codecs": {"msgpack": "yes"}},
         "codecs.msgpack: expected true or false, got 'yes'"),
        ({"upstream": {"url": "http://x"}, "backplane": {"kind": "etcd"}},
         "backplane.kind: expected one of memory, redis, got 'etcd'"),
        ({"upstream": {"url": "http://x"}, "listen": "everywhere"},
         "listen: expected a mapping, got 'everywhere'"),
        ({"upstream": {"url": "http://x"}, "security": {"allowed_origins": "x"}},
         "security.allowed_origins: expected a list, got 'x'"),
        ({"upstream": {"url": "http://x", "commands": []}},
         "upstream.commands: expected a mapping, got []"),
        ({"upstream": {"url": "http://x", "commands": {"vote": {"method": "PUT"}}}},
         "upstream.commands.vote.path: required key is missing"),
        ({"upstream": {"url": "http://x", "commands": {"vote": {"path": "/v", "method": "FETCH"}}}},
         "upstream.commands.vote.method: expected one of GET, POST, PUT, PATCH, DELETE, got 'FETCH'"),
        ({"upstream": {"url": "http://x", "retyr": {}}},
         "upstream.retyr: unknown key (allowed: adaptive, breaker, commands, forward_headers, "
         "headers, hold, keepalive, max_in_flight, max_queue, max_response, passthrough, push, "
         "retry, session_concurrency, state, timeout, url)"),
        ({"upstream": {"url": None}}, "upstream.url: must not be empty"),
        ({"upstream": {"url": ["x"]}}, "upstream.url: expected a string, got ['x']"),
    ],
)  # fmt: skip
def test_errors_name_the_key_and_what_was_expected(data, expected):
    assert expected in problems(data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"upstream": {"url": "ftp://x"}},
         "upstream.url: expected an http:// or https:// URL, got 'ftp://x'"),
        ({"upstream": {"url": "http://x"}, "paths": {"poll": "poll"}},
         "paths.poll: must start with '/', got 'poll'"),
        ({"upstream": {"url": "http://x", "commands": {"vote": {"path": "v"}}}},
         "upstream.commands.vote.path: must start with '/', got 'v'"),
        ({"upstream": {"url": "http://x", "commands": {"vote": {"path": "/{nope}"}}}},
         "upstream.commands.vote.path: unknown placeholder {nope} in '/{nope}' (use one of "
         "{sessionId}, {userId}, {clientId}, {params.NAME}, {payload.NAME}, "
             "{user.NAME}, {session.NAME})"),
        ({"upstream": {"url": "http://x", "commands": {"vote": {"path": "/v", "json": {"a": "{payload}"}}}}},
         "upstream.commands.vote.json: {payload} needs a field name, like {payload.name}, in '{payload}'"),
        ({"upstream": {"url": "http://x", "commands": {"heartbeat": {"path": "/h"}}}},
         "upstream.commands.heartbeat: 'heartbeat' is handled by the bridge and cannot be mapped"),
        ({"upstream": {"url": "http://x"}, "heartbeat": {"interval": "30s", "timeout": "10s"}},
         "heartbeat.timeout: must be longer than heartbeat.interval (10.0s <= 30.0s)"),
        ({"upstream": {"url": "http://x"}, "reconnect": {"initial": "10s", "max": "1s"}},
         "reconnect.max: must be >= reconnect.initial"),
        ({"upstream": {"url": "http://x", "retry": {"initial": "10s", "max": "1s"}}},
         "upstream.retry.max: must be >= upstream.retry.initial"),
        ({"upstream": {"url": "http://x", "push": {"path": "/p"}}},
         "upstream.push.secret: required when upstream.push is set"),
        ({"upstream": {"url": "http://x"}, "backplane": {"kind": "redis", "url": "localhost:6379"}},
         "backplane.url: must start with redis://, rediss:// or unix://, got 'localhost:6379'"),
        ({"upstream": {"url": "http://x"}, "backplane": {"kind": "redis", "tls": {}}},
         "backplane.tls: needs a rediss:// url"),
        ({"upstream": {"url": "http://x"}, "backplane": {"kind": "redis", "prefix": "a b"}},
         "backplane.prefix: 1-64 characters of [A-Za-z0-9_.:-]"),
        ({"upstream": {"url": "http://x"}, "backplane": {"kind": "redis", "lease": "100ms"}},
         "backplane.lease: must be at least 500ms, got 0.1s"),
        ({"upstream": {"url": "http://x"}, "backplane": {"kind": "redis", "sentinel": {}}},
         "backplane.sentinel.hosts: list at least one host:port"),
        ({"upstream": {"url": "http://x"},
          "backplane": {"kind": "redis", "sentinel": {"hosts": ["nohost"]}}},
         "backplane.sentinel.hosts[0]: expected host:port, got 'nohost'"),
    ],
)  # fmt: skip
def test_semantic_errors(data, expected):
    assert expected in problems(data)


def test_every_problem_is_reported_at_once():
    found = problems(
        {"upstream": {"url": "http://x", "timeout": "soon"}, "limits": {"nope": 1}, "x": 2}
    )
    assert len(found) == 3


def test_env_substitution():
    env = {"URL": "http://app:3000", "SECRET": "s3"}
    cfg = config_from_dict(
        {
            "upstream": {"url": "${URL}", "push": {"secret": "${SECRET}"}},
            "admin": {"token": "${ADMIN:-}"},
            "security": {"token_secret": "${TS:-fallback}"},
        },
        env,
    )
    assert cfg.upstream.url == "http://app:3000"
    assert cfg.upstream.push is not None and cfg.upstream.push.secret == "s3"
    assert cfg.admin.token == "" and cfg.security.token_secret == "fallback"
    assert problems({"upstream": {"url": "http://x", "push": {"secret": "${MISSING}"}}}) == [
        "upstream.push.secret: environment variable MISSING is not set "
        "(write ${MISSING:-} to allow it to be empty)"
    ]
    assert problems({"upstream": {"url": "http://x"}, "security": {"allowed_origins": ["${O}"]}})[
        0
    ].startswith("security.allowed_origins[0]: environment variable O")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("200ms", 0.2), ("5s", 5.0), ("1m", 60.0), ("1.5h", 5400.0), (3, 3.0), (0.5, 0.5), ("7", 7.0)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5 minutes", "-1s", True, -3, float("nan"), None, [1]])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("64KiB", 65536),
        ("1MiB", 1048576),
        ("2KB", 2000),
        (512, 512),
        ("10B", 10),
        ("1GiB", 1 << 30),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["64 kilobytes", -1, True, None, 1.5])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(listy)


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args], capture_output=True, text=True, timeout=60,
        env=env,
    )  # fmt: skip


def test_check_config_cli(tmp_path):
    ok = run_cli("check-config", str(ROOT / "config" / "minimal.yaml"))
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("upstream: {url: http://x, retry: {attempts: 0}}\nlisten: {port: -1}\n")
    res = run_cli("check-config", str(bad))
    assert res.returncode == 1
    assert "upstream.retry.attempts: must be >= 1, got 0" in res.stderr
    assert "listen.port: must be >= 0, got -1" in res.stderr


def test_schema_cli(tmp_path):
    out = tmp_path / "schema.json"
    assert run_cli("schema", "--output", str(out)).returncode == 0
    assert json.loads(out.read_text()) == json_schema()
    printed = run_cli("schema")
    assert json.loads(printed.stdout)["title"] == "session-bridge configuration"


def test_run_cli_refuses_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: {port: 1}\n")
    res = run_cli("run", "--config", str(bad))
    assert res.returncode == 1
    assert "upstream: required key is missing" in res.stderr


def test_a_redis_backplane_is_accepted():
    cfg = config_from_dict({
        "upstream": {"url": "http://x"},
        "backplane": {"kind": "redis", "url": "rediss://r:6380/1", "prefix": "poker",
                      "lease": "2s", "pool_size": 16, "tls": {"ca_file": "/ca.pem"}},
    })  # fmt: skip
    assert cfg.backplane.kind == "redis" and cfg.backplane.lease == 2.0
    assert cfg.backplane.tls is not None and cfg.backplane.tls.ca_file == "/ca.pem"
