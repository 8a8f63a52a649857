#!/usr/bin/env bash
# Starts a local Redraft cluster: placement driver, 3 shard nodes and a proxy on
# 127.0.0.1:6379, with data, certificates and logs under ./redraft-data.
# Extra arguments go to `redraft up` (see `redraft up --help`).
# It runs in the foreground: Ctrl-C stops the cluster. With --detach it returns
# once ready; stop it then with: cargo run --quiet -- down --dir redraft-data
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ ! -x "${CARGO_TARGET_DIR:-target}/debug/redraft" ]; then
  echo "up.sh: first build: compiling RocksDB and Redraft takes 10-20 minutes on 2 cores (later starts take seconds)" >&2
fi
cargo build --bin redraft
exec cargo run --quiet --bin redraft -- up --dir redraft-data "$@"
