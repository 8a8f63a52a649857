#!/usr/bin/env bash
# CPU per operation of a fresh local cluster (3 nodes + proxy + placement driver)
# against redis-server started in the same run, for one workload.
#
# Each round starts a new cluster, warms it with SET P16 for 2 s, then reads the
# user+system CPU time of every member from /proc around a timed redraft-bench run
# and prints req/s and CPU µs per operation; the redis-server reference (in memory
# for GET, appendfsync always for SET) is measured the same way right after.
# Rounds interleave with the reference so a noisy machine hits both alike.
#
# Usage: scripts/cpu-per-op.sh [set|get] [pipeline] [seconds] [rounds] [-- extra `redraft up` args]
#   e.g. scripts/cpu-per-op.sh set 1 10 3 -- --node-arg=--read-policy=read-index
set -euo pipefail
cd "$(dirname "$0")/.."
mix="${1:-set}"; pipeline="${2:-1}"; secs="${3:-10}"; rounds="${4:-3}"
shift $(( $# < 4 ? $# : 4 )); [ "${1:-}" = "--" ] && shift
target="${CARGO_TARGET_DIR:-target}/debug"
work=$(mktemp -d)
# shellcheck source=scripts/measure-lib.sh
. scripts/measure-lib.sh
ticks=$(getconf CLK_TCK)
measure() { # label port pids... [-- proxy pids]: with a proxy part, its share is printed too
  local label=$1 p=$2; shift 2
  local all=() proxy=() before after proxy_before=0 proxy_after=0
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do all+=("$1"); shift; done
  [ "${1:-}" = "--" ] && shift && proxy=("$@") && all+=("$@")
  before=$(cpu_ticks "${all[@]}")
  [ ${#proxy[@]} -gt 0 ] && proxy_before=$(cpu_ticks "${proxy[@]}")
  "$target/redraft-bench" run --target "127.0.0.1:$p" --mix "$mix" -c 50 -P "$pipeline" --duration "$secs" \
    --keys 100000 --json "$work/$label.json" >/dev/null
  after=$(cpu_ticks "${all[@]}")
  [ ${#proxy[@]} -gt 0 ] && proxy_after=$(cpu_ticks "${proxy[@]}")
  python3 - "$label" "$work/$label.json" "$before" "$after" "$ticks" "$proxy_before" "$proxy_after" <<'PY'
import json, sys
label, path = sys.argv[1], sys.argv[2]
before, after, ticks, proxy_before, proxy_after = map(int, sys.argv[3:8])
r = json.load(open(path))[0]
ops = max(r["requests"], 1)
cpu_us = (after - before) / ticks * 1e6 / ops
proxy_us = (proxy_after - proxy_before) / ticks * 1e6 / ops
split = f"  (proxy {proxy_us:.1f}, the rest {cpu_us - proxy_us:.1f})" if proxy_after else ""
print(f"{label:10s} {r['throughput']:>10,.0f} req/s  {cpu_us:7.1f} µs CPU/op{split}  errors {r['errors']}")
PY
}
cleanup() {
  "$target/redraft" down --dir "$work/redraft" >/dev/null 2>&1 || true
  [ -n "${rp:-}" ] && redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
echo "## $mix P$pipeline, 50 connections, ${secs}s per run, $rounds rounds; up args: ${*:-none}"
for round in $(seq "$rounds"); do
  up_warm "$work/redraft" "$@"
  pids="$(member_pids "$work/redraft" placement nodes) -- $(member_pids "$work/redraft" proxy)"
  # shellcheck disable=SC2086
  measure "redraft" "$rport" $pids
  "$target/redraft" down --dir "$work/redraft" >/dev/null
  rm -rf "$work/redraft"
  rp=$(port)
  if [ "$mix" = set ]; then
    redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always --dir "$work" --daemonize yes >/dev/null
  else
    redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize yes >/dev/null
  fi
  sleep 0.5
  "$target/redraft-bench" run --target "127.0.0.1:$rp" --mix set -c 50 -P 16 --duration 1 --keys 100000 >/dev/null
  measure "redis" "$rp" "$(redis-cli -p "$rp" info server | tr -d '\r' | sed -n 's/^process_id://p')"
  redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true
  rm -f "$work"/*.aof "$work"/appendonlydir -r
done
