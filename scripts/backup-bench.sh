#!/usr/bin/env bash
# Cost of an online backup: a fresh local cluster with 12 shards is filled
# with KEYS keys of SIZE-byte values (100,000 x 10,000 B = about 1 GB by
# default); a light YCSB-A load (50% GET, 50% SET at RATE req/s over 20
# connections) runs 15 s alone, then while `redraft ctl backup` takes the
# whole keyspace at BACKUP_LIMIT MiB/s (default 16), then with no read
# limit; the second backup is verified and restored into a
# second fresh cluster. The same data then goes into a redis-server, whose
# `redis-cli --rdb` (BGSAVE streamed to a file) is timed in the same run.
# Prints backup and restore speed (MiB/s of user data), the cut's hold, and
# the load's p50/p99/max alone and during the backup.
#
# Usage: scripts/backup-bench.sh [keys] [value bytes] [rate] [-- extra `redraft up` args]
set -euo pipefail
cd "$(dirname "$0")/.."
keys="${1:-100000}"; size="${2:-10000}"; rate="${3:-2000}"; limit="${BACKUP_LIMIT:-16}"
shift $(( $# < 3 ? $# : 3 )); [ "${1:-}" = "--" ] && shift
target="${CARGO_TARGET_DIR:-target}/debug"
work=$(mktemp -d)
# shellcheck source=scripts/measure-lib.sh
. scripts/measure-lib.sh
rpid=""
cleanup() {
  "$target/redraft" down --dir "$work/c" >/dev/null 2>&1 || true
  "$target/redraft" down --dir "$work/r" >/dev/null 2>&1 || true
  [ -n "$rpid" ] && kill "$rpid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fill() { fill_keys "$1" "$keys" "$size"; }
up_warm "$work/c" --shards 12 "$@"
redis-cli -p "$rport" flushall >/dev/null
echo "## online backup of $keys keys x $size B at 12 shards; YCSB-A at $rate req/s alongside"
fill "$rport"
mib=$(python3 -c "print(round($keys * ($size + 10) / 2**20))")
echo "keys stored: $(redis-cli -p "$rport" dbsize) (about $mib MiB of keys and values); on disk: $(du -sm "$work/c" | cut -f1) MiB"
sleep 40 # let the fill's flushes and compactions settle
load() { # seconds json
  "$target/redraft-bench" run --target "127.0.0.1:$rport" --mix a -c 20 --keys "$keys" --value-size 100 \
    --rate "$rate" --duration "$1" --json "$2" >/dev/null
}
load 15 "$work/alone.json"
# A rate-limited backup first (the load sees only its first 20 s), then one
# without a limit, which is the one verified and restored.
load 20 "$work/limited.json" & lpid=$!
sleep 2
"$target/redraft" ctl --dir "$work/c" backup --to "$work/b" --tag limited --backup-mib-per-sec "$limit" 2>"$work/limited.err"
wait "$lpid"
grep -h "cut taken" "$work/limited.err" || true
load 25 "$work/during.json" & lpid=$!
sleep 3
start=$(date +%s.%N)
"$target/redraft" ctl --dir "$work/c" backup --to "$work/b" --tag bench 2>"$work/backup.err" | tee "$work/backup.out"
backup_secs=$(python3 -c "print($(date +%s.%N) - $start)")
wait "$lpid"
grep -h "cut taken" "$work/backup.err" || true
start=$(date +%s.%N)
"$target/redraft" ctl backup verify "$work/b/bench"
verify_secs=$(python3 -c "print($(date +%s.%N) - $start)")
"$target/redraft" down --dir "$work/c" >/dev/null
rport2=$(port)
start=$(date +%s.%N)
"$target/redraft" up --dir "$work/r" --port "$rport2" --base-port $(( 20000 + RANDOM % 12000 )) --detach \
  --restore "$work/b/bench" "$@" | tail -1
restore_secs=$(python3 -c "print($(date +%s.%N) - $start)")
echo "restored cluster: $(redis-cli -p "$rport2" dbsize) keys"
"$target/redraft" down --dir "$work/r" >/dev/null

p=$(port)
redis-server --port "$p" --save '' --appendonly no --dir "$work" --daemonize no >/dev/null &
rpid=$!
until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.1; done
fill "$p"
start=$(date +%s.%N)
redis-cli -p "$p" --rdb "$work/redis.rdb" >/dev/null 2>&1
rdb_secs=$(python3 -c "print($(date +%s.%N) - $start)")
python3 - "$work" "$mib" "$backup_secs" "$verify_secs" "$restore_secs" "$rdb_secs" <<'PY'
import json, os, sys
work, mib = sys.argv[1], float(sys.argv[2])
backup, verify, restore, rdb = map(float, sys.argv[3:7])
size = sum(os.path.getsize(os.path.join(work, "b", "bench", f)) for f in os.listdir(os.path.join(work, "b", "bench")))
m = json.load(open(os.path.join(work, "b", "bench", "manifest.json")))
print(f"backup: {backup:.1f} s, {mib / backup:.1f} MiB/s of user data; files {size / 2**20:.0f} MiB; "
      f"cut held answers {m['hold_seconds'] * 1000:.1f} ms at most; verify {verify:.1f} s")
print(f"restore (up --restore, start included): {restore:.1f} s, {mib / restore:.1f} MiB/s")
print(f"redis-cli --rdb of the same data: {rdb:.1f} s, {mib / rdb:.1f} MiB/s; "
      f"Redraft backup {rdb / backup:.2f}x its speed")
for label, what in [("alone", "no backup"), ("limited", f"backup at {os.environ.get('BACKUP_LIMIT', '16')} MiB/s"),
                    ("during", "backup, no limit")]:
    r = json.load(open(f"{work}/{label}.json"))[0]
    lat = r["latency"]
    print(f"YCSB-A, {what:22s}: {r['throughput']:,.0f} req/s, p50 {lat['p50_us'] / 1000:.2f} ms, "
          f"p99 {lat['p99_us'] / 1000:.2f} ms, max {lat['max_us'] / 1000:.1f} ms, errors {r['errors']}")
PY
