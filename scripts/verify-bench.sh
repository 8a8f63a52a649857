#!/usr/bin/env bash
# Cost of a consistency check: a fresh local cluster is filled with KEYS keys of
# SIZE-byte values (100,000 x 10,000 B = about 1 GB by default), then a light
# YCSB-A load (50% GET, 50% SET, at RATE req/s over 20 connections) runs for
# 15 s alone, 15 s while `redraft ctl verify` checks every shard back to back
# with no read limit, and 15 s with the periodic check's 32 MiB/s per replica.
# Prints the digest speed (MiB/s of shard data per replica, from the
# verdicts) and the load's p50/p99 in each run.
#
# Usage: scripts/verify-bench.sh [keys] [value bytes] [rate] [-- extra `redraft up` args]
set -euo pipefail
cd "$(dirname "$0")/.."
keys="${1:-100000}"; size="${2:-10000}"; rate="${3:-2000}"
shift $(( $# < 3 ? $# : 3 )); [ "${1:-}" = "--" ] && shift
target="${CARGO_TARGET_DIR:-target}/debug"
work=$(mktemp -d)
# shellcheck source=scripts/measure-lib.sh
. scripts/measure-lib.sh
cleanup() { "$target/redraft" down --dir "$work/c" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
up_warm "$work/c" "$@"
redis-cli -p "$rport" flushall >/dev/null
echo "## consistency check of $keys keys x $size B; YCSB-A at $rate req/s alongside"
fill_keys "$rport" "$keys" "$size"
echo "keys stored: $(redis-cli -p "$rport" dbsize); on disk: $(du -sm "$work/c" | cut -f1) MiB"
ctl() { "$target/redraft" ctl --dir "$work/c" "$@"; }
sleep 30 # let the fill's flushes and compactions settle
ctl verify >/dev/null # warm: the first read of cold SST files
load() { # seconds json
  "$target/redraft-bench" run --target "127.0.0.1:$rport" --mix a -c 20 --keys "$keys" --value-size 100 \
    --rate "$rate" --duration "$1" --json "$2" >/dev/null
}
# The load alone, then while full checks run back to back: with no read limit,
# and at the periodic check's default of 32 MiB/s per replica.
during() { # label verify-args...
  local label=$1; shift
  load 15 "$work/$label.json" & lpid=$!
  n=0
  while kill -0 "$lpid" 2>/dev/null; do
    ctl verify --json "$@" >"$work/verdicts-$label-$n.json"; n=$((n + 1))
  done
  wait "$lpid"
}
load 15 "$work/alone.json"
during unlimited
during limited --mib-per-sec 32
python3 - "$work" <<'PY'
import glob, json, sys
work = sys.argv[1]
for label in ["unlimited", "limited"]:
    checks = [json.load(open(f)) for f in sorted(glob.glob(f"{work}/verdicts-{label}-*.json"))]
    v = [x for c in checks for x in c]
    mib = sum(x["bytes"] for x in v) / 2**20
    secs = sum(x["seconds"] for x in v)
    print(f"verify, {label}: {len(checks)} full checks in 15 s ({len(v)} shard checks), "
          f"{mib / max(len(checks), 1):.0f} MiB per replica per check; digest {mib / max(secs, 1e-9):.0f} MiB/s "
          f"per replica (slowest replica of each shard); all agree: {all(len(x['groups']) <= 1 for x in v)}")
for label in ["alone", "unlimited", "limited"]:
    r = json.load(open(f"{work}/{label}.json"))[0]
    lat = r["latency"]
    print(f"YCSB-A, verify {label:9s}: {r['throughput']:,.0f} req/s, p50 {lat['p50_us'] / 1000:.2f} ms, "
          f"p99 {lat['p99_us'] / 1000:.2f} ms, max {lat['max_us'] / 1000:.1f} ms, errors {r['errors']}")
PY
