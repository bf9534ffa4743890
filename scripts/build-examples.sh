#!/usr/bin/env bash
# Builds every example action for WASI p2 (components) and WASI p1 (core modules):
#   examples/target/wasm32-wasip2/release/<name>.wasm
#   examples/target/wasm32-wasip1/release/<name>.wasm
set -euo pipefail
cd "$(dirname "$0")/.."
# Only the WASI targets: the test tools scripts/setup.sh installs (wasmtime CLI, wac,
# componentize-py/js) are not needed to build the Rust examples.
rustup target add wasm32-wasip1 wasm32-wasip2 >/dev/null 2>&1
cargo build --manifest-path examples/Cargo.toml --release \
  --target wasm32-wasip2 --target wasm32-wasip1
