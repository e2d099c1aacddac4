#!/usr/bin/env bash
# The JavaScript client's whole test run, from a fresh Debian machine as root,
# non-interactive and idempotent: installs Chromium and redis-server (Debian's
# packages) if they are missing and the npm dependencies from package-lock.json,
# builds the gateway unless $SHARDCAST_BIN names one, builds and type-checks the
# package, checks what its npm tarball would hold, then runs the unit, Node
# end-to-end (the README's code blocks included) and browser end-to-end tests.
# Exits non-zero on any failure. The last line is "js: N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")"
package_dir="$PWD"
repo_root="$(cd ../.. && pwd)"

step() { printf '\n==> clients/js: %s\n' "$*"; }

# --- tools ---
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "clients/js: node and npm are required (Node.js 20.19+ for the test tooling)" >&2
  exit 1
fi
node -e '
  const [major, minor] = process.versions.node.split(".").map(Number);
  if (major < 20 || (major === 20 && minor < 19)) {
    console.error(`clients/js: the test tooling (vite 7) needs Node.js 20.19+, found ${process.versions.node}`);
    process.exit(1);
  }'

chromium_bin="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$chromium_bin" ]; then
  step "installing Debian's chromium"
  if [ "$(id -u)" != 0 ]; then
    echo "clients/js: $chromium_bin is missing and installing it needs root (apt-get install chromium)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi
export CHROMIUM_PATH="$chromium_bin"

# The recovery tests run two gateways on one redis-server.
if ! command -v redis-server >/dev/null; then
  step "installing Debian's redis-server"
  if [ "$(id -u)" != 0 ]; then
    echo "clients/js: redis-server is missing and installing it needs root (apt-get install redis-server)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq redis-server >/dev/null
fi

step "npm ci"
# --ignore-scripts: nothing in the tree needs an install script (esbuild finds its
# platform binary without one), and a CI run should not execute any.
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

# --- the gateway binary ---
if [ -z "${SHARDCAST_BIN:-}" ]; then
  step "cargo build (the gateway)"
  (cd "$repo_root" && cargo build --quiet --bin shardcast)
  SHARDCAST_BIN="${CARGO_TARGET_DIR:-$repo_root/target}/debug/shardcast"
  case "$SHARDCAST_BIN" in /*) ;; *) SHARDCAST_BIN="$repo_root/$SHARDCAST_BIN" ;; esac
fi
if [ ! -x "$SHARDCAST_BIN" ]; then
  echo "clients/js: gateway binary $SHARDCAST_BIN is missing or not executable" >&2
  exit 1
fi
export SHARDCAST_BIN

step "build"
npm run --silent build >/dev/null

step "type check"
npm run --silent typecheck

step "package contents"
# What `npm publish` would ship: the builds, the README and the licence text.
npm pack --dry-run --json 2>/dev/null | node -e '
  const [pack] = JSON.parse(require("fs").readFileSync(0, "utf8"));
  const files = new Set(pack.files.map((file) => file.path));
  const missing = ["LICENSE", "README.md", "dist/index.js", "dist/index.cjs", "dist/index.d.ts"].filter((f) => !files.has(f));
  if (missing.length) { console.error(`clients/js: the npm package lacks ${missing.join(", ")}`); process.exit(1); }'

step "tests (unit, Node e2e, browser e2e)"
results="$(mktemp -d)"
trap 'rm -rf "$results"' EXIT
status=0
# timeout signals its whole process group, so gateways and browsers a hung run
# leaves behind go too; the tests themselves stop each one they start.
timeout --kill-after=10s 300s \
  npx vitest run --reporter=default --reporter=json --outputFile.json="$results/vitest.json" || status=$?

if [ -f "$results/vitest.json" ]; then
  node -e '
    const r = require(process.argv[1]);
    const skipped = (r.numPendingTests || 0) + (r.numTodoTests || 0);
    console.log(`js: ${r.numPassedTests} passed, ${r.numFailedTests} failed` + (skipped ? `, ${skipped} skipped` : ""));
    if (r.numTotalTests === 0) { console.error("clients/js: no test ran"); process.exit(1); }
  ' "$results/vitest.json" || status=1
else
  echo "clients/js: vitest wrote no results (exit status $status)" >&2
  [ "$status" != 0 ] || status=1
fi
exit "$status"
