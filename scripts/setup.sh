#!/usr/bin/env bash
# Installs the system packages Redraft needs when they are missing:
#   libclang-dev  bindgen, to build the bundled RocksDB
#   redis-tools   redis-cli (tests, benchmarks, and for you)
#   redis-server  the reference server the compatibility tests compare against
#   iptables      real network cuts between members in the fault tests
#   protobuf-compiler  protoc, to build the etcd client of the benchmarks
set -euo pipefail

missing=()
dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# redis-server's package starts a service on 6379 on some systems; Redraft's proxy
# wants that port for `redraft up`, so stop it when it runs.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet redis-server 2>/dev/null; then
  systemctl stop redis-server || true
fi
