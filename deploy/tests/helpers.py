"""Shared helpers for the deploy checks: paths, tools, the real gateway process,
a minimal WebSocket client, and PromQL metric-name extraction.

Everything talks to loopback only, and every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

DEPLOY = Path(__file__).resolve().parent.parent
REPO = DEPLOY.parent

# How long any single wait may take before a check fails.
WAIT = 10.0


def tool(name: str) -> str | None:
    """A command from PATH, or from the bin/ directory of the Python running the
    tests (where pip puts hadolint, shellcheck, kubernetes-validate...)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    return shutil.which(name)


def run(cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def shardcast_bin() -> str:
    """The gateway binary: $SHARDCAST_BIN, else the workspace's debug build."""
    path = os.environ.get("SHARDCAST_BIN") or str(REPO / "target" / "debug" / "shardcast")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(
            f"gateway binary not found at {path}: run `cargo build` or set SHARDCAST_BIN"
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Gateway:
    """A running shardcast process on loopback ports."""

    proc: subprocess.Popen
    ws: str
    admin: str
    node: str
    broker: str = ""
    log_lines: list = field(default_factory=list)

    def url(self, path: str, admin: bool = True) -> str:
        return f"http://{self.admin if admin else self.ws}{path}"

    def get(self, path: str, admin: bool = True) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path, admin), timeout=WAIT) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path: str, body: dict, headers: dict | None = None) -> tuple[int, str]:
        req = urllib.request.Request(
            self.url(path),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}"
        return body

    def sigterm(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Ends the process: SIGTERM, then SIGKILL after a bounded wait."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_gateway(args: list[str] | None = None, env: dict | None = None,
                  listen: str = "127.0.0.1:0", admin: str = "127.0.0.1:0") -> Gateway:
    """Starts the real binary and waits for its "listening" log line (JSON).
    SHARDCAST_* variables of the caller's environment are not passed on."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDCAST_")}
    full_env.update(env or {})
    cmd = [shardcast_bin(), "--listen", listen, "--admin-listen", admin,
           "--log-format", "json", "--log", "info", *(args or [])]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=full_env)
    lines: list[str] = []
    found: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("message") == "listening":
                found.put(rec)
        found.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        rec = found.get(timeout=WAIT)
    except queue.Empty:
        rec = None
    if rec is None:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        raise RuntimeError(f"shardcast did not start (exit {proc.returncode}): {lines}")
    return Gateway(proc, rec["ws"], rec["admin"], rec.get("node", ""), rec.get("broker", ""), lines)


# ---------------------------------------------------------------------------
# nginx: the production configuration as the Compose stack renders it.

NGINX_PROD = DEPLOY / "nginx" / "nginx.conf"
NGINX_RENDER = DEPLOY / "docker" / "nginx-upstreams.sh"


def render_nginx_conf(upstreams: list[str], dest: Path) -> str:
    """deploy/nginx/nginx.conf with its upstream block set to `upstreams`, by
    the script the Compose nginx runs at start (deploy/docker/nginx-upstreams.sh,
    under /bin/sh as in the container)."""
    res = run(["/bin/sh", str(NGINX_RENDER)],
              env={"PATH": "/usr/bin:/bin", "NGINX_TEMPLATE": str(NGINX_PROD),
                   "NGINX_CONF": str(dest), "NGINX_UPSTREAMS": " ".join(upstreams)})
    assert res.returncode == 0, res.stderr
    return dest.read_text()


def marked_block(conf: str, name: str) -> list[str]:
    """The lines between `# BEGIN name` and `# END name` (stripped)."""
    m = re.search(rf"^[ \t]*# BEGIN {name}[ \t]*\n(.*?)^[ \t]*# END {name}[ \t]*$", conf, re.M | re.S)
    assert m, f"no # BEGIN {name} / # END {name} block"
    return [line.strip() for line in m.group(1).splitlines() if line.strip()]


def replace_marked_block(conf: str, name: str, lines: list[str]) -> str:
    """Replaces the lines between the markers, as tests/load_balancer.rs does."""
    body = "".join(line + "\n" for line in lines)
    new, n = re.subn(rf"(^[ \t]*# BEGIN {name}[ \t]*\n).*?(^[ \t]*# END {name}[ \t]*$)",
                     lambda m: m.group(1) + body + m.group(2), conf, flags=re.M | re.S)
    assert n == 1, f"no # BEGIN {name} / # END {name} block"
    return new


# ---------------------------------------------------------------------------
# A real Redis (Debian's redis-server) on a loopback port, for the broker.

@dataclass
class Redis:
    proc: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_redis(workdir: Path) -> Redis:
    """redis-server on 127.0.0.1, no persistence, as the broker needs it; waits
    until it answers PING."""
    server = tool("redis-server")
    if not server:
        raise FileNotFoundError("redis-server not found: `apt-get install redis-server` "
                                "(deploy/run-tests.sh does)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    redis = Redis(proc, port)
    deadline = time.monotonic() + WAIT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited {proc.returncode}: {proc.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return redis
        except OSError:
            pass
        if time.monotonic() > deadline:
            redis.stop()
            raise RuntimeError(f"redis-server did not answer PING on port {port}")
        time.sleep(0.05)


def wait_ready(gw: "Gateway", timeout: float = WAIT) -> None:
    """Waits until the gateway is ready (with Redis: connected and subscribed).

    Both /health/ready and the shardcast_ready gauge must say so: for the first
    few hundred milliseconds after start /health/ready answers 200 before the
    broker has been checked, then 503 until Redis is verified, while the gauge
    is only set once the broker has been checked."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = gw.get("/health/ready")
        if status == 200 and metric_value(gw.metrics(), "shardcast_ready") == 1:
            return
        assert time.monotonic() < deadline, f"gateway not ready after {timeout}s: {body}"
        time.sleep(0.05)


def metric_value(text: str, series: str) -> float | None:
    """The value of one series (`name` or `name{labels}` as printed) on /metrics."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def wait_metric(gw: "Gateway", series: str, pred, timeout: float = WAIT) -> float:
    """Polls /metrics until pred(value of series) holds; returns the value."""
    deadline = time.monotonic() + timeout
    while True:
        value = metric_value(gw.metrics(), series)
        if value is not None and pred(value):
            return value
        assert time.monotonic() < deadline, f"{series} = {value} after {timeout}s"
        time.sleep(0.05)


def wait_redis_subscribed(gw: "Gateway", channels: int = 1) -> None:
    """A subscribe is acked at once and reaches Redis just after: wait until the
    gateway's Redis subscriptions are in place, so a publication made on another
    gateway cannot overtake them."""
    wait_metric(gw, "shardcast_redis_subscriptions", lambda v: v >= channels)
    wait_ready(gw)


# ---------------------------------------------------------------------------
# A minimal RFC 6455 client: enough to upgrade, read the welcome frame, send a
# text frame and read a close frame. Client frames are masked as required.

class WsClosed(Exception):
    def __init__(self, code: int | None, reason: str):
        super().__init__(f"closed {code} {reason!r}")
        self.code = code
        self.reason = reason


class WsClient:
    def __init__(self, addr: str, path: str = "/ws", timeout: float = WAIT):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
             "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"connection closed during the upgrade: {head!r}")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        self.status_line = head.split(b"\r\n", 1)[0].decode()
        self.headers = head.decode(errors="replace")
        if " 101 " not in self.status_line:
            raise ConnectionError(f"upgrade refused: {self.status_line}")

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise WsClosed(None, "eof")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self) -> str:
        """The next text frame; answers pings; raises WsClosed on a close frame."""
        while True:
            b0, b1 = self._read(2)
            opcode = b0 & 0x0F
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            payload = self._read(n)
            if opcode == 0x8:
                code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else None
                # Complete the closing handshake, as a well-behaved client does.
                try:
                    self._send(0x8, payload[:2])
                except OSError:
                    pass
                raise WsClosed(code, payload[2:].decode(errors="replace"))
            if opcode == 0x9:
                self._send(0xA, payload)
                continue
            if opcode in (0x1, 0x2):
                return payload.decode()

    def recv_json(self) -> dict:
        return json.loads(self.recv())

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send_text(self, text: str) -> None:
        self._send(0x1, text.encode())

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------
# Metric names

METRIC_TOKEN = re.compile(r"shardcast_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def exported_metrics(text: str) -> tuple[set[str], set[str]]:
    """(every series name on /metrics, the base names of histograms)."""
    names, histograms = set(), set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            names.add(name)
            if kind.strip() in ("histogram", "summary"):
                histograms.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names, histograms


def is_exported(token: str, names: set[str], histograms: set[str]) -> bool:
    if token in names:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        if token.endswith(suffix) and token[: -len(suffix)] in histograms:
            return True
    return False


def metric_tokens(text: str) -> set[str]:
    return set(METRIC_TOKEN.findall(text))
