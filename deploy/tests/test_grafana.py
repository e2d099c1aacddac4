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
                   "fan-out duration", "shard loop lag", "broker up", "refused", "disconnections"):
        assert needed in titles, f"no panel for {needed!r}"


def test_redis_todo_is_marked():
    """The Redis broker's panels wait for its metrics: the TODO is visible in
    the dashboard description and in the operations guide."""
    assert "TODO" in DASH["description"] and "Redis reconnects" in DASH["description"]
    readme = " ".join((DEPLOY / "README.md").read_text().replace("*", "").split())
    assert "TODO" in readme and "Redis reconnects" in readme and "cluster total" in readme
