#!/usr/bin/env bash
# Builds the JavaScript action into a component: build.sh [OUT] (default: js-action.wasm here).
# Needs node/npm; installs componentize-js 0.23.0 from package-lock.json into node_modules/ unless
# that lock is what node_modules was installed from (scripts/setup.sh does the same). ~15 s, ~14 MB.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/js-action.wasm}"
cd "$here"
if ! cmp -s package-lock.json node_modules/.installed-from-package-lock.json; then
  npm ci --no-audit --no-fund
  cp package-lock.json node_modules/.installed-from-package-lock.json
fi
# wasi:http and the fetch event are not part of an action's world: attune-wasm does not provide
# them (no network).
node_modules/.bin/componentize-js app.js --wit wit --world-name js-action \
  --disable http fetch-event -o "$out"
