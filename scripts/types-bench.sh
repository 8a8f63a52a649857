#!/usr/bin/env bash
# Bitmaps, HyperLogLog and GEO: SETBIT, BITCOUNT, PFADD, PFCOUNT, GEOADD and
# GEOSEARCH at 50 connections, pipeline 1, on a fresh local cluster and on a
# redis-server started in the same round (appendfsync always for the writes,
# the durability of a Raft write; in memory for the reads). Each read runs
# after its write filled the same keys for a few seconds (not measured).
# Prints req/s, the cluster's CPU per operation (every member) and the ratios.
#
# Usage: scripts/types-bench.sh [seconds] [rounds] [-- extra `redraft up` args]
#   TYPES_PAIRS="setbit:bitcount" limits it to some write:read pairs.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-8}"; rounds="${2:-1}"
shift $(( $# < 2 ? $# : 2 )); [ "${1:-}" = "--" ] && shift
target="${CARGO_TARGET_DIR:-target}/debug"
work=$(mktemp -d)
# shellcheck source=scripts/measure-lib.sh
. scripts/measure-lib.sh
ticks=$(getconf CLK_TCK)
keys=1000
cleanup() {
  "$target/redraft" down --dir "$work/redraft" >/dev/null 2>&1 || true
  [ -n "${rp:-}" ] && redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# bench PORT MIX LABEL PIDS...: prints "req/s µs-per-op" of a timed run.
bench() {
  local p=$1 mix=$2 label=$3; shift 3
  local before after
  before=$(cpu_ticks "$@")
  "$target/redraft-bench" run --target "127.0.0.1:$p" --mix "$mix" -c 50 -P 1 --duration "$secs" \
    --keys "$keys" --json "$work/$label.json" >/dev/null
  after=$(cpu_ticks "$@")
  python3 - "$work/$label.json" "$before" "$after" "$ticks" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))[0]
before, after, ticks = map(int, sys.argv[2:5])
ops = max(r["requests"], 1)
print(f"{r['throughput']:.0f} {(after - before) / ticks * 1e6 / ops:.1f} {r['errors']}")
PY
}

# redis_server MODE: starts one on a free port (sets rp and rpid).
redis_server() {
  rp=$(port)
  if [ "$1" = always ]; then
    redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always --dir "$work" --daemonize yes >/dev/null
  else
    redis-server --port "$rp" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize yes >/dev/null
  fi
  until redis-cli -p "$rp" ping >/dev/null 2>&1; do sleep 0.1; done
  rpid=$(redis-cli -p "$rp" info server | tr -d '\r' | sed -n 's/^process_id://p')
}

echo "## 50 connections, P1, ${secs}s per run, $keys keys, $rounds rounds; up args: ${*:-none}"
printf '%-10s %12s %10s %14s %8s %14s %8s\n' workload "Redraft/s" "µs CPU/op" "redis always/s" ratio "redis memory/s" ratio
for round in $(seq "$rounds"); do
  for pair in ${TYPES_PAIRS:-setbit:bitcount pfadd:pfcount geoadd:geosearch}; do
    write=${pair%%:*}; read=${pair##*:}
    up_warm "$work/redraft" "$@"
    pids=$(member_pids "$work/redraft" placement nodes proxy)
    # shellcheck disable=SC2086
    ours_write=$(bench "$rport" "$write" "w$round" $pids)
    # shellcheck disable=SC2086
    ours_read=$(bench "$rport" "$read" "r$round" $pids)
    "$target/redraft" down --dir "$work/redraft" >/dev/null
    rm -rf "$work/redraft"
    redis_server always
    always_write=$(bench "$rp" "$write" "aw$round" "$rpid")
    always_read=$(bench "$rp" "$read" "ar$round" "$rpid")
    redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$work"/appendonlydir
    redis_server memory
    memory_write=$(bench "$rp" "$write" "mw$round" "$rpid")
    memory_read=$(bench "$rp" "$read" "mr$round" "$rpid")
    redis-cli -p "$rp" shutdown nosave >/dev/null 2>&1 || true
    for op in write read; do
      eval "name=\$$op; ours=\$ours_$op; always=\$always_$op; memory=\$memory_$op"
      # shellcheck disable=SC2154
      read -r rate cpu errors <<<"$ours"
      # shellcheck disable=SC2086
      python3 -c "import sys; r,c,a,m=map(float,sys.argv[2:6]); print(f'{sys.argv[1]:10s} {r:12,.0f} {c:10.1f} {a:14,.0f} {r/a:7.2f}x {m:14,.0f} {r/m:7.2f}x')" \
        "$name" "$rate" "$cpu" ${always%% *} ${memory%% *}
      [ "$errors" = 0 ] || echo "  ($errors errors)"
    done
  done
done
