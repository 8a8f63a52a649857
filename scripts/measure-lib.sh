# Helpers shared by scripts/cpu-per-op.sh and scripts/vs-etcd.sh (sourced; they
# set `target` to the directory of the built binaries first).

# A free TCP port on 127.0.0.1.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Sum of utime+stime (clock ticks) of the given pids.
cpu_ticks() { local t=0; for p in "$@"; do set -- $(sed 's/^.*) //' "/proc/$p/stat"); t=$(( t + ${12} + ${13} )); done; echo $t; }

# up_warm DIR [redraft up args...]: a fresh cluster in DIR on free ports, warmed
# with SET P16 for 2 s over the benchmark's 100,000 keys; sets `rport` to its
# proxy's port.
up_warm() {
  local dir=$1; shift
  rport=$(port)
  "$target/redraft" up --dir "$dir" --port "$rport" --base-port $(( 20000 + RANDOM % 12000 )) --detach "$@" >/dev/null
  "$target/redraft-bench" run --target "127.0.0.1:$rport" --mix set -c 50 -P 16 --duration 2 --keys 100000 >/dev/null
}

# member_pids DIR GROUP...: the pids of the cluster's members in those groups
# (placement, nodes, proxy), from DIR/up.json.
member_pids() {
  python3 -c 'import json,sys; u=json.load(open(sys.argv[1])); print(" ".join(str(m["pid"]) for k in sys.argv[2:] for m in u[k]))' "$1/up.json" "${@:2}"
}

# versus_redis COUNT UNIT ROUND RUN [redraft up args...]: `RUN PORT` does COUNT
# operations and prints the seconds they took. Runs it on a fresh cluster
# (CPU of every member counted) and on a redis-server started after it with
# appendfsync always (the durability of a Raft write), then in memory; prints
# one line with the rates and ratios. Needs `work` and `target` set.
versus_redis() {
  local count=$1 unit=$2 round=$3 run=$4; shift 4
  local ticks pids before secs after rate cpu mode p rpid always memory
  ticks=$(getconf CLK_TCK)
  up_warm "$work/c$round" "$@"
  pids=$(member_pids "$work/c$round" placement nodes proxy)
  before=$(cpu_ticks $pids)
  secs=$("$run" "$rport")
  after=$(cpu_ticks $pids)
  "$target/redraft" down --dir "$work/c$round" >/dev/null
  rate=$(python3 -c "print(round($count / $secs))")
  cpu=$(python3 -c "print(round(($after - $before) / $ticks * 1e6 / $count, 1))")
  for mode in always memory; do
    p=$(port)
    if [ $mode = always ]; then
      redis-server --port "$p" --save '' --appendonly yes --appendfsync always --dir "$work" \
        --appendfilename "r$round.aof" --daemonize no >/dev/null &
    else
      redis-server --port "$p" --save '' --appendonly no --daemonize no >/dev/null &
    fi
    rpid=$!
    until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.1; done
    secs=$("$run" "$p")
    kill "$rpid"; wait "$rpid" 2>/dev/null || true
    if [ $mode = always ]; then always=$(python3 -c "print(round($count / $secs))");
    else memory=$(python3 -c "print(round($count / $secs))"); fi
  done
  echo "round $round: Redraft $rate $unit/s, ${cpu} µs CPU per op (all members);" \
    "redis-server appendfsync always $always ($(python3 -c "print(round($rate / $always, 3))")x)," \
    "in memory $memory ($(python3 -c "print(round($rate / $memory, 3))")x)"
}

# fill_keys PORT KEYS SIZE: SETs key:0..KEYS-1 to random SIZE-byte values
# through redis-cli --pipe.
fill_keys() {
  python3 - "$2" "$3" <<'PY' | redis-cli -p "$1" --pipe >/dev/null
import os, sys
keys, size = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
for i in range(keys):
    key, value = f"key:{i}".encode(), os.urandom(size // 2).hex().encode()[:size]
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
PY
}
