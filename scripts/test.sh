#!/usr/bin/env bash
# The test command (README.md, .ci/run): installs the WASI targets, then runs every test of the
# workspace. The integration tests build the example guests themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --locked "$@"
