#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is missing (MariaDB, sysbench,
# the Python readers), checks formatting and lints, then runs unit and integration tests against
# real servers started by tests/scripts/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/scripts/install-deps.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/binlake/target}
echo "== cargo fmt --check"
cargo fmt --all -- --check
# clippy on the crates without deltalake: checking deltalake+DataFusion would double CI's largest
# build (the delta crate is linted by developers with --all-features)
echo "== cargo clippy (release profile, warnings are errors)"
cargo clippy --release -p binlake -p binlake-sink -p binlake-sink-parquet -p binlake-sink-clickhouse --all-targets -- -D warnings
echo "== cargo test (release)"
cargo test --release --workspace --all-features -- --test-threads "${BINLAKE_TEST_THREADS:-2}"
