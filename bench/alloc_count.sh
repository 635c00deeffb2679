#!/usr/bin/env bash
# Heap allocations of the release proxy for a given connect-flood workload, counted by an
# LD_PRELOAD shim. Usage: bench/alloc_count.sh rate --count 2001 --concurrency 8
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/.build/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O2 -shared -fPIC -o "$work/alloc_count.so" "$root/bench/alloc-count/alloc_count.c"
printf 'listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ntenants:\n  - name: bench\n    allow: [{cidr: 127.0.0.0/8, ports: ["*"]}]\n    allowPrivate: [127.0.0.0/8]\n' > "$work/config.yaml"
"$bin/connect-flood" serve > "$work/echo" &
echo_pid=$!
until [ -s "$work/echo" ]; do sleep 0.05; done
echo_address=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['echo'])" "$work/echo")
LD_PRELOAD="$work/alloc_count.so" "$bin/egress-proxy" --config "$work/config.yaml" --loops 1 \
    --listen 127.0.0.1:23140 --admin 127.0.0.1:23141 --log-level "${LOG_LEVEL:-info}" 2> "$work/proxy.err" &
proxy_pid=$!
until ss -Htln 'sport = :23140' | grep -q .; do sleep 0.05; done
"$bin/connect-flood" "$@" --proxy 127.0.0.1:23140 --target "$echo_address" >&2
kill -TERM "$proxy_pid"
wait "$proxy_pid" || true
kill "$echo_pid"
grep alloc_count "$work/proxy.err"
