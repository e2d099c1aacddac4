"""The Compose stack's nginx for real: the production configuration
(deploy/nginx/nginx.conf) rendered by the script the Compose nginx runs at
start (deploy/docker/nginx-upstreams.sh, upstreams set to three real gateways
on loopback), with only its listen line and worker sizes changed for the test,
run by Debian's nginx. Checks the WebSocket upgrade through the proxy, that a
publish on one gateway reaches a client of another through Redis, stickiness
(hash $remote_addr consistent) and failover when the chosen gateway drains.

tests/load_balancer.rs tests the same file with the same markers; this check
covers the Compose rendering path."""

from __future__ import annotations

import os
import re
import resource
import socket
import subprocess
import time

import pytest

from helpers import (NGINX_PROD, WAIT, WsClient, free_port, marked_block, render_nginx_conf,
                     replace_marked_block, run, tool, wait_ready,
                     wait_redis_subscribed)

# The descriptor hard limit of the machines the shipped nginx.conf is sized for
# (deploy/README.md, "Kernel tuning"): worker_rlimit_nofile must not exceed it.
SIZED_FOR_HARD_NOFILE = 20000


def shipped_worker_limits() -> tuple[int, int]:
    """(worker_rlimit_nofile, worker_connections) of deploy/nginx/nginx.conf."""
    conf = NGINX_PROD.read_text()
    nofile = re.search(r"^worker_rlimit_nofile (\d+);", conf, re.M)
    connections = re.search(r"^\s*worker_connections (\d+);", conf, re.M)
    assert nofile and connections, "nginx.conf sets no worker_rlimit_nofile / worker_connections"
    return int(nofile.group(1)), int(connections.group(1))


@pytest.fixture
def nginx_front(gateway_factory, redis_url, tmp_path):
    nginx = tool("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if not nginx:
        pytest.skip("nginx not installed (Debian package nginx-light)")
    gateways = {f"gateway-{i}": gateway_factory(env={"SHARDCAST_NODE_ID": f"gateway-{i}",
                                                     "SHARDCAST_REDIS": redis_url,
                                                     "SHARDCAST_REDIS_PREFIX": "nginx-test:"})
                for i in (1, 2, 3)}
    for gw in gateways.values():
        wait_ready(gw)
    conf = render_nginx_conf([gw.ws for gw in gateways.values()], tmp_path / "rendered.conf")
    assert marked_block(conf, "upstreams") == [
        f"server {gw.ws} max_fails=1 fail_timeout=10s;" for gw in gateways.values()]
    port = free_port()
    conf = replace_marked_block(conf, "listen", [f"        listen 127.0.0.1:{port};"])
    # One worker for the test; its limits as shipped, unless this process may
    # not hold that many descriptors (then nginx would log the setrlimit alert
    # test_no_alert_in_the_error_log looks for).
    conf = conf.replace("worker_processes auto;", "worker_processes 1;")
    nofile, connections = shipped_worker_limits()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < nofile:
        print(f"hard RLIMIT_NOFILE {hard} < shipped worker_rlimit_nofile {nofile}: scaled down")
        conf = re.sub(r"worker_rlimit_nofile \d+;", f"worker_rlimit_nofile {hard};", conf)
        conf = re.sub(r"worker_connections \d+;",
                      f"worker_connections {hard * connections // nofile};", conf)
    (tmp_path / "nginx.conf").write_text(conf)
    (tmp_path / "logs").mkdir()
    globals_ = (f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/logs/error.log; "
                "daemon off; master_process on;")
    test = run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", globals_])
    assert test.returncode == 0, test.stderr
    assert not re.search(r"\[(warn|alert|crit|emerg)\]", test.stderr), test.stderr
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                             "-g", globals_], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        yield f"127.0.0.1:{port}", gateways, tmp_path / "logs" / "error.log"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def node_of(front: str) -> str:
    c = WsClient(front)
    try:
        welcome = c.recv_json()
        assert welcome["type"] == "welcome"
        return welcome["node"]
    finally:
        c.close()


def test_sticky_websocket_through_nginx(nginx_front):
    front, gateways, _ = nginx_front
    # The upgrade passes through, and a message flows end to end.
    c = WsClient(front)
    node = c.recv_json()["node"]
    c.send_text('{"op":"subscribe","id":1,"channel":"lb"}')
    assert c.recv_json() == {"type": "ack", "id": 1}
    wait_redis_subscribed(gateways[node])
    # Published on another gateway: it crosses Redis to the client's gateway.
    other = next(name for name in gateways if name != node)
    status, _ = gateways[other].post("/api/publish", {"channel": "lb", "data": "hi"})
    assert status == 200
    assert c.recv_json()["data"] == "hi"
    c.close()
    # Same client address, same gateway, every time.
    nodes = {node_of(front) for _ in range(8)}
    assert nodes == {node}, nodes
    # The public health endpoint answers through the proxy too.
    import urllib.request
    with urllib.request.urlopen(f"http://{front}/health/live", timeout=WAIT) as r:
        assert r.status == 200
    # Drain the chosen gateway: its listener closes at once, and nginx moves the
    # client to another gateway on the next connect (proxy_next_upstream error).
    gateways[node].sigterm()
    host, port = gateways[node].ws.rsplit(":", 1)
    deadline = time.monotonic() + 3
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
        except OSError:
            break
        assert time.monotonic() < deadline, "the drained gateway still accepts"
        time.sleep(0.05)
    moved = {node_of(front) for _ in range(4)}
    assert len(moved) == 1 and node not in moved, f"after draining {node}: {moved}"
    print(f"sticky on {node}; after its drain, clients move to {moved.pop()}")


def test_worker_limits_fit_the_hard_limit():
    """nginx can raise its descriptor limit only up to the hard limit it starts
    with; past it every worker logs `setrlimit(RLIMIT_NOFILE) failed` and keeps
    the inherited limit. Every connection (client and upstream side) takes a
    descriptor, plus a few of the worker's own."""
    nofile, connections = shipped_worker_limits()
    assert nofile <= SIZED_FOR_HARD_NOFILE, f"worker_rlimit_nofile {nofile} > {SIZED_FOR_HARD_NOFILE}"
    assert connections + 128 <= nofile, f"worker_connections {connections} leaves no margin under {nofile}"


def test_no_alert_in_the_error_log(nginx_front):
    """After a WebSocket went through the worker (so it has started and set its
    limits), nginx has logged no alert: in particular no setrlimit failure."""
    front, _, error_log = nginx_front
    node_of(front)
    log = error_log.read_text()
    assert "setrlimit" not in log, log
    assert not re.search(r"\[(alert|crit|emerg)\]", log), log
    print(f"error log: {len(log.splitlines())} lines, no alert")
