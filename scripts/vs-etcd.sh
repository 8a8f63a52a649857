#!/usr/bin/env bash
# Redraft against a 3-member etcd (Debian's etcd-server, default fsync) on
# loopback ports, the store with the same guarantees: SET against puts and GET
# against linearizable gets, 50 in flight (etcd: over 10 gRPC connections to
# its leader, as etcd's own benchmark tool does), each pair back to back.
#
# Each round starts a fresh Redraft cluster (`redraft up`, warmed with SET P16
# for 2 s) and a fresh etcd, and reports req/s and CPU per operation of every
# member of each (user+system time from /proc around the run; the load
# generator is not counted on either side), so ratios come from the same run.
#
# Usage: scripts/vs-etcd.sh [seconds per run, default 10] [rounds, default 1] [-- extra `redraft up` args]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"; rounds="${2:-1}"
shift $(( $# < 2 ? $# : 2 )); [ "${1:-}" = "--" ] && shift
command -v etcd >/dev/null || ./scripts/setup.sh etcd-server
target="${CARGO_TARGET_DIR:-target}/debug"
work=$(mktemp -d)
# shellcheck source=scripts/measure-lib.sh
. scripts/measure-lib.sh
etcd_pids=()
cleanup() {
  for pid in "${etcd_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$target/redraft" down --dir "$work/redraft" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
report() { # mix name json before after
  python3 - "$@" "$(getconf CLK_TCK)" <<'PY'
import json, sys
mix, name, path, before, after, ticks = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
r = json.load(open(path))
r = r[0] if isinstance(r, list) else r
ops = max(r["requests"], 1)
print(f"{mix.upper()} P1 c=50  {name:8s} {r['throughput']:>9,.0f} req/s  {(after - before) / ticks * 1e6 / ops:6.1f} µs CPU/op")
PY
}
echo "## Redraft against etcd 3.4 (3 members each), ${secs}s per run, $rounds round(s); up args: ${*:-none}"
for round in $(seq "$rounds"); do
  up_warm "$work/redraft" "$@"
  pids=$(member_pids "$work/redraft" placement nodes proxy)
  peers=""; clients=""; eclient=(); epeer=(); etcd_pids=()
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
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids)
    "$target/redraft-bench" run --target "127.0.0.1:$rport" --mix "$mix" -c 50 -P 1 --duration "$secs" \
      --keys 100000 --json "$work/redraft-$mix.json" >/dev/null
    # shellcheck disable=SC2086
    report "$mix" redraft "$work/redraft-$mix.json" "$before" "$(cpu_ticks $pids)"
    before=$(cpu_ticks "${etcd_pids[@]}")
    "$target/redraft-bench" etcd --endpoints "${clients%,}" --mix "$mix" -c 50 --grpc-connections 10 \
      --duration "$secs" --json "$work/etcd-$mix.json" >/dev/null
    report "$mix" etcd "$work/etcd-$mix.json" "$before" "$(cpu_ticks "${etcd_pids[@]}")"
  done
  for pid in "${etcd_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait "${etcd_pids[@]}" 2>/dev/null || true
  "$target/redraft" down --dir "$work/redraft" >/dev/null
  rm -rf "$work"/redraft "$work"/etcd-*
done
