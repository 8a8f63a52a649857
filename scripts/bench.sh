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
#   7. a 3-member etcd (Debian's etcd-server, installed by setup.sh) on
#      loopback ports: puts and linearizable gets against SET and GET P1 of the
#      same cluster, each pair run back to back (ETCD_SECONDS each, default 10).
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
etcd_pids=()
cleanup() {
  for pid in "${etcd_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
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

echo "## etcd 3.4, 3 members on loopback (the reference with Redraft's guarantees)"
etcd_secs="${ETCD_SECONDS:-10}"
peers=""; clients=""
declare -a eclient epeer
for i in 1 2 3; do eclient[$i]=$(port); epeer[$i]=$(port); done
for i in 1 2 3; do peers+="e$i=http://127.0.0.1:${epeer[$i]},"; clients+="http://127.0.0.1:${eclient[$i]},"; done
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$work/etcd-$i" \
    --listen-client-urls "http://127.0.0.1:${eclient[$i]}" --advertise-client-urls "http://127.0.0.1:${eclient[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${epeer[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${epeer[$i]}" \
    --initial-cluster "${peers%,}" --initial-cluster-state new --initial-cluster-token redraft-bench \
    --log-level error >"$work/etcd-$i.log" 2>&1 &
  etcd_pids+=($!)
done
sleep 3
for mix in set get; do
  "$target/redraft-bench" run --target "127.0.0.1:$rport" --mix "$mix" -c 50 -P 1 --duration "$etcd_secs" \
    --json "$work/redraft-$mix.json" >/dev/null
  "$target/redraft-bench" etcd --endpoints "${clients%,}" --mix "$mix" -c 50 --grpc-connections 10 \
    --duration "$etcd_secs" --json "$work/etcd-$mix.json"
  python3 - "$mix" "$work/redraft-$mix.json" "$work/etcd-$mix.json" <<'PY'
import json, sys
mix, redraft, etcd = sys.argv[1], json.load(open(sys.argv[2]))[0], json.load(open(sys.argv[3]))
print(f"{mix.upper()} P1 c=50: redraft {redraft['throughput']:,.0f} req/s, etcd {etcd['throughput']:,.0f} req/s: "
      f"{redraft['throughput'] / etcd['throughput']:.2f}x etcd")
PY
done
