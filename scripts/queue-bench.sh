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
ticks=$(getconf CLK_TCK)

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
  up_warm "$work/c$round"
  pids=$(member_pids "$work/c$round" placement nodes proxy)
  before=$(cpu_ticks $pids)
  secs=$(run_queue "$rport")
  after=$(cpu_ticks $pids)
  "$target/redraft" down --dir "$work/c$round" >/dev/null
  rr=$(python3 -c "print(round($jobs / $secs))")
  cpu=$(python3 -c "print(round(($after - $before) / $ticks * 1e6 / $jobs, 1))")
  declare -A ref
  for mode in always memory; do
    p=$(port)
    if [ $mode = always ]; then
      redis-server --port "$p" --save '' --appendonly yes --appendfsync always --dir "$work" \
        --appendfilename "q$round.aof" --daemonize no >/dev/null &
    else
      redis-server --port "$p" --save '' --appendonly no --daemonize no >/dev/null &
    fi
    rpid=$!
    until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.1; done
    ref[$mode]=$(python3 -c "print(round($jobs / $(run_queue "$p")))")
    kill "$rpid"; wait "$rpid" 2>/dev/null || true
  done
  echo "round $round: Redraft $rr pops/s, ${cpu} µs CPU per pop (RPUSH + BLPOP, all members);" \
    "redis-server appendfsync always ${ref[always]} ($(python3 -c "print(round($rr / ${ref[always]}, 3))")x)," \
    "in memory ${ref[memory]} ($(python3 -c "print(round($rr / ${ref[memory]}, 3))")x)"
done
rm -rf "$work"
