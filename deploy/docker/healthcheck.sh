#!/bin/bash
# Container health probe for shardcast, for images without curl (debian-slim).
#
#   shardcast-healthcheck [PATH]     PATH defaults to /health/live
#
# Sends `GET PATH HTTP/1.0` to the gateway's admin port over bash's /dev/tcp and
# exits 0 on a 200 status line, 1 otherwise. The port comes from
# SHARDCAST_ADMIN_LISTEN (the same variable the gateway reads; default
# 127.0.0.1:8001); a wildcard or loopback address is probed on 127.0.0.1.
# SHARDCAST_HEALTHCHECK_ADDR (host:port) overrides it, e.g. when the admin
# address is set in a --config file instead of the environment.
set -u

path="${1:-/health/live}"
addr="${SHARDCAST_HEALTHCHECK_ADDR:-${SHARDCAST_ADMIN_LISTEN:-127.0.0.1:8001}}"
port="${addr##*:}"
host="${addr%:*}"
host="${host#[}"
host="${host%]}"
case "$host" in
  "" | 0.0.0.0 | :: | localhost | 127.*) host=127.0.0.1 ;;
esac

# The whole exchange is bounded by `read -t`; Docker's --timeout bounds the rest.
if ! exec 3<>"/dev/tcp/${host}/${port}"; then
  echo "shardcast-healthcheck: cannot connect to ${host}:${port}" >&2
  exit 1
fi
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: shardcast-healthcheck\r\n\r\n' "$path" "$host" >&3
status=""
IFS= read -r -t 2 status <&3 || true
exec 3<&-
status="${status%$'\r'}"
case "$status" in
  "HTTP/1."?" 200 "* | "HTTP/1."?" 200") exit 0 ;;
esac
echo "shardcast-healthcheck: ${host}:${port}${path} answered '${status:-nothing}'" >&2
exit 1
