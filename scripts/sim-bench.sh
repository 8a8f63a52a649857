#!/usr/bin/env bash
# The placement driver at scale: `redraft-bench simulate` runs the real
# scheduler against simulated nodes (seeded, no sockets) for each scenario and
# prints one line per run; JSON reports and SVG timelines go to docs/bench/sim/.
#
# Usage: scripts/sim-bench.sh [short | "RUN" ...]
#   short: smaller clusters, a minute in all; RUN: the arguments of one run,
#   e.g. "join --nodes 100 --add 400 --shards 50000".
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}/debug"
out=docs/bench/sim
mkdir -p "$out"
if [ $# -gt 0 ] && [ "$1" != short ]; then
  runs=("$@")
elif [ "${1:-}" = short ]; then
  runs=(
    "join --nodes 20 --add 80 --shards 5000"
    "fail --nodes 100 --shards 5000 --fail-percent 5"
    "decommission --nodes 100 --shards 5000"
    "rolling-restart --nodes 30 --shards 3000"
    "zone-failure --nodes 30 --zones 3 --shards 3000"
    "hotspot --nodes 30 --shards 300"
  )
else
  runs=(
    "join --nodes 100 --add 400 --shards 50000"
    "fail --nodes 500 --shards 50000 --fail-percent 5"
    "decommission --nodes 500 --shards 50000"
    "rolling-restart --nodes 100 --shards 10000"
    "zone-failure --nodes 300 --zones 3 --shards 30000"
    "hotspot --nodes 100 --shards 1000"
    "join --nodes 500 --add 500 --shards 50000"
  )
fi
printf '%-52s %8s %9s %10s %9s %6s %6s %12s %10s %9s %8s\n' run balanced "to bal. s" "moved/ideal" deviation leadΔ "moves/n" "under-rep s·s" "PD ms/rnd" "max ms" "wall s"
for run in "${runs[@]}"; do
  # shellcheck disable=SC2086
  name=$(echo $run | tr ' ' '_' | tr -d '-')
  # shellcheck disable=SC2086
  "$target/redraft-bench" simulate --scenario $run --json --svg "$out/$name.svg" >"$out/$name.json"
  python3 - "$out/$name.json" "$run" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ratio = r["bytes_moved"] / r["bytes_ideal"] if r["bytes_ideal"] else 0.0
print(f"{sys.argv[2]:52s} {str(r['balanced']):>8s} {r['sim_seconds_to_balance']:9d} {ratio:10.3f} "
      f"{r['max_replica_deviation']:9.2f} {r['leader_spread']:6d} {r['max_concurrent_moves_per_node']:6d} "
      f"{r['under_replicated_shard_seconds']:12d} {r['pd_cpu_ms_per_heartbeat_round']:10.2f} "
      f"{r['pd_cpu_ms_max_round']:9.1f} {r['wall_seconds']:8.1f}")
PY
done
