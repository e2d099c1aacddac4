"""deploy/grafana/shardcast.json: a well-formed Grafana dashboard (its queries
are checked by test_prometheus.py for syntax and by test_drift.py against a
live gateway)."""

from __future__ import annotations

import json

from helpers import DEPLOY

DASH = json.loads((DEPLOY / "grafana" / "shardcast.json").read_text())


def test_dashboard_basics():
    assert DASH["uid"] and DASH["title"] == "shardcast"
    assert DASH["schemaVersion"] >= 36
    names = [v["name"] for v in DASH["templating"]["list"]]
    assert names == ["datasource", "namespace", "pod"]


def test_panels_well_formed():
    ids = [p["id"] for p in DASH["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    cells = set()
    for p in DASH["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] in ("timeseries", "stat"):
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
            assert p.get("description"), f"panel {p['title']!r} has no description"
            refs = [t["refId"] for t in p["targets"]]
            assert len(refs) == len(set(refs))


def test_required_panels():
    titles = " | ".join(p["title"].lower() for p in DASH["panels"])
    for needed in ("connections per pod", "cluster total", "fd headroom", "delivered", "dropped",
                   "fan-out duration", "shard loop lag", "broker up", "refused", "disconnections",
                   "redis reconnects", "redis messages", "redis subscriptions", "cluster instances",
                   "version"):
        assert needed in titles, f"no panel for {needed!r}"


def exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in DASH["panels"] for t in p.get("targets", [])]


def test_cluster_gauges_are_not_summed():
    """shardcast_cluster_connections and shardcast_cluster_instances are
    cluster-wide figures that every pod reports: summing them across pods
    multiplies them by the pod count. Aggregate with max (or min)."""
    used = [(title, e) for title, e in exprs() if "shardcast_cluster_" in e]
    assert used, "no panel shows the gateways' cluster view"
    for title, e in used:
        assert "sum" not in e and "avg" not in e, f"{title!r} aggregates a cluster gauge with sum/avg: {e}"
    totals = [e for title, e in exprs() if "cluster total" in title.lower()]
    assert any(e.startswith("max(shardcast_cluster_connections") for e in totals), totals


def test_redis_panels_replace_the_todo():
    """The Redis broker exists: the dashboard shows its metrics, and no TODO
    placeholder is left (in the dashboard or in the operations guide)."""
    text = json.dumps(DASH)
    assert "TODO" not in text and not [p for p in DASH["panels"] if p["type"] == "text"]
    for metric in ("shardcast_broker_up", "shardcast_redis_reconnects_total",
                   "shardcast_redis_messages_received_total", "shardcast_redis_subscriptions",
                   "shardcast_cluster_connections", "shardcast_cluster_instances",
                   "shardcast_build_info", "shardcast_fd_reserve"):
        assert metric in text, f"no panel uses {metric}"
    readme = (DEPLOY / "README.md").read_text()
    assert "TODO" not in readme
