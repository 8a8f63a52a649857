#!/usr/bin/env bash
# EVALSHA of a five-command script (INCR, GET, SET, EXPIRE, TTL over two keys
# of one hash tag: the one given and one derived from it), 50 connections, redis-benchmark, on a fresh local cluster
# and on a redis-server started in the same round (appendfsync always, the
# same durability as a Raft write, and in memory). Prints calls per second,
# the cluster's CPU per call (every member) and the ratios.
#
# Usage: scripts/script-bench.sh [calls] [rounds] [-- extra `redraft up` args]
set -euo pipefail
cd "$(dirname "$0")/.."
calls="${1:-50000}"; rounds="${2:-2}"
shift $(( $# < 2 ? $# : 2 )); [ "${1:-}" = "--" ] && shift
target="${CARGO_TARGET_DIR:-target}/debug"
work=$(mktemp -d)
# shellcheck source=scripts/measure-lib.sh
. scripts/measure-lib.sh
ticks=$(getconf CLK_TCK)
body="local other = KEYS[1] .. 'b' redis.call('incr', KEYS[1]) redis.call('get', KEYS[1]) redis.call('set', other, ARGV[1]) redis.call('expire', other, 100) return redis.call('ttl', other)"

# run_script PORT: seconds for `calls` EVALSHAs over 100,000 key pairs.
run_script() {
  local p=$1 sha start end
  sha=$(redis-cli -p "$p" script load "$body")
  start=$(date +%s.%N)
  redis-benchmark -p "$p" -c 50 -n "$calls" -r 100000 -q \
    EVALSHA "$sha" 1 '{k:__rand_int__}' value >/dev/null
  end=$(date +%s.%N)
  python3 -c "print($end - $start)"
}

for round in $(seq "$rounds"); do
  up_warm "$work/c$round" "$@"
  pids=$(member_pids "$work/c$round" placement nodes proxy)
  before=$(cpu_ticks $pids)
  secs=$(run_script "$rport")
  after=$(cpu_ticks $pids)
  "$target/redraft" down --dir "$work/c$round" >/dev/null
  rr=$(python3 -c "print(round($calls / $secs))")
  cpu=$(python3 -c "print(round(($after - $before) / $ticks * 1e6 / $calls, 1))")
  declare -A ref
  for mode in always memory; do
    p=$(port)
    if [ $mode = always ]; then
      redis-server --port "$p" --save '' --appendonly yes --appendfsync always --dir "$work" \
        --appendfilename "s$round.aof" --daemonize no >/dev/null &
    else
      redis-server --port "$p" --save '' --appendonly no --daemonize no >/dev/null &
    fi
    rpid=$!
    until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.1; done
    ref[$mode]=$(python3 -c "print(round($calls / $(run_script "$p")))")
    kill "$rpid"; wait "$rpid" 2>/dev/null || true
  done
  echo "round $round: Redraft $rr EVALSHA/s, ${cpu} µs CPU per call (all members);" \
    "redis-server appendfsync always ${ref[always]} ($(python3 -c "print(round($rr / ${ref[always]}, 3))")x)," \
    "in memory ${ref[memory]} ($(python3 -c "print(round($rr / ${ref[memory]}, 3))")x)"
done
rm -rf "$work"
