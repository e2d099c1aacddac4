#!/usr/bin/env bash
# Soak run of the gateway: tests/soak.rs (churn, reconnects, publishes through Redis,
# with the gateway's RSS, descriptors, threads and gauges sampled and checked for an
# upward trend) for as long as asked, on a release build.
#
#   bash tests/soak.sh                  # 10 minutes
#   bash tests/soak.sh --minutes 60
#   bash tests/soak.sh --minutes 10 --csv soak.csv
#
# Needs redis-server (tests/run.sh installs it). Exits non-zero if the soak fails.
set -euo pipefail
cd "$(dirname "$0")/.."

minutes=10
csv=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) minutes="$2"; shift 2 ;;
    --csv) csv="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$minutes" in
  ''|*[!0-9]*) echo "--minutes takes a whole number" >&2; exit 2 ;;
esac

export SHARDCAST_SOAK_SECS=$((minutes * 60))
if [ -n "$csv" ]; then
  SHARDCAST_SOAK_CSV="$(realpath -m "$csv")"
  export SHARDCAST_SOAK_CSV
fi
echo "soak: ${minutes} min against a release build"
exec cargo test --release --test soak -- --nocapture
