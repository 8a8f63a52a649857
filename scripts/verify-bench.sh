#!/usr/bin/env bash
# Cost of a consistency check: a fresh local cluster is filled with KEYS keys of
# SIZE-byte values (100,000 x 10,000 B = about 1 GB by default), then a light
# YCSB-A load (50% GET, 50% SET, at RATE req/s over 20 connections) runs twice
# for the same time: alone, then while `redraft ctl verify` checks every shard
# with no read limit. Prints the digest speed (MiB/s of shard data per replica,
# from the verdicts) and the load's p50/p99 in both runs.
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
python3 - "$keys" "$size" <<'PY' | redis-cli -p "$rport" --pipe >/dev/null
import os, sys
keys, size = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
for i in range(keys):
    key, value = f"key:{i}".encode(), os.urandom(size // 2).hex().encode()[:size]
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
PY
echo "keys stored: $(redis-cli -p "$rport" dbsize); on disk: $(du -sm "$work/c" | cut -f1) MiB"
ctl() { "$target/redraft" ctl --dir "$work/c" "$@"; }
ctl verify >/dev/null # warm: the first read of cold SST files
load() { # seconds json
  "$target/redraft-bench" run --target "127.0.0.1:$rport" --mix a -c 20 --keys "$keys" --value-size 100 \
    --rate "$rate" --duration "$1" --json "$2" >/dev/null
}
start=$(date +%s.%N); ctl verify --json >"$work/verdicts.json"; end=$(date +%s.%N)
secs=$(python3 -c "print(max(1, round($end - $start)))")
load "$secs" "$work/alone.json"
load "$secs" "$work/during.json" & lpid=$!
sleep 0.5; ctl verify --json >"$work/verdicts2.json"; wait "$lpid"
python3 - "$work" "$start" "$end" <<'PY'
import json, sys
work, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
v = json.load(open(f"{work}/verdicts.json")) + json.load(open(f"{work}/verdicts2.json"))
mib = sum(x["bytes"] for x in v) / 2**20
secs = sum(x["seconds"] for x in v)
print(f"verify: {len(v)} shard checks, {mib:.0f} MiB per replica in all, digest {mib / secs:.0f} MiB/s per replica "
      f"(slowest replica of each shard); whole `ctl verify`: {end - start:.1f} s; all agree: {all(len(x['groups']) <= 1 for x in v)}")
for label in ["alone", "during"]:
    r = json.load(open(f"{work}/{label}.json"))[0]
    lat = r["latency"]
    print(f"YCSB-A {label:6s}: {r['throughput']:,.0f} req/s, p50 {lat['p50_us'] / 1000:.2f} ms, "
          f"p99 {lat['p99_us'] / 1000:.2f} ms, max {lat['max_us'] / 1000:.1f} ms, errors {r['errors']}")
PY
