"""Load generator for bench/fanout.py: many WebSocket clients on one raw epoll loop.

It runs in its own process and is built to cost less CPU than the server it
measures: no WebSocket library and no asyncio machinery per read, just
``epoll`` over non-blocking sockets, frames parsed from their headers in
place, and no JSON parsing. Completion of a change is counted by stream
messages per connection; only in timing mode is the driver's send time
(``"t"``) read out of each message with a byte search. It answers the
bridge's ``ping`` messages and protocol-level pings, so heartbeats stay on.

Driven over stdin, one JSON command per line; answers one JSON line each:

    {"cmd": "connect", "url": "ws://127.0.0.1:8080/path?query", "n": 1000,
     "users": 20}                       -> {"connected": total, "failed": k}
    {"cmd": "reset", "timing": true}     -> {"ok": true, "cpu": s}  (clears counters;
                                            timing false skips latency samples)
    {"cmd": "report"}                    -> counters, latency percentiles, own CPU
    {"cmd": "close"}                     -> closes everything and exits

It also prints {"complete": c} when every connection has received c stream
messages since the last reset, so the driver can run a closed loop.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import resource
import select
import socket
import sys
import time
from urllib.parse import urlsplit

SESSION_PREFIX = b'{"type":"session"'
PING_PREFIX = b'{"type":"ping"'
WELCOME_PREFIX = b'{"type":"welcome"'
RCVBUF = int(os.environ.get("LOADGEN_RCVBUF", "0"))


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def masked_frame(opcode: int, payload: bytes) -> bytes:
    # RFC 6455 §5.3: client frames are masked; an all-zero key leaves the payload as is.
    n = len(payload)
    if n < 126:
        header = bytes((0x80 | opcode, 0x80 | n))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    return header + b"\0\0\0\0" + payload


def number_after(data: bytes, key: bytes) -> float | None:
    at = data.find(key)
    if at < 0:
        return None
    start = at + len(key)
    end = start
    while end < len(data) and data[end] in b"0123456789.-e+":
        end += 1
    try:
        return float(data[start:end])
    except ValueError:
        return None


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Conn:
    __slots__ = ("sock", "buf", "upgraded", "welcomed", "count", "generation", "dead")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.upgraded = False
        self.welcomed = False
        self.count = 0
        self.generation = 0
        self.dead = False


class LoadGen:
    def __init__(self) -> None:
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.n = 0
        self.generation = 0
        self.reset(True)

    def reset(self, timing: bool) -> None:
        self.timing = timing
        self.generation += 1
        self.frames = 0
        self.bytes = 0
        self.stream = 0
        self.latencies: list[float] = []
        self.reached: dict[int, int] = {}
        self.pings = 0
        self.closes = 0

    # -- output
    def emit(self, obj: dict[str, object]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    # -- connections
    def connect(self, url: str, n: int, users: int) -> None:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        pending: list[Conn] = []
        failed = 0
        for k in range(n):
            index = len(self.conns) + len(pending)
            path = f"{parts.path}?{parts.query}&userId=u{index % users}"
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: bridge.v1.json\r\n\r\n"
            ).encode()
            try:
                sock = socket.create_connection((host, port), timeout=10)
                if RCVBUF:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                sock.sendall(request)
                sock.setblocking(False)
            except OSError:
                failed += 1
                continue
            conn = Conn(sock)
            pending.append(conn)
            self.conns[sock.fileno()] = conn
            self.ep.register(sock.fileno(), select.EPOLLIN)
            if len(pending) >= 200 or k == n - 1:
                failed += self.wait_welcomes(pending)
                pending = []
        self.n = sum(1 for c in self.conns.values() if not c.dead)
        self.emit({"connected": self.n, "failed": failed})

    def wait_welcomes(self, batch: list[Conn]) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(c.welcomed or c.dead for c in batch):
            self.poll(0.1, commands=False)
        return sum(1 for c in batch if not c.welcomed)

    def drop(self, conn: Conn) -> None:
        if conn.dead:
            return
        conn.dead = True
        self.closes += 1
        fd = conn.sock.fileno()
        if fd >= 0:
            self.ep.unregister(fd)
        conn.sock.close()

    # -- the loop
    def poll(self, timeout: float, commands: bool = True) -> None:
        for fd, _ in self.ep.poll(timeout):
            if fd == 0:
                if commands:
                    self.command(sys.stdin.readline())
                continue
            conn = self.conns.get(fd)
            if conn is None or conn.dead:
                continue
            try:
                data = conn.sock.recv(262144)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    continue
                self.drop(conn)
                continue
            if not data:
                self.drop(conn)
                continue
            self.received(conn, data)

    def received(self, conn: Conn, data: bytes) -> None:
        if conn.buf:
            data = conn.buf + data
            conn.buf = b""
        if not conn.upgraded:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                conn.buf = data
                return
            if not data.startswith(b"HTTP/1.1 101"):
                self.drop(conn)
                return
            data = data[end + 4 :]
            conn.upgraded = True
        pos = 0
        size = len(data)
        while size - pos >= 2:
            n = data[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + n
            if end > size:
                break
            opcode = data[pos] & 0x0F
            start = pos + head
            if opcode == 1 or opcode == 2:
                if data.startswith(SESSION_PREFIX, start):
                    self.stream += 1
                    if conn.generation != self.generation:
                        conn.generation = self.generation
                        conn.count = 0
                    conn.count += 1
                    c = self.reached.get(conn.count, 0) + 1
                    self.reached[conn.count] = c
                    if c == self.n:
                        self.emit({"complete": conn.count})
                    if self.timing:
                        t = number_after(data[start:end], b'"t":')
                        if t is not None:
                            self.latencies.append(time.monotonic() - t)
                elif data.startswith(PING_PREFIX, start):
                    self.pings += 1
                    ts = number_after(data[start:end], b'"ts":')
                    self.send(conn, masked_frame(1, b'{"type":"pong","ts":%d}' % int(ts or 0)))
                elif data.startswith(WELCOME_PREFIX, start):
                    conn.welcomed = True
            elif opcode == 9:  # protocol ping → pong
                self.send(conn, masked_frame(0xA, data[start:end]))
            elif opcode == 8:
                self.drop(conn)
                return
            self.frames += 1
            pos = end
        self.bytes += pos
        if pos < size:
            conn.buf = data[pos:]

    def send(self, conn: Conn, frame: bytes) -> None:
        try:
            conn.sock.send(frame)
        except OSError:
            self.drop(conn)

    def command(self, line: str) -> None:
        if not line:
            self.running = False
            return
        cmd = json.loads(line)
        kind = cmd["cmd"]
        if kind == "connect":
            self.connect(cmd["url"], int(cmd["n"]), int(cmd.get("users", 20)))
        elif kind == "reset":
            self.reset(bool(cmd.get("timing", True)))
            self.emit({"ok": True, "cpu": cpu_seconds()})
        elif kind == "report":
            lat = self.latencies
            self.emit(
                {
                    "frames": self.frames,
                    "bytes": self.bytes,
                    "stream": self.stream,
                    "pings": self.pings,
                    "closes": self.closes,
                    "p50": percentile(lat, 0.50),
                    "p99": percentile(lat, 0.99),
                    "max": max(lat) if lat else float("nan"),
                    "samples": len(lat),
                    "cpu": cpu_seconds(),
                }
            )
        elif kind == "close":
            for conn in list(self.conns.values()):
                self.drop(conn)
            self.emit({"closed": len(self.conns)})
            self.running = False

    def run(self) -> None:
        self.ep.register(0, select.EPOLLIN)
        self.running = True
        while self.running:
            self.poll(1.0)
            if not self.timing:
                # Flat out, read in batches: frames that arrive meanwhile are read by
                # one recv() per socket, which keeps the kernel's share per frame low.
                time.sleep(0.010)


if __name__ == "__main__":
    raise_nofile()
    LoadGen().run()
