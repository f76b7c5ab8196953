"""``session-bridge``: run | demo | client | check-config [--probe] | schema | init.

(The console script is not called ``bridge``: that is iproute2's command.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from .config import Config, config_from_dict, json_schema, load_config
from .exceptions import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="session-bridge",
        description="WebSocket/SSE/long-poll sidecar in front of a legacy estimation app.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the bridge with a YAML config")
    run.add_argument("--config", "-c", required=True, help="YAML configuration file")
    run.add_argument("--host", help="override listen.host")
    run.add_argument("--port", type=int, help="override listen.port")
    run.add_argument("--debug", action="store_true", help="log each connection's lifecycle")
    demo = sub.add_parser("demo", help="run the bundled legacy backend behind the bridge")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8080, help="bridge port (default 8080)")
    demo.add_argument("--backend-port", type=int, default=0, help="legacy app port (default: any)")
    client = sub.add_parser(
        "client",
        help="watch a session's stream and send commands by hand (for debugging a deployment)",
        description="Prints every message the bridge sends as one JSON line on stdout. "
        "Reads commands from stdin, one a line: 'vote 5', 'reveal', 'reset', 'leave', or a "
        'JSON message like {"type": "vote", "payload": {"vote": "8"}}. Ends at end of input.',
    )
    client.add_argument("url", help="the bridge's base URL, e.g. http://127.0.0.1:8080")
    client.add_argument("--session", "-s", required=True, help="sessionId")
    client.add_argument("--user", "-u", required=True, help="userId")
    client.add_argument("--name", help="display name (the 'name' connect parameter)")
    client.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="another connect parameter (repeatable)")  # fmt: skip
    client.add_argument("--transports", default="websocket,sse,poll",
                        help="fallback order (default websocket,sse,poll)")  # fmt: skip
    client.add_argument("--codec", choices=("json", "msgpack"), default="json")
    check = sub.add_parser(
        "check-config",
        help="validate a YAML config; exit 1 with the problems (--probe: try it on the app)",
        description="Validates the config and says which demo routes are in effect. With "
        "--probe it also calls the running app as the bridge would: the join (with --user; a "
        "real join), the state route, and prints the decoded state, the captures and what "
        "would be refused and why.",
    )
    check.add_argument("file")
    check.add_argument("--probe", action="store_true", help="call the app (needs --session)")
    check.add_argument("--session", "-s", help="the sessionId to probe")
    check.add_argument("--user", "-u", help="join as this userId first (a real join)")
    check.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a connect parameter of that user, e.g. name=Alice (repeatable)",
    )
    check.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME: VALUE",
        help="a header the user's browser would send (forward_headers)",
    )
    check.add_argument("--leave", action="store_true", help="send the user's leave at the end")
    schema = sub.add_parser("schema", help="print the JSON Schema of the config file")
    schema.add_argument("--output", "-o", help="write it to this file instead")
    init = sub.add_parser(
        "init",
        help="draft a config from the app's OpenAPI document",
        description="Proposes routes for join, vote, reveal, reset, leave, keep-alive and "
        "state from the document's methods, paths, operation ids and parameter names, with a "
        "comment on each guess and TODO where it cannot tell. The draft passes check-config; "
        "try it on the app with check-config --probe.",
    )
    init.add_argument("--openapi", required=True, metavar="URL|FILE",
                      help="the OpenAPI document (3.x or Swagger 2.0; JSON or YAML)")  # fmt: skip
    init.add_argument("--output", "-o", help="write the draft to this file instead of stdout")
    init.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    return p


def _override(cfg: Config, host: str | None, port: int | None, debug: bool) -> Config:
    listen = cfg.listen
    if host is not None or port is not None:
        listen = type(listen)(host=host or listen.host, port=listen.port if port is None else port)
    logging_cfg = cfg.logging
    if debug:
        logging_cfg = type(logging_cfg)(level="debug", format=logging_cfg.format, debug=True)
    return cfg.replace(listen=listen, logging=logging_cfg)


def _raise_open_files(wanted: int) -> None:
    """Each connection is a file descriptor: lift the soft limit to the hard one."""
    import logging
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < wanted:
        logging.getLogger("bridge").warning(
            "open-files limit %d is below limits.max_connections (%d): raise LimitNOFILE",
            hard,
            wanted,
        )


def cmd_run(args: argparse.Namespace) -> int:
    from .app import ReloadSource, make_app
    from .logsetup import setup_logging

    def overrides(cfg: Config) -> Config:
        return _override(cfg, args.host, args.port, args.debug)

    try:
        cfg = overrides(load_config(args.config))
    except ConfigError as exc:
        print(f"session-bridge: {args.config}: {exc}", file=sys.stderr)
        return 1
    setup_logging(cfg.logging)
    for note in cfg.notes:
        logging.getLogger("bridge").warning("%s", note)
    _raise_open_files(cfg.limits.max_connections)
    app = make_app(cfg, reload_from=ReloadSource(args.config, overrides))
    try:
        asyncio.run(serve(app, cfg))
    except OSError as exc:
        print(f"session-bridge: cannot listen on {cfg.listen.host}:{cfg.listen.port}: {exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


async def serve(app: web.Application, cfg: Config) -> None:
    """Run until SIGTERM/SIGINT; then drain while still listening (so /readyz
    says 503 and clients are told where to go), and only then stop."""
    import signal

    from .transports.common import BRIDGE

    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, cfg.listen.host, cfg.listen.port).start()
        print(
            f"session-bridge listening on http://{cfg.listen.host}:{cfg.listen.port}"
            f" → upstream {cfg.upstream.url}",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        if cfg.shutdown.timeout > 0:
            await app[BRIDGE].drain(app[BRIDGE].cfg.shutdown.timeout)
    finally:
        await runner.cleanup()


async def _demo(host: str, port: int, backend_port: int) -> None:
    from .app import make_app
    from .demo.backend import make_backend_app

    backend = web.AppRunner(make_backend_app(test_hooks=False), access_log=None)
    await backend.setup()
    await web.TCPSite(backend, "127.0.0.1", backend_port).start()
    actual_backend_port = backend.addresses[0][1]
    push_secret = os.environ.get("BRIDGE_PUSH_SECRET", "demo-push-secret")
    cfg = config_from_dict(
        {
            "listen": {"host": host, "port": port},
            "upstream": {
                "url": f"http://127.0.0.1:{actual_backend_port}",
                "push": {"path": "/bridge/push", "secret": push_secret},
            },
            "presence": {"grace": "10s"},
        }
    )
    app = make_app(cfg)  # the app's page, login and cookie pass through
    bridge = web.AppRunner(app, access_log=None)
    await bridge.setup()
    try:
        await web.TCPSite(bridge, host, port).start()
    except OSError as exc:
        await backend.cleanup()
        raise SystemExit(
            f"session-bridge demo: cannot listen on {host}:{port}: {exc.strerror}"
        ) from None
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    print(f"legacy estimation backend: http://127.0.0.1:{actual_backend_port}", flush=True)
    print(f"planning poker through the bridge: http://{shown}:{port}/", flush=True)
    print(
        "open it in two browser tabs (the app's page, log in with any name); Ctrl-C stops the demo",
        flush=True,
    )
    try:
        await asyncio.Event().wait()
    finally:
        await bridge.cleanup()
        await backend.cleanup()


def cmd_demo(args: argparse.Namespace) -> int:
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        asyncio.run(_demo(args.host, args.port, args.backend_port))
    except KeyboardInterrupt:
        pass
    return 0


def parse_command_line(line: str) -> tuple[str, dict[str, object]] | None:
    """``vote 5`` → ("vote", {"vote": "5"}); a JSON map → its type and payload."""
    line = line.strip()
    if not line:
        return None
    if line.startswith("{"):
        data = json.loads(line)
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            raise ValueError("a JSON command needs a 'type'")
        payload = data.get("payload") or {k: v for k, v in data.items() if k != "type"}
        return data["type"], dict(payload)
    word, _, rest = line.partition(" ")
    if word == "vote":
        if not rest.strip():
            raise ValueError("usage: vote VALUE")
        return "vote", {"vote": rest.strip()}
    return word, {}


async def _client(args: argparse.Namespace) -> int:
    from .client import BridgeClient, ClientError

    params = dict(p.split("=", 1) for p in args.param if "=" in p)
    if args.name:
        params["name"] = args.name
    client = BridgeClient(
        args.url, args.session, args.user, params=params, codec=args.codec,
        transports=[t.strip() for t in args.transports.split(",") if t.strip()],
    )  # fmt: skip
    loop = asyncio.get_running_loop()

    def show(obj: object) -> None:
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    client.on_session = lambda state, seq: show({"type": "session", "seq": seq, "payload": state})
    client.on_presence = lambda online, seq: show(
        {"type": "presence", "seq": seq, "payload": {"online": online}}
    )
    client.on_transport = lambda kind: print(f"# transport: {kind}", file=sys.stderr, flush=True)
    client.on_disconnect = lambda err: print(f"# disconnected: {err}", file=sys.stderr, flush=True)
    client.on_error = lambda err: print(f"# error: {err}", file=sys.stderr, flush=True)
    try:
        await client.connect()
    except ClientError as exc:
        print(f"session-bridge client: {exc}", file=sys.stderr)
        await client.close()
        return 1
    print(f"# connected as client {client.client_id}", file=sys.stderr, flush=True)
    pending: set[asyncio.Task[None]] = set()

    async def run(type_: str, payload: dict[str, object]) -> None:
        try:
            show(await client.send(type_, payload))
        except ClientError as exc:
            error = {"code": exc.code, "message": exc.message}
            show({"type": "ack", "status": "error", "error": error})

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode():
        try:
            command = parse_command_line(line)
        except ValueError as exc:
            print(f"# {exc}", file=sys.stderr, flush=True)
            continue
        if command is not None:
            task = asyncio.create_task(run(*command))
            pending.add(task)
            task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending, timeout=30)
    await client.close()
    return 0


def cmd_client(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_client(args))
    except KeyboardInterrupt:
        return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return 1
    n = len(cfg.upstream.commands)
    print(f"{args.file}: ok (upstream {cfg.upstream.url}, {n} command{'' if n == 1 else 's'})")
    if not args.probe:
        for note in cfg.notes:
            print(f"note: {note}")
        return 0
    if not args.session:
        print("session-bridge: --probe needs --session", file=sys.stderr)
        return 2
    params = dict(p.partition("=")[::2] for p in args.param)
    headers = {}
    for h in args.header:
        name, _, value = h.partition(":")
        if name.strip().lower() in {f.lower() for f in cfg.upstream.forward_headers}:
            headers[name.strip()] = value.strip()
        else:
            print(f"note: --header {name.strip()} is not in upstream.forward_headers: not sent")
    from .probe import Probe

    return asyncio.run(Probe(cfg, sys.stdout).run(args.session, args.user, params, headers,
                                                  args.leave))  # fmt: skip


def cmd_schema(args: argparse.Namespace) -> int:
    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    import yaml

    from .exceptions import OpenAPIError
    from .openapi import draft, load_document

    if args.output and Path(args.output).exists() and not args.force:
        print(f"session-bridge: {args.output} exists (--force overwrites it)", file=sys.stderr)
        return 1
    try:
        doc, fetched = load_document(args.openapi)
    except OpenAPIError as exc:
        print(f"session-bridge: {exc}", file=sys.stderr)
        return 1
    try:  # a draft that fails, or does not pass check-config, is a bug of the drafter
        text, todos = draft(doc, args.openapi, fetched)
        config_from_dict(yaml.safe_load(text))
    except Exception as exc:  # pragma: no cover - guarded by tests/test_openapi.py
        print(f"session-bridge: could not draft a config from {args.openapi} (a bug of the "
              f"drafter, please report it with the document): {type(exc).__name__}: {exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    print(f"{todos} TODO{'' if todos == 1 else 's'} to look at; then: session-bridge "
          f"check-config {args.output or 'FILE'} --probe --session ROOM --user alice",
          file=sys.stderr)  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "run": cmd_run,
        "demo": cmd_demo,
        "client": cmd_client,
        "check-config": cmd_check_config,
        "schema": cmd_schema,
        "init": cmd_init,
    }
    return handlers[args.command](args)
