#!/usr/bin/env bash
# Reruns every benchmark in docs/benchmarks.md with one command:
#   1. a local Redraft cluster (3 nodes, RF=3, fsync always) and two stock
#      redis-server references (in memory; appendonly with appendfsync always),
#      all on 127.0.0.1 free ports;
#   2. redraft-bench --compare for SET/GET at pipeline 1 and 16 (50 connections),
#      JSON results and SVG charts into docs/bench/;
#   3. redis-benchmark -t set,get -c 50 -P 1|16 against all three;
#   4. the criterion micro-benchmarks;
#   5. the SET throughput curve: 1, 4, 16, 64 connections at pipeline 1 and 16,
#      each point against redis-server appendfsync always in the same run
#      (CURVE_SECONDS per point and target, default 5);
#   6. the idle cost of 1,000 and 5,000 shards per node, with and without
#      quiescence (redraft-bench idle);
#   7. scripts/vs-etcd.sh: a 3-member etcd (Debian's etcd-server, installed by
#      setup.sh) on loopback ports, puts and linearizable gets against SET and
#      GET P1 of a fresh cluster, each pair back to back with CPU per operation
#      (ETCD_SECONDS each, default 10);
#   8. scripts/queue-bench.sh: a job queue (RPUSH producers, BLPOP consumers)
#      against redis-server in both modes (QUEUE_JOBS jobs, default 30,000).
#   9. scripts/script-bench.sh: EVALSHA of a five-command script against
#      redis-server in both modes (SCRIPT_CALLS calls, default 30,000).
#  10. scripts/verify-bench.sh: digest speed of a consistency check of 1 GB and
#      the client latency while checks run.
#  11. scripts/sim-bench.sh: the placement driver's scheduler at 100-1,000
#      simulated nodes and 50,000 shards.
#  12. scripts/backup-bench.sh: an online backup of 1 GB at 12 shards (speed,
#      the cut's hold, client latency meanwhile), its restore, and
#      `redis-cli --rdb` of the same data.
#  13. scripts/types-bench.sh: SETBIT, BITCOUNT, PFADD, PFCOUNT, GEOADD and
#      GEOSEARCH against redis-server in both modes (TYPES_SECONDS per run,
#      default 8).
# Usage: scripts/bench.sh [requests per run, default 100000]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh etcd-server
N="${1:-100000}"
cargo build --workspace --bins
target="${CARGO_TARGET_DIR:-target}/debug"
out=docs/bench
mkdir -p "$out"
work=$(mktemp -d)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(port); mport=$(port); aport=$(port); base=$(( 20000 + RANDOM % 12000 ))
cleanup() {
  "$target/redraft" down --dir "$work/redraft" >/dev/null 2>&1 || true
  redis-cli -p "$mport" shutdown nosave >/dev/null 2>&1 || true
  redis-cli -p "$aport" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
"$target/redraft" up --dir "$work/redraft" --port "$rport" --base-port "$base" --detach
redis-server --port "$mport" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize yes >/dev/null
redis-server --port "$aport" --bind 127.0.0.1 --save "" --appendonly yes --appendfsync always \
  --appendfilename always.aof --dir "$work" --daemonize yes >/dev/null
sleep 1

echo "## redraft-bench (50 connections, $N requests per run)"
for mix in set get; do
  for p in 1 16; do
    echo "### $mix P$p"
    "$target/redraft-bench" run --target "127.0.0.1:$rport" --mix "$mix" -c 50 -P "$p" -n "$N" --compare \
      --json "$out/$mix-p$p.json" --svg "$out/$mix-p$p.svg"
  done
done
"$target/redraft-bench" plot "$out"/set-p1.json "$out"/get-p1.json "$out"/set-p16.json "$out"/get-p16.json \
  --out "$out/comparison.svg"

echo "## redis-benchmark -t set,get -n $N -c 50"
for p in 1 16; do
  for target_port in "redraft:$rport" "redis-server (in memory):$mport" "redis-server (appendfsync always):$aport"; do
    name="${target_port%:*}"; pt="${target_port##*:}"
    line=$(redis-benchmark -p "$pt" -t set,get -n "$N" -c 50 -P "$p" -q 2>/dev/null | tr '\r' '\n' \
      | grep -E "requests per second" | sed -E 's/ requests per second.*//' | tr '\n' ' ')
    echo "P$p | $name | $line"
  done
done

echo "## criterion micro-benchmarks"
for b in "redraft-common codec" "redraft-node apply" "redraft-raft-storage log_append"; do
  set -- $b
  cargo bench --profile dev -p "$1" --bench "$2" 2>/dev/null | grep -E "^[a-z].*/|time:|thrpt:|committer" || true
done

echo "## SET throughput curve (redraft-bench --compare; ratio against appendfsync always)"
# Each point runs for a fixed time on every target, so that the references'
# runs are long enough to measure (a fixed request count lasts milliseconds
# on redis-server at high concurrency).
curve_secs="${CURVE_SECONDS:-5}"
for p in 1 16; do
  for c in 1 4 16 64; do
    echo "### SET c=$c P$p"
    "$target/redraft-bench" run --target "127.0.0.1:$rport" --mix set -c "$c" -P "$p" --duration "$curve_secs" --compare \
      --json "$out/curve-set-c$c-p$p.json"
  done
done

echo "## idle cost (3 nodes, each hosting a replica of every shard)"
"$target/redraft-bench" idle --shards 1000,5000 --json "$out/idle-quiesced.json"
"$target/redraft-bench" idle --shards 1000,5000 --node-arg=--quiesce-after-secs=0 --json "$out/idle-ticking.json"

# A fresh cluster of each, so the long runs above do not weigh on either side.
"$target/redraft" down --dir "$work/redraft" >/dev/null
./scripts/vs-etcd.sh "${ETCD_SECONDS:-10}" 1

echo "## job queue: RPUSH producers and BLPOP consumers"
./scripts/queue-bench.sh "${QUEUE_JOBS:-30000}" 1

echo "## scripts: EVALSHA of a five-command script"
./scripts/script-bench.sh "${SCRIPT_CALLS:-30000}" 1

echo "## consistency check: digest speed and client latency"
./scripts/verify-bench.sh

echo "## placement driver at scale (simulated nodes, the real scheduler)"
./scripts/sim-bench.sh

echo "## online backup and restore"
./scripts/backup-bench.sh

echo "## bitmaps, HyperLogLog and GEO"
./scripts/types-bench.sh "${TYPES_SECONDS:-8}" 1
