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
  versus_redis "$calls" EVALSHA "$round" run_script "$@"
done
rm -rf "$work"
