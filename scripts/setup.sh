#!/usr/bin/env bash
# Installs what building and testing the guests needs, at pinned versions, skipping whatever is
# already installed at the right version:
# - the two WASI targets of the Rust toolchain (wasm32-wasip1, wasm32-wasip2);
# - the wasmtime CLI, at the version the host embeds (tests compare `wasmtime run` with
#   `attune-wasm run`; first install ~7 min on 2 cores);
# - wac-cli, to compose an action with the secrets adapter (`wac plug`; ~5 min);
# - componentize-py, to build the Python action (pip, ~1 s);
# - componentize-js, to build the JavaScript action (npm ci in examples/js-action, from its
#   package-lock.json; ~15 s, needs Node.js/npm).
# cargo installs into ~/.cargo/bin: put it on PATH (scripts/test.sh does).
# A tool whose tests are skipped (tests/all/external.rs: ATTUNE_TEST_WASMTIME_CLI=skip for
# wasmtime and wac, ATTUNE_TEST_PYTHON=skip, ATTUNE_TEST_JS=skip) is not installed.
set -euo pipefail

WASMTIME_VERSION=48.0.8
WAC_VERSION=0.12.0
COMPONENTIZE_PY_VERSION=0.25.1
COMPONENTIZE_JS_VERSION=0.23.0 # must match examples/js-action/package-lock.json
js_action="$(cd "$(dirname "$0")/.." && pwd)/examples/js-action"

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

rustup target add wasm32-wasip1 wasm32-wasip2

# `have TOOL VERSION ARGS...`: true when `TOOL ARGS...` runs and prints VERSION as a word.
have() {
  local tool=$1 version=$2
  shift 2
  command -v "$tool" >/dev/null 2>&1 &&
    "$tool" "$@" 2>/dev/null | grep -qE "(^|[^0-9.])${version//./\\.}([^0-9.]|$)"
}

# `skipped VAR`: true (with a line saying so) when VAR=skip.
skipped() {
  [ "${!1:-}" = skip ] && echo "$1=skip: not installing what its tests need"
}

if skipped ATTUNE_TEST_WASMTIME_CLI; then
  :
elif have wasmtime "$WASMTIME_VERSION" --version; then
  echo "wasmtime $WASMTIME_VERSION already installed"
else
  cargo install wasmtime-cli --version "$WASMTIME_VERSION" --locked
fi

if skipped ATTUNE_TEST_WASMTIME_CLI; then
  :
elif have wac "$WAC_VERSION" --version; then
  echo "wac $WAC_VERSION already installed"
else
  cargo install wac-cli --version "$WAC_VERSION" --locked
fi

if skipped ATTUNE_TEST_PYTHON; then
  :
elif have componentize-py "$COMPONENTIZE_PY_VERSION" --version; then
  echo "componentize-py $COMPONENTIZE_PY_VERSION already installed"
else
  python3 -m pip install "componentize-py==$COMPONENTIZE_PY_VERSION"
fi

# node_modules is current when it was installed from this very package-lock.json.
if skipped ATTUNE_TEST_JS; then
  :
elif cmp -s "$js_action/package-lock.json" "$js_action/node_modules/.installed-from-package-lock.json"; then
  echo "componentize-js $COMPONENTIZE_JS_VERSION already installed"
elif command -v npm >/dev/null 2>&1; then
  grep -q "\"version\": \"$COMPONENTIZE_JS_VERSION\"" "$js_action/package-lock.json"
  (cd "$js_action" && npm ci --no-audit --no-fund &&
    cp package-lock.json node_modules/.installed-from-package-lock.json)
else
  echo "warning: npm not found: the JavaScript action's test fails (install Node.js and npm, or set ATTUNE_TEST_JS=skip)" >&2
fi
