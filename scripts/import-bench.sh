#!/usr/bin/env bash
# Import speed: a redis-server filled with KEYS keys of SIZE-byte values
# (DEBUG POPULATE; 1,000,000 x 1,000 B = about 1 GB by default) is copied
# into a fresh local cluster live (`redraft ctl import --from-redis`), then
# saved to an RDB file and loaded into another fresh cluster (`import --rdb`).
# Prints keys/s and MiB/s (keys and values) of each, and the export back to
# an RDB file.
#
# Usage: scripts/import-bench.sh [keys] [value bytes] [-- extra `redraft up` args]
set -euo pipefail
cd "$(dirname "$0")/.."
keys="${1:-1000000}"; size="${2:-1000}"
shift $(( $# < 2 ? $# : 2 )); [ "${1:-}" = "--" ] && shift
target="${CARGO_TARGET_DIR:-target}/debug"
work=$(mktemp -d)
# shellcheck source=scripts/measure-lib.sh
. scripts/measure-lib.sh
rp=$(port)
redis-server --port "$rp" --save '' --appendonly no --dir "$work" --enable-debug-command yes \
  --daemonize no >/dev/null &
rpid=$!
cleanup() {
  kill "$rpid" 2>/dev/null || true
  for c in "$work"/c*; do [ -d "$c" ] && "$target/redraft" down --dir "$c" >/dev/null 2>&1; done
  rm -rf "$work"
}
trap cleanup EXIT
until redis-cli -p "$rp" ping >/dev/null 2>&1; do sleep 0.1; done
redis-cli -p "$rp" debug populate "$keys" key "$size" >/dev/null
mib=$(python3 -c "print(round($keys * ($size + 10) / 1048576, 1))")
echo "## import of $keys keys, $size-byte values ($mib MiB of keys and values)"
timed() { # label command...: runs it, prints keys/s and MiB/s
  local label=$1 start end; shift
  start=$(date +%s.%N); "$@" >/dev/null 2>&1; end=$(date +%s.%N)
  python3 -c "s = $end - $start; print(f'$label: {s:.1f} s, {$keys / s:,.0f} keys/s, {$mib / s:.1f} MiB/s')"
}
up_warm "$work/c1" "$@"; redis-cli -p "$rport" flushall >/dev/null
timed "live (--from-redis)" "$target/redraft" ctl import --from-redis "127.0.0.1:$rp" --proxy "127.0.0.1:$rport"
redis-cli -p "$rport" dbsize
timed "export --rdb" "$target/redraft" ctl export --rdb "$work/out.rdb" --proxy "127.0.0.1:$rport"
"$target/redraft" down --dir "$work/c1" >/dev/null
redis-cli -p "$rp" save >/dev/null
up_warm "$work/c2" "$@"; redis-cli -p "$rport" flushall >/dev/null
timed "RDB file (--rdb, $(du -m "$work/dump.rdb" | cut -f1) MiB on disk)" \
  "$target/redraft" ctl import --rdb "$work/dump.rdb" --proxy "127.0.0.1:$rport"
redis-cli -p "$rport" dbsize
