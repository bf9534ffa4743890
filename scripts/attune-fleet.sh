#!/usr/bin/env bash
# A scratch Attune for trying `attune-wasm worker` without the rest of Attune:
#   1. creates a PostgreSQL database with the subset of Attune's schema a worker touches
#      (tests/data/attune/schema.sql) and registers the example pack `demo` (examples/worker-action,
#      as a component `demo.greet` and as a core module `demo.classic`) with a few keys;
#   2. starts N workers (default 2) on RabbitMQ;
#   3. runs executions through them with `attune-wasm execute --wait` (round robin);
#   4. stops the workers with SIGTERM and drops the database (KEEP=1 keeps both running).
#
# Usage: scripts/attune-fleet.sh [N]
# Environment: PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/test),
#   AMQP_URL (default: a vhost of its own, created with rabbitmqctl and deleted at the end, on
#   amqp://guest:guest@127.0.0.1:5672), ATTUNE_WASM (the binary; default target/debug/attune-wasm,
#   built when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

n=${1:-2}
pg_admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/test}
bin=${ATTUNE_WASM:-$root/target/debug/attune-wasm}

[ -x "$bin" ] || cargo build -p attune-wasm
p2=examples/target/wasm32-wasip2/release/worker-action.wasm
p1=examples/target/wasm32-wasip1/release/worker-action.wasm
[ -f "$p2" ] && [ -f "$p1" ] || scripts/build-examples.sh

db="aw_fleet_$$"
vhost=""
work=""
# Cleanup is armed before anything is created, so a failed set-up leaves nothing behind.
pids=()
stop() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql "$pg_admin" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  [ -z "$vhost" ] || rabbitmqctl -q delete_vhost "$vhost" || true
  [ -z "$work" ] || rm -rf "$work"
}
[ "${KEEP:-0}" = 1 ] || trap stop EXIT

if [ -n "${AMQP_URL:-}" ]; then
  amqp=$AMQP_URL
else
  # Queue names carry worker ids, which start at 1 in every scratch database: a vhost of its own
  # keeps an earlier run's queues (and messages) away.
  vhost=$db
  rabbitmqctl -q add_vhost "$vhost"
  rabbitmqctl -q set_permissions -p "$vhost" guest '.*' '.*' '.*'
  amqp="amqp://guest:guest@127.0.0.1:5672/$vhost"
fi
db_url="${pg_admin%/*}/$db"
work=$(mktemp -d)
psql "$pg_admin" -q -c "CREATE DATABASE $db"
psql "$db_url" -q -v ON_ERROR_STOP=1 -f tests/data/attune/schema.sql
mkdir -p "$work/packs/demo/actions" "$work/logs"
cp "$p2" "$work/packs/demo/actions/greet.wasm"
cp "$p1" "$work/packs/demo/actions/greet-classic.wasm"
# Plain values here (Attune's API would encrypt them; the tests plant encrypted ones too).
psql "$db_url" -q -v ON_ERROR_STOP=1 <<'SQL'
SET search_path TO attune;
INSERT INTO pack (ref, label) VALUES ('demo', 'Demo pack');
INSERT INTO runtime (ref, name) VALUES ('core.wasm', 'wasm');
INSERT INTO action (ref, pack, pack_ref, label, entrypoint, runtime) VALUES
  ('demo.greet', 1, 'demo', 'Greet (component)', 'greet.wasm', 1),
  ('demo.classic', 1, 'demo', 'Greet (core module)', 'greet-classic.wasm', 1);
INSERT INTO key (local_ref, owner_type, name, encrypted, value) VALUES
  ('api_key', 'system', 'api_key', false, '"demo-api-key-0123456789"');
INSERT INTO key (local_ref, owner_type, owner_pack, name, encrypted, value) VALUES
  ('db_password', 'pack', 1, 'db_password', false, '"demo-db-password-0123456789"'),
  ('region', 'pack', 1, 'region', false, '"eu-west-1-demo"');
SQL

export ATTUNE__DATABASE__URL="$db_url"
export ATTUNE__MESSAGE_QUEUE__URL="$amqp"
export ATTUNE__PACKS_BASE_DIR="$work/packs"
export ATTUNE__SECURITY__ENCRYPTION_KEY="demo-fleet-password-of-32-bytes-or-more"
export ATTUNE__WORKER__HEARTBEAT_INTERVAL=2
export ATTUNE__DATA_DIR="$work/data"

for i in $(seq 1 "$n"); do
  RUST_LOG=info ATTUNE__WORKER__NAME="wasm-worker-$i" "$bin" worker >"$work/logs/worker-$i.log" 2>&1 &
  pids+=("$!")
done
# A worker registers, then declares its queue: wait until each one consumes.
for _ in $(seq 1 300); do
  ready=$( (grep -l "consuming dispatches" "$work"/logs/*.log 2>/dev/null || true) | wc -l)
  [ "$ready" -ge "$n" ] && break
  sleep 0.1
done
echo "$ready worker(s) consuming, registered in $db (logs in $work/logs)"

for i in $(seq 1 "$n"); do
  "$bin" execute --action demo.greet --params "{\"name\": \"fleet $i\"}" --wait
done
"$bin" execute --action demo.classic --params '{"name": "core module"}' --wait
if [ "${KEEP:-0}" = 1 ]; then
  # The scratch vhost's URL holds only RabbitMQ's local demo account; a given AMQP_URL is not echoed.
  [ -n "$vhost" ] && amqp_shown=$amqp || amqp_shown='$AMQP_URL'
  cat <<EOF
kept: database $db, vhost ${vhost:-(given)}, workers ${pids[*]}, logs in $work/logs
more executions:
  export ATTUNE__DATABASE__URL=$db_url ATTUNE__MESSAGE_QUEUE__URL=$amqp_shown
  $bin execute --action demo.greet --params '{"name": "again"}' --wait
one more worker (same exports, plus):
  export ATTUNE__PACKS_BASE_DIR=$work/packs ATTUNE__SECURITY__ENCRYPTION_KEY=$ATTUNE__SECURITY__ENCRYPTION_KEY ATTUNE__DATA_DIR=$work/data ATTUNE__WORKER__HEARTBEAT_INTERVAL=2
  ATTUNE__WORKER__NAME=wasm-worker-extra $bin worker
clean up:
  kill -TERM ${pids[*]}
  psql $pg_admin -c 'DROP DATABASE $db WITH (FORCE)'${vhost:+; rabbitmqctl delete_vhost $vhost}; rm -rf $work
EOF
fi
