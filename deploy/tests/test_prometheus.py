"""Alert rules, their unit tests, the compose Prometheus config, and the
PromQL syntax of every dashboard query, with promtool (Debian's `prometheus`)."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from helpers import DEPLOY, run, tool

PROM = DEPLOY / "prometheus"


def promtool() -> str:
    path = tool("promtool")
    if not path:
        pytest.fail("promtool not found: `apt-get install prometheus` (deploy/run-tests.sh does)")
    return path


def test_check_rules():
    res = run([promtool(), "check", "rules", str(PROM / "alerts.yaml")])
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr


def test_rule_unit_tests():
    res = run([promtool(), "test", "rules", str(PROM / "alerts_test.yaml")])
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr


def test_alerts_have_tests_and_severity():
    rules = [r for g in yaml.safe_load((PROM / "alerts.yaml").read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load((PROM / "alerts_test.yaml").read_text())["tests"]
    tested = {t["alertname"] for case in tests for t in case.get("alert_rule_test", [])
              if t.get("exp_alerts")}
    names = {r["alert"] for r in rules}
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
    required = {"ShardcastFdHeadroomLow", "ShardcastFdHeadroomCritical", "ShardcastShardLoopLagHigh",
                "ShardcastMessagesDropping", "ShardcastBrokerDown", "ShardcastInstanceNotReady",
                "ShardcastNoTargetsUp", "ShardcastRedisReconnecting", "ShardcastClusterSplit"}
    assert required <= names
    by_name = {r["alert"]: r for r in rules}
    # Thresholds follow the gateway's own settings, not fixed numbers.
    assert "shardcast_fd_reserve" in by_name["ShardcastFdHeadroomCritical"]["expr"]
    print(f"alerts with a firing unit test: {len(tested & names)}/{len(names)}; "
          f"untested: {sorted(names - tested)}")
    assert required <= tested, f"required alerts without a firing unit test: {sorted(required - tested)}"


def test_compose_prometheus_config(tmp_path):
    """deploy/docker/prometheus.yml loads, with the rule file beside it as in
    the container."""
    shutil.copy(DEPLOY / "docker" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(PROM / "alerts.yaml", tmp_path / "alerts.yaml")
    res = run([promtool(), "check", "config", str(tmp_path / "prometheus.yml")])
    print(res.stdout)
    assert res.returncode == 0, res.stdout + res.stderr


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads((DEPLOY / "grafana" / "shardcast.json").read_text())
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            inner = q[len("label_values("):-1].rsplit(",", 1)[0]
            out.append((f"variable {v['name']}", inner))
    return out


def substitute(expr: str) -> str:
    return (expr.replace("$__rate_interval", "1m").replace("$namespace", ".*")
            .replace("$pod", ".*"))


def test_dashboard_promql_parses(tmp_path):
    """Every dashboard query (Grafana variables substituted) is valid PromQL:
    each becomes a recording rule that `promtool check rules` parses."""
    queries = dashboard_queries()
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": substitute(e)} for i, (_, e) in enumerate(queries)]}]}
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    res = run([promtool(), "check", "rules", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr
    print(f"{len(queries)} dashboard queries parse")
