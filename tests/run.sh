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
echo "== cargo clippy (release profile, warnings are errors)"
cargo clippy --release --workspace --all-targets -- -D warnings
echo "== cargo test (release)"
cargo test --release --workspace -- --test-threads "${BINLAKE_TEST_THREADS:-2}"
