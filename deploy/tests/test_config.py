"""Configuration drift: every SHARDCAST_* variable that the deploy files set is
one the binary reads (as listed by `shardcast --help`), and every value the
binary can check is accepted by it."""

from __future__ import annotations

import re

import yaml

import kustomize_lite
from helpers import DEPLOY, run, shardcast_bin

# Variables set ahead of the feature that reads them (name -> feature). Each is
# reported on every run; remove it from here once `shardcast --help` documents
# it. Empty: everything deploy/ sets is read by the binary today.
PENDING: dict[str, str] = {}
# Set by the image or the test harness, not by the binary's options.
NOT_OPTIONS = {"SHARDCAST_HEALTHCHECK_ADDR"}


def known_env() -> set[str]:
    res = run([shardcast_bin(), "--help"])
    assert res.returncode == 0, res.stderr
    return set(re.findall(r"\[env: (SHARDCAST_[A-Z0-9_]+)", res.stdout))


def used_env() -> dict[str, set[str]]:
    """variable -> files that set it."""
    used: dict[str, set[str]] = {}

    def add(name, where):
        used.setdefault(name, set()).add(where)

    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    for svc, spec in compose["services"].items():
        for name in (spec.get("environment") or {}):
            if name.startswith("SHARDCAST_"):
                add(name, f"compose.yaml:{svc}")
    for target in ("base", "overlays/dev"):
        for obj in kustomize_lite.render(DEPLOY / "k8s" / target):
            if obj["kind"] != "Deployment":
                continue
            for c in obj["spec"]["template"]["spec"]["containers"]:
                for e in c.get("env", []):
                    if e["name"].startswith("SHARDCAST_"):
                        add(e["name"], f"k8s/{target}")
    for m in re.finditer(r"^ENV (.*?)(?<!\\)$", (DEPLOY / "docker" / "Dockerfile").read_text(), re.M | re.S):
        for name in re.findall(r"(SHARDCAST_[A-Z0-9_]+)=", m.group(1)):
            add(name, "Dockerfile")
    return used


def test_env_vars_are_read_by_the_binary():
    known = known_env()
    assert "SHARDCAST_DRAIN_WINDOW" in known, "could not read env names from --help"
    used = used_env()
    assert "SHARDCAST_ADMIN_LISTEN" in used
    unknown = {n: sorted(w) for n, w in used.items()
               if n not in known and n not in PENDING and n not in NOT_OPTIONS}
    assert not unknown, f"set in deploy/ but not read by shardcast (see --help): {unknown}"
    for name, what in PENDING.items():
        state = "now documented by --help: remove it from PENDING" if name in known else "not read yet"
        print(f"pending: {name} for {what}: {state}; set in {sorted(used.get(name, []))}")
    # The broker is configured where it must be: Compose and the dev overlay by
    # value, the production base from a Secret.
    for where in ("compose.yaml:gateway-1", "k8s/base", "k8s/overlays/dev"):
        assert where in used.get("SHARDCAST_REDIS", set()), f"{where} does not set SHARDCAST_REDIS"


def test_binary_accepts_deploy_values(redis_url):
    """The values the manifests pass parse: start the binary with them for real
    on loopback, with the Redis URL pointed at a real redis-server, and wait
    until it is ready (connected to Redis and subscribed)."""
    from helpers import start_gateway, wait_ready
    env = {}
    for obj in kustomize_lite.render(DEPLOY / "k8s" / "base"):
        if obj["kind"] == "Deployment":
            c = obj["spec"]["template"]["spec"]["containers"][0]
            env.update({e["name"]: e["value"] for e in c["env"] if "value" in e})
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    compose_env = {k: str(v) for k, v in compose["services"]["gateway-1"]["environment"].items()
                   if "${" not in str(v)}
    assert "SHARDCAST_REDIS" in compose_env
    for values in (env, compose_env):
        values = {k: v for k, v in values.items()
                  if k not in ("SHARDCAST_LISTEN", "SHARDCAST_ADMIN_LISTEN")}
        # The base reads the URL from a Secret, Compose names its own service.
        values["SHARDCAST_REDIS"] = redis_url
        gw = start_gateway(env=values)
        try:
            assert gw.broker == "redis", gw.broker
            wait_ready(gw)
        finally:
            gw.stop()
