#!/usr/bin/env bash
# Installs the system packages Redraft needs when they are missing:
#   libclang-dev  bindgen, to build the bundled RocksDB
#   redis-tools   redis-cli (tests, benchmarks, and for you)
#   redis-server  the reference server the compatibility tests compare against
#   iptables      real network cuts between members in the fault tests
#   protobuf-compiler  protoc, to build the etcd client of the benchmarks
# Packages named as arguments are installed too when missing (scripts/bench.sh
# asks for etcd-server, its same-guarantee reference).
set -euo pipefail

missing=()
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
for extra in "$@"; do
  dpkg -s "$extra" >/dev/null 2>&1 || missing+=("$extra")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# redis-server's package starts a service on 6379 on some systems; Redraft's proxy
# wants that port for `redraft up`, so stop it when it runs. etcd-server's starts
# a default member; the benchmark starts its own.
for service in redis-server etcd; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
    systemctl stop "$service" || true
  fi
done
