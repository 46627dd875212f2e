#!/usr/bin/env bash
# The test command (README "The two commands"; .ci/run calls it): the Rust workspace's tests in release mode,
# then each suite that needs more than cargo (Python packages, a browser, system libraries), one script each
# under tools/ci/*-tests.sh. Each script installs what it needs (idempotent) and exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --workspace
for suite in tools/ci/*-tests.sh; do
    [ -e "$suite" ] || continue
    echo "== $suite"
    bash "$suite"
done
