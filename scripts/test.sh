#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, the dependency rule, unit tests
# and the multi-process integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# redis-py from PyPI for the client-library tests, in a virtualenv outside the clone.
export REDRAFT_VENV="${REDRAFT_VENV:-$HOME/.cache/redraft/venv}"
if ! "$REDRAFT_VENV/bin/python" -c "import redis" >/dev/null 2>&1; then
  python3 -m venv "$REDRAFT_VENV" 2>/dev/null || {
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$REDRAFT_VENV"
  }
  "$REDRAFT_VENV/bin/pip" install -q "redis>=5,<9"
fi

if [ ! -x "${CARGO_TARGET_DIR:-target}/debug/redraft" ]; then
  echo "test.sh: first build: compiling RocksDB, Redraft and the test binaries takes 15-25 minutes on 2 cores; the tests then run for about 10" >&2
else
  echo "test.sh: lints, then unit and multi-process tests (about 10 minutes)" >&2
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The proxy must never depend on a storage engine or on Raft, even transitively.
for forbidden in librocksdb-sys openraft; do
  if cargo tree -p redraft-proxy -e normal -i "$forbidden" >/dev/null 2>&1; then
    echo "redraft-proxy depends on $forbidden"; exit 1
  fi
done
cargo test --workspace -- --test-threads 2
# Deployment files: compose, Kubernetes schemas, dashboard and alerts against a
# running cluster and a real Prometheus server.
# (the workspace's feature set, as the tests built it: `--bin redraft` alone
# unifies features differently and would build RocksDB a second time)
cargo build --workspace --bins
python3 scripts/check_deploy.py "${CARGO_TARGET_DIR:-target}/debug/redraft" --prometheus
