"""The rolling-update story, checked on the real binary with the settings of
deploy/k8s/base/deployment.yaml: on SIGTERM readiness goes false at once, the
public listener closes, liveness stays up, every client gets 1001 with a
retry_ms hint, closes are spread over the drain window, and the process exits
0 within drain window + close timeout, which is what the pod's
terminationGracePeriodSeconds is sized for (test_k8s.py checks that sum)."""

from __future__ import annotations

import re
import socket
import threading
import time

from helpers import WAIT, WsClient, WsClosed, wait_ready
from test_k8s import CONTAINER, duration_seconds, env_of

CLIENTS = 20


def test_sigterm_drains_within_the_grace_period(gateway_factory, redis_url):
    env = {k: v for k, v in env_of(CONTAINER).items()
           if v is not None and k not in ("SHARDCAST_LISTEN", "SHARDCAST_ADMIN_LISTEN")}
    # The Deployment reads the Redis URL from a Secret: a real Redis here.
    env["SHARDCAST_REDIS"] = redis_url
    drain = duration_seconds(env["SHARDCAST_DRAIN_WINDOW"])
    close_timeout = duration_seconds(env["SHARDCAST_CLOSE_TIMEOUT"])
    gw = gateway_factory(env=env)
    assert gw.broker == "redis"
    wait_ready(gw)
    clients = [WsClient(gw.ws, timeout=drain + close_timeout + WAIT) for _ in range(CLIENTS)]
    for c in clients:
        assert c.recv_json()["type"] == "welcome"
    # Ready before the SIGTERM (waited for, not sampled: on a loaded machine the
    # Redis probe can miss its 500ms deadline and readiness blink for a tick).
    wait_ready(gw)

    closes: list[tuple[float, int | None, str]] = []
    lock = threading.Lock()

    def wait_close(c: WsClient) -> None:
        try:
            while True:
                c.recv()
        except (WsClosed, OSError) as e:
            with lock:
                closes.append((time.monotonic(), getattr(e, "code", None), getattr(e, "reason", str(e))))

    threads = [threading.Thread(target=wait_close, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()

    t0 = time.monotonic()
    gw.sigterm()
    # Readiness turns false at once: load balancers stop sending new clients.
    deadline = t0 + 2
    while gw.get("/health/ready")[0] != 503:
        assert time.monotonic() < deadline, "readiness still true 2s after SIGTERM"
        time.sleep(0.05)
    # Liveness stays true while draining (a failing liveness probe would get the
    # container restarted mid-drain).
    assert gw.get("/health/live")[0] == 200
    # The public listener is closed: a new client is refused and retries elsewhere.
    host, port = gw.ws.rsplit(":", 1)
    deadline = t0 + 2
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "public port still accepting 2s after SIGTERM"
        time.sleep(0.05)

    code = gw.proc.wait(timeout=drain + close_timeout + WAIT)
    elapsed = time.monotonic() - t0
    for t in threads:
        t.join(timeout=WAIT)
    for c in clients:
        c.close()

    assert code == 0, f"exit code {code}"
    assert elapsed <= drain + close_timeout + 1, f"drain took {elapsed:.1f}s"
    assert len(closes) == CLIENTS
    assert all(c[1] == 1001 for c in closes), closes
    hints = [re.search(r"retry_ms=(\d+)", c[2]) for c in closes]
    assert all(hints), [c[2] for c in closes]
    times = sorted(c[0] - t0 for c in closes)
    spread = times[-1] - times[0]
    print(f"drain: exit 0 after {elapsed:.1f}s; {CLIENTS} closes from {times[0]:.1f}s to "
          f"{times[-1]:.1f}s; retry_ms hints {sorted(int(h.group(1)) for h in hints)}")
    # Spread over the window, not all at once (reconnect storm smoothing).
    assert spread >= drain * 0.5, f"closes spread over only {spread:.1f}s of a {drain}s window"
    assert len({int(h.group(1)) for h in hints}) > 1, "every client got the same retry hint"
