#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, the dependency rule, unit tests
# and the multi-process integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

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
cargo build --bin redraft
python3 scripts/check_deploy.py "${CARGO_TARGET_DIR:-target}/debug/redraft" --prometheus
