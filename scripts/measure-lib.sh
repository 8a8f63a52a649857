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
