#!/usr/bin/env bash
# Creates (or brings up to date) the Python venv the tests use, and prints its path.
#   tools/ci/venv.sh            -> <repo>/.venv, with tools/ci/requirements.txt installed
# QWEN3VL_VENV=/path overrides the location. Re-running is cheap: it reinstalls only when requirements.txt
# changed since the last successful install (a stamp file inside the venv records its hash).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${QWEN3VL_VENV:-$repo/.venv}"
req="$repo/tools/ci/requirements.txt"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2
fi
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
    echo "$want" > "$venv/.requirements.sha256"
fi
echo "$venv"
