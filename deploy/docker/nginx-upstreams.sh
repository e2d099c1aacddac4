#!/bin/sh
# Renders the production nginx configuration (deploy/nginx/nginx.conf, mounted
# read-only at $NGINX_TEMPLATE) for the Compose stack: the lines between
# `# BEGIN upstreams` and `# END upstreams` become one `server` line per
# address in $NGINX_UPSTREAMS, with the options of the file's own first server
# line (max_fails, fail_timeout...). Everything else is used as shipped, so
# `docker compose up` runs the load-balancer configuration production runs.
# tests/load_balancer.rs rewrites the same markers to test that file.
#
#   NGINX_UPSTREAMS="gateway-1:8000 gateway-2:8000" nginx-upstreams.sh [command...]
#
# Writes $NGINX_CONF (default /etc/nginx/nginx.conf, where `nginx -s reload`
# looks), then execs the command if one is given (Compose: nginx -g 'daemon off;').
# POSIX sh and awk: runs under the nginx image's busybox.
set -eu

template="${NGINX_TEMPLATE:-/etc/shardcast/nginx.conf}"
out="${NGINX_CONF:-/etc/nginx/nginx.conf}"
: "${NGINX_UPSTREAMS:?set NGINX_UPSTREAMS to the gateways, e.g. gateway-1:8000 gateway-2:8000}"

tmp="$out.tmp.$$"
if ! awk -v upstreams="$NGINX_UPSTREAMS" '
  BEGIN { n = split(upstreams, addr, /[ \t,]+/); found = 0; inside = 0; failed = 0; opts = "" }
  /^[ \t]*# BEGIN upstreams[ \t]*$/ { print; inside = 1; found = 1; next }
  inside && /^[ \t]*# END upstreams[ \t]*$/ {
    if (opts == "") { print "nginx-upstreams: no server line between the markers" > "/dev/stderr"; failed = 1; exit 1 }
    k = 0
    for (i = 1; i <= n; i++) if (addr[i] != "") { printf "%sserver %s%s\n", indent, addr[i], opts; k++ }
    if (k == 0) { print "nginx-upstreams: NGINX_UPSTREAMS names no address" > "/dev/stderr"; failed = 1; exit 1 }
    print; inside = 0; next
  }
  inside {
    if ($1 == "server" && opts == "") {
      match($0, /^[ \t]*/); indent = substr($0, 1, RLENGTH)
      opts = $0; sub(/^[ \t]*server[ \t]+[^ \t;]+/, "", opts)
    }
    next
  }
  { print }
  END {
    if (failed) exit 1
    if (!found || inside) { print "nginx-upstreams: no complete # BEGIN upstreams / # END upstreams block" > "/dev/stderr"; exit 1 }
  }
' "$template" >"$tmp"; then
  rm -f "$tmp"
  exit 1
fi
mv "$tmp" "$out"

if [ "$#" -gt 0 ]; then
  exec "$@"
fi
