#!/usr/bin/env bash
# Job-queue throughput: producers RPUSH onto one list while consumers BLPOP it
# (redis-benchmark, 25 connections each), on a fresh local cluster and on a
# redis-server started in the same run (appendfsync always, the same
# durability as a Raft write, and in memory). Prints pops per second, the
# cluster's CPU per pop (every member) and the ratios.
#
# Usage: scripts/queue-bench.sh [jobs] [rounds] [-- extra `redraft up` args]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="${1:-50000}"; rounds="${2:-2}"
shift $(( $# < 2 ? $# : 2 )); [ "${1:-}" = "--" ] && shift
target="${CARGO_TARGET_DIR:-target}/debug"
work=$(mktemp -d)
# shellcheck source=scripts/measure-lib.sh
. scripts/measure-lib.sh

# run_queue PORT: seconds for `jobs` pushes to be popped by blocked consumers.
run_queue() {
  local p=$1 start end
  redis-cli -p "$p" del '{q}jobs' >/dev/null
  start=$(date +%s.%N)
  redis-benchmark -p "$p" -c 25 -n "$jobs" -q BLPOP '{q}jobs' 10 >/dev/null &
  local consumers=$!
  redis-benchmark -p "$p" -c 25 -n "$jobs" -q RPUSH '{q}jobs' job >/dev/null
  wait "$consumers"
  end=$(date +%s.%N)
  python3 -c "print($end - $start)"
}

for round in $(seq "$rounds"); do
  versus_redis "$jobs" pops "$round" run_queue "$@"
done
rm -rf "$work"
