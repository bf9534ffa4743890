#!/usr/bin/env bash
# Installs what building the guests needs: the two WASI targets of the Rust toolchain.
set -euo pipefail
rustup target add wasm32-wasip1 wasm32-wasip2
