#!/usr/bin/env bash
# Builds the Python action into a component: build.sh [OUT] (default: python-action.wasm here).
# Needs componentize-py 0.25.1 (scripts/setup.sh installs it). ~5 s, ~18 MB.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/python-action.wasm}"
cd "$here"
componentize-py -d wit -w python-action componentize app -o "$out"
