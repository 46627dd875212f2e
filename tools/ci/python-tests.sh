#!/usr/bin/env bash
# The Python package's tests: builds and installs crates/python (pip install, maturin as the PEP 517
# backend) into the venv of tools/ci/venv.sh, then runs pytest on crates/python/tests/.
# Exits non-zero on any failure. Re-running reinstalls the package (cargo's cache keeps it quick).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$("$repo/tools/ci/venv.sh")"
# The wheel's extension is built into the workspace's target dir (shared with cargo) in release mode.
# maturin (the build backend, from the venv) must be on PATH for pip --no-build-isolation.
export PATH="$venv/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
"$venv/bin/pip" install -q --disable-pip-version-check --no-build-isolation --force-reinstall --no-deps \
    "$repo/crates/python"
cd "$repo/crates/python"
# -p no:cacheprovider: nothing written into the source tree.
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
