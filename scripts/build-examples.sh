#!/usr/bin/env bash
# Builds every example action for WASI p2 (components) and WASI p1 (core modules):
#   examples/target/wasm32-wasip2/release/<name>.wasm
#   examples/target/wasm32-wasip1/release/<name>.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
cargo build --manifest-path examples/Cargo.toml --release \
  --target wasm32-wasip2 --target wasm32-wasip1
