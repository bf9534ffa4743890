#!/usr/bin/env bash
# The main job on the embedded default: store demo secrets at all three ownership levels in a
# SQLite store under .demo/, then run the component action (get-secret door) and the classic
# action (env door) as mypack.deploy and show what each received.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/build-examples.sh
cargo build --locked -p attune-wasm
# Where cargo put them: target/ and examples/target/, or CARGO_TARGET_DIR for both.
bin="${CARGO_TARGET_DIR:-target}/debug/attune-wasm"
wasm="${CARGO_TARGET_DIR:-examples/target}"

# Demo settings only: a real operator puts the key in a config file or secret manager.
export ATTUNE__DATA_DIR="$PWD/.demo"
export ATTUNE__SECURITY__ENCRYPTION_KEY="demo-only-encryption-password-0123456789"
rm -rf .demo

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "store secrets (values read from stdin stay out of shell history)"
printf 'sk_live_system_default_0000' | $bin secret set api_key
printf 'sk_live_mypack_override_1111' | $bin secret set api_key --pack mypack
printf 'pg-password-for-deploy' | $bin secret set db_password --action mypack.deploy
printf 'other-pack-secret' | $bin secret set api_key --pack otherpack
$bin secret list

step "component action (WASI p2, get-secret) as mypack.deploy"
echo '{"target": "production"}' | $bin run "$wasm"/wasm32-wasip2/release/deploy-component.wasm --action mypack.deploy

step "classic action (WASI p1 core module, SECRET_* env) as mypack.deploy"
echo '{"target": "production"}' | $bin run "$wasm"/wasm32-wasip1/release/deploy-classic.wasm --action mypack.deploy

step "for comparison, computed here from the values stored above (pack overrides system)"
expect() { printf '%-12s from %-21s len %2d  sha256_prefix %s\n' "$1" "$2" "${#3}" "$(printf '%s' "$3" | sha256sum | cut -c1-8)"; }
expect api_key "pack mypack" sk_live_mypack_override_1111
expect db_password "action mypack.deploy" pg-password-for-deploy

step "same component as otherpack.deploy: sees otherpack's key, no db_password"
echo '{}' | $bin run "$wasm"/wasm32-wasip2/release/deploy-component.wasm --action otherpack.deploy
