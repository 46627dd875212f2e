#!/usr/bin/env bash
# `qwen3vl serve` through real clients, on the tiny checkpoint testdata/model-tiny-tied:
#   - the official `openai` Python package (crates/server/tests/python/test_openai_client.py),
#   - the web chat page in Debian's headless Chromium over the DevTools protocol (test_web_page.py),
#   - `qwen3vl bench serve` against it (every request answered, the JSON report's fields).
# Installs what it needs (Debian's chromium, the pinned venv of tools/ci/venv.sh), builds
# target/release/qwen3vl unless QWEN3VL_BIN names a binary, starts the server on a free port of 127.0.0.1,
# and stops every server it started on exit. Exits non-zero on any failure.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"

if ! command -v chromium >/dev/null 2>&1; then
    echo "server-tests: installing Debian's chromium" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

if [ -z "${QWEN3VL_BIN:-}" ]; then
    cargo build --release -q -p qwen3vl --bin qwen3vl
    QWEN3VL_BIN="$repo/target/release/qwen3vl"
fi
export QWEN3VL_BIN
venv="$(tools/ci/venv.sh)"
py="$venv/bin/python"

work="$(mktemp -d -t qwen3vl-server-tests.XXXXXX)"
export QWEN3VL_CACHE="$work/cache"   # packed-weight cache of the servers started here, not in ~/.cache
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server NAME ARGS...: starts `qwen3vl serve` on a free port, waits until /health says 200 and
# sets URL to its address.
start_server() {
    local name="$1"
    shift
    local port
    port="$(free_port)"
    "$QWEN3VL_BIN" serve --model testdata/model-tiny-tied --host 127.0.0.1 --port "$port" "$@" \
        >"$work/$name.log" 2>&1 &
    pids+=("$!")
    URL="http://127.0.0.1:$port"
    for _ in $(seq 1 600); do
        if ! kill -0 "${pids[-1]}" 2>/dev/null; then
            echo "server-tests: the $name server exited:" >&2
            cat "$work/$name.log" >&2
            return 1
        fi
        if [ "$("$py" -c "import urllib.request as u, sys
try: print(u.urlopen('$URL/health', timeout=2).status)
except Exception: print(0)")" = 200 ]; then
            return 0
        fi
        sleep 0.2
    done
    echo "server-tests: the $name server is not healthy after 120 s" >&2
    cat "$work/$name.log" >&2
    return 1
}

start_server main
export QWEN3VL_SERVER_URL="$URL"
export QWEN3VL_SCREENSHOT_DIR="${QWEN3VL_SCREENSHOT_DIR:-$work}"

status=0
"$py" -m pytest -q -p no:cacheprovider crates/server/tests/python || status=$?

# The load generator against the same server: every request answered, the report complete.
"$py" crates/server/tests/python/make_png.py "$work/bench.png"
if "$QWEN3VL_BIN" bench serve --url "$QWEN3VL_SERVER_URL" --concurrency 2 --requests 6 --max-tokens 8 \
    --image "$work/bench.png" --json >"$work/bench.json"; then
    "$py" - "$work/bench.json" <<'PY' || status=1
import json, sys
r = json.load(open(sys.argv[1]))
assert r["requests"] == 6 and r["completed"] == 6 and r["failed"] == 0, r
assert r["total_output_tokens"] >= 6 and r["total_prompt_tokens"] > 6 * 10, r
for k in ("ttft_ms", "tpot_ms", "e2e_ms"):
    p = r[k]
    assert 0 < p["p50"] <= p["p90"] <= p["p99"], (k, p)
assert r["ttft_ms"]["p50"] <= r["e2e_ms"]["p50"]
print("bench serve: 6 passed, 0 failed")
PY
else
    echo "server-tests: bench serve failed" >&2
    status=1
fi

if [ "$status" != 0 ]; then
    echo "server-tests: FAILED; the server's log:" >&2
    tail -50 "$work/main.log" >&2
fi
exit "$status"
