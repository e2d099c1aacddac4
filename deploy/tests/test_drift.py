"""No drift between the gateway and what monitors it: every shardcast_* metric
named by the dashboard, the alert rules, the prometheus-adapter rule or the
HPA must be exported by the real binary on /metrics.

The gateways run as deployed: two of them on a real redis-server (Debian's
`redis-server`), so the broker, Redis and cluster-view series carry real
values. Then a real Prometheus (Debian's `prometheus`) scrapes both and
evaluates every dashboard query, the adapter's query and the alert rules, so
label names (pod, namespace, shard, reason...) are checked too, not only
metric names.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from helpers import (DEPLOY, WAIT, WsClient, exported_metrics, free_port, is_exported,
                     metric_tokens, metric_value, start_gateway, tool, wait_metric, wait_ready,
                     wait_redis_subscribed)
from test_prometheus import dashboard_queries

DASHBOARD = DEPLOY / "grafana" / "shardcast.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ADAPTER = DEPLOY / "k8s" / "components" / "prometheus-adapter" / "adapter-rules.yaml"
HPA = DEPLOY / "k8s" / "base" / "hpa.yaml"

# Series the Redis broker and the cluster view add; all must be on /metrics.
REDIS_SERIES = ("shardcast_broker_up", "shardcast_redis_reconnects_total",
                "shardcast_redis_messages_received_total", "shardcast_redis_subscriptions",
                "shardcast_cluster_connections", "shardcast_cluster_instances")


def start_pair(factory, redis_url: str, prefix: str) -> tuple:
    """Two gateways sharing one Redis (under their own channel prefix, so
    other checks on the same Redis do not show up in their cluster view)."""
    env = {"SHARDCAST_REDIS": redis_url, "SHARDCAST_REDIS_PREFIX": prefix}
    pair = (factory(env=env), factory(env=env))
    for gw in pair:
        assert gw.broker == "redis", gw.broker
        wait_ready(gw)
    for gw in pair:
        wait_metric(gw, "shardcast_cluster_instances", lambda v: v == 2)
    return pair


def exercise(publisher, subscriber) -> WsClient:
    """Makes every counter move: a client error, and a publication made on one
    gateway that crosses Redis to a subscriber of the other. Returns the
    subscriber's client, still connected and subscribed (close it)."""
    c = WsClient(subscriber.ws)
    try:
        assert c.recv_json()["type"] == "welcome"
        c.send_text('{"op":"teleport","id":1}')
        assert c.recv_json()["type"] == "error"
        c.send_text('{"op":"subscribe","id":2,"channel":"drift"}')
        assert c.recv_json()["type"] == "ack"
        wait_redis_subscribed(subscriber)
        status, _ = publisher.post("/api/publish", {"channel": "drift", "data": {"n": 1}})
        assert status == 200
        assert c.recv_json()["type"] == "message"
    except BaseException:
        c.close()
        raise
    return c


@pytest.fixture(scope="module")
def scrape(redis_url):
    started = []

    def factory(**kw):
        started.append(start_gateway(**kw))
        return started[-1]

    try:
        publisher, subscriber = start_pair(factory, redis_url, "drift-scrape:")
        client = exercise(publisher, subscriber)
        wait_metric(subscriber, "shardcast_redis_messages_received_total", lambda v: v >= 1)
        # Both gateways' heartbeats carry the subscriber's connection.
        wait_metric(publisher, "shardcast_cluster_connections", lambda v: v == 1)
        texts = [gw.metrics() for gw in (publisher, subscriber)]
        client.close()
    finally:
        for gw in started:
            gw.stop()
    sub = texts[1]
    assert metric_value(sub, "shardcast_broker_up") == 1
    assert metric_value(sub, "shardcast_cluster_instances") == 2
    assert metric_value(sub, "shardcast_redis_subscriptions") >= 1
    assert metric_value(sub, "shardcast_redis_messages_received_total") >= 1
    names, histograms = set(), set()
    for text in texts:
        n, h = exported_metrics(text)
        names |= n
        histograms |= h
    return names, histograms


def adapter_rules() -> list[dict]:
    return yaml.safe_load(ADAPTER.read_text())["rules"]


def hpa_metric_names() -> set[str]:
    hpa = yaml.safe_load(HPA.read_text())
    names = set()
    for m in hpa["spec"]["metrics"]:
        if m["type"] in ("Pods", "Object", "External"):
            names.add(m[m["type"].lower()]["metric"]["name"])
    return names


def unknown(tokens: set[str], scrape) -> list[str]:
    names, histograms = scrape
    return sorted(t for t in tokens if not is_exported(t, names, histograms))


def test_binary_exports_the_expected_families(scrape):
    names, histograms = scrape
    print(f"/metrics: {len([n for n in names if n.startswith('shardcast_')])} series names, "
          f"histograms {sorted(histograms)}")
    assert {"shardcast_connections", "shardcast_fd_headroom", "shardcast_ready",
            "shardcast_fd_reserve", "shardcast_max_connections", "shardcast_build_info",
            *REDIS_SERIES} <= names
    assert "shardcast_shard_loop_lag_seconds" in histograms


@pytest.mark.parametrize("path", [DASHBOARD, ALERTS], ids=["dashboard", "alerts"])
def test_names_exported(path, scrape):
    tokens = metric_tokens(path.read_text())
    assert tokens, f"no shardcast_* metric found in {path.name}"
    missing = unknown(tokens, scrape)
    assert not missing, f"{path.relative_to(DEPLOY)} names metrics the gateway does not export: {missing}"
    print(f"{path.name}: {len(tokens)} metric names, all exported")


def test_adapter_rule_sources_exported(scrape):
    for rule in adapter_rules():
        produced = rule["name"]["as"]
        tokens = (metric_tokens(rule["seriesQuery"]) | metric_tokens(rule["metricsQuery"])
                  | metric_tokens(rule["name"]["matches"])) - {produced}
        assert tokens, "adapter rule names no source metric"
        missing = unknown(tokens, scrape)
        assert not missing, f"adapter rule for {produced} reads unexported metrics: {missing}"
        assert re.fullmatch(rule["name"]["matches"].strip("^$"), rule["seriesQuery"].split("{")[0])


def test_hpa_metrics_are_served(scrape):
    """An HPA pods metric is either exported as is or produced by an adapter
    rule (whose sources test_adapter_rule_sources_exported checks)."""
    produced = {r["name"]["as"] for r in adapter_rules()}
    names, histograms = scrape
    for name in hpa_metric_names():
        assert name in produced or is_exported(name, names, histograms), (
            f"HPA metric {name} is neither exported by the gateway nor produced by "
            f"{ADAPTER.relative_to(DEPLOY.parent)}")


def test_drift_check_catches_a_bogus_name(scrape):
    assert unknown({"shardcast_connections", "shardcast_no_such_metric_total",
                    "shardcast_fanout_duration_seconds_bucket",
                    "shardcast_connections_bucket"}, scrape) == [
        "shardcast_connections_bucket", "shardcast_no_such_metric_total"]


def test_dashboard_coverage(scrape):
    """Informational: exported families the dashboard does not show."""
    names, _ = scrape
    families = {n for n in names if n.startswith("shardcast_")}
    shown = {re.sub(r"_(bucket|sum|count)$", "", t) for t in metric_tokens(DASHBOARD.read_text())}
    not_shown = sorted(f for f in families if re.sub(r"_(bucket|sum|count)$", "", f) not in shown)
    print(f"exported but not on the dashboard: {not_shown or 'none'}")


# ---------------------------------------------------------------------------
# Live: a real Prometheus scraping a real gateway.

def prom_query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=WAIT) as r:
        return json.load(r)


def test_live_prometheus(gateway_factory, redis_url, tmp_path):
    prometheus = tool("prometheus")
    if not prometheus:
        pytest.skip("prometheus server not installed (Debian package `prometheus`)")
    import shutil
    import subprocess
    pair = start_pair(gateway_factory, redis_url, "drift-live:")
    # A subscriber stays connected throughout, so the connection, subscription
    # and cluster gauges are not all zero.
    client = exercise(*pair)
    shutil.copy(ALERTS, tmp_path / "alerts.yaml")
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yaml"],
        "scrape_configs": [{
            "job_name": "shardcast",
            "static_configs": [{"targets": [gw.admin],
                                "labels": {"namespace": "drift", "pod": f"gw-{i}"}}
                               for i, gw in enumerate(pair)]}],
    }))
    proc = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        # Wait for enough scrapes that rate() over a few seconds has two samples.
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                res = prom_query(base, 'count_over_time(up{job="shardcast"}[1m])')
                if (len(res["data"]["result"]) == 2
                        and min(float(r["value"][1]) for r in res["data"]["result"]) >= 4):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape the gateway in time"
            time.sleep(0.5)
        # Publish once more between scrapes so rates are non-zero.
        exercise(*pair).close()
        time.sleep(2.5)

        empty = []
        for title, expr in dashboard_queries():
            q = (expr.replace("$__rate_interval", "30s").replace("$namespace", "drift")
                 .replace("$pod", ".*"))
            res = prom_query(base, q)
            assert res["status"] == "success", f"{title}: {res}"
            if not res["data"]["result"]:
                empty.append(title)
        assert not empty, f"dashboard queries with no data from a live gateway: {empty}"

        for rule in adapter_rules():
            series = rule["seriesQuery"].split("{")[0]
            q = (rule["metricsQuery"].replace("<<.Series>>", series)
                 .replace("<<.LabelMatchers>>", 'namespace="drift",pod=~"gw-0"')
                 .replace("<<.GroupBy>>", "pod"))
            res = prom_query(base, q)
            assert res["data"]["result"], f"adapter query {q} returned nothing"
            assert res["data"]["result"][0]["metric"] == {"pod": "gw-0"}

        with urllib.request.urlopen(f"{base}/api/v1/rules", timeout=WAIT) as r:
            groups = json.load(r)["data"]["groups"]
        rules = [ru for g in groups for ru in g["rules"]]
        assert len(rules) == sum(len(g["rules"]) for g in yaml.safe_load(ALERTS.read_text())["groups"])
        bad = [(ru["name"], ru.get("lastError")) for ru in rules if ru.get("health") not in ("ok", "unknown")]
        assert not bad, f"alert rules failing to evaluate: {bad}"
        firing = [ru["name"] for ru in rules if ru.get("state") == "firing"]
        assert not firing, f"alerts firing against a healthy gateway: {firing}"
        print(f"live: {len(dashboard_queries())} dashboard queries returned data; "
              f"{len(rules)} alert rules evaluate; adapter query ok")
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
