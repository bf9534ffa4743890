#!/usr/bin/env bash
# The test command (README.md, .ci/run): installs the WASI targets and the pinned external tools
# (scripts/setup.sh: wasmtime CLI, wac, componentize-py), then runs every test of the workspace.
# The integration tests build the example guests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
# cargo installs wasmtime and wac here; the tests look them up on PATH.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
scripts/setup.sh
cargo test --workspace --locked "$@"
