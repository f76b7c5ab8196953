"""Real parts for the many-instance tests: ``redis-server`` processes on free
ports, bridge processes (``python -m bridge run``) sharing one Redis, and real
nginx in front of them with the shipped deploy/nginx/bridge.conf, round-robin
and no stickiness."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary(name: str, package: str) -> str:
    found = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if Path(p).exists()), None
    )
    if found is None:
        raise RuntimeError(f"{name} is missing: `make test` installs Debian's {package} package")
    return found


async def wait_port(port: int, timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or 'server'} did not listen on {port} in {timeout}s")
        await asyncio.sleep(0.05)


async def start_nginx(d: Path, site: str, port: int) -> subprocess.Popen[bytes]:
    """Real nginx in the foreground with ``site`` (a server block and its
    upstreams) as its only http config, its files in ``d``; checked with -t."""
    binary = _binary("nginx", "nginx")
    (d / "site.conf").write_text(site)
    (d / "nginx.conf").write_text(
        f"""user root;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/site.conf;
}}
"""
    )
    args = [binary, "-p", str(d), "-c", str(d / "nginx.conf")]
    check = subprocess.run([*args, "-t"], capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        raise RuntimeError(f"nginx -t failed:\n{check.stderr}")
    proc = subprocess.Popen(args)
    try:
        await wait_port(port, what="nginx")
    except TimeoutError:
        proc.kill()
        raise RuntimeError((d / "nginx-error.log").read_text()) from None
    return proc


class RedisServer:
    """One ``redis-server`` without persistence (a restart loses everything,
    the worst case for the bridge) on a free port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [_binary("redis-server", "redis-server"), "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")],
        )  # fmt: skip
        await wait_port(self.port, what="redis-server")

    def kill(self) -> None:
        """SIGKILL: what a crashed or restarted Redis looks like to the bridge."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
            self.proc = None


class Instance:
    def __init__(self, index: int, config: Path, logfile: Path) -> None:
        self.index = index
        self.port = free_port()
        self.config = config
        self.logfile = logfile
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        out = self.logfile.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run", "--config", str(self.config),
             "--port", str(self.port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        out.close()
        await wait_port(self.port, 20.0, f"bridge instance {self.index}")

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


class Cluster:
    """``n`` bridge instances on one Redis behind nginx (round-robin)."""

    def __init__(
        self, workdir: Path, redis: RedisServer, backend_url: str, n: int, config: dict[str, Any]
    ) -> None:
        self.workdir = workdir
        self.redis = redis
        self.backend_url = backend_url
        cfg_path = workdir / "bridge.yaml"
        cfg_path.write_text(yaml.safe_dump(config))
        self.instances = [Instance(i, cfg_path, workdir / f"bridge{i}.log") for i in range(n)]
        self.nginx_port = free_port()
        self.nginx: subprocess.Popen[bytes] | None = None
        #: regexes of ERROR lines a test expects in the instances' logs
        self.allow_errors: list[str] = []

    @property
    def url(self) -> str:
        """The load balancer's address: what clients use."""
        return f"http://127.0.0.1:{self.nginx_port}"

    async def start(self) -> None:
        await asyncio.gather(*(i.start() for i in self.instances))
        await asyncio.gather(*(self.wait_ready(i) for i in self.instances))
        await self._start_nginx()

    async def wait_ready(self, inst: Instance, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(inst.url + "/readyz") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"instance {inst.index} not ready:\n{inst.log()[-3000:]}")
                await asyncio.sleep(0.1)

    async def _start_nginx(self) -> None:
        site = (ROOT / "deploy" / "nginx" / "bridge.conf").read_text()
        servers = "".join(f"    server 127.0.0.1:{i.port};\n" for i in self.instances)
        site = site.replace("    server 127.0.0.1:8080;\n", servers)
        backend = self.backend_url.split("//", 1)[1].rstrip("/")
        site = site.replace("server 127.0.0.1:3000;", f"server {backend};")
        site = site.replace("listen 80;", f"listen 127.0.0.1:{self.nginx_port};")
        self.nginx = await start_nginx(self.workdir, site, self.nginx_port)

    async def stop(self) -> None:
        await asyncio.gather(*(i.stop() for i in self.instances))
        if self.nginx is not None:
            self.nginx.terminate()
            self.nginx.wait(timeout=10)
            self.nginx = None

    def logs(self) -> str:
        return "\n".join(f"--- instance {i.index}\n{i.log()[-4000:]}" for i in self.instances)

    def unexpected_errors(self) -> list[str]:
        """ERROR lines (and unhandled exceptions of the event loop, which asyncio
        logs at ERROR) in the instances' logs that the test did not expect."""
        allowed = [re.compile(p) for p in self.allow_errors]
        found = []
        for inst in self.instances:
            for line in inst.log().splitlines():
                if (" ERROR " in line or "never retrieved" in line) and not any(
                    p.search(line) for p in allowed
                ):
                    found.append(f"instance {inst.index}: {line}")
        return found
