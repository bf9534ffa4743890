//! Scale-out of `attune-wasm worker` (issue 12, point 7; results in BENCHMARKS.md, "Worker
//! fleet"): 1, 2 and 4 worker processes against one PostgreSQL and one RabbitMQ, beside
//! Attune's process model (a `python3` process per execution) at the same concurrency.
//!
//! ```text
//! cargo build --release -p attune-wasm --bin attune-wasm --example fleet_bench
//! scripts/build-examples.sh            # examples/target/wasm32-wasip2/release/worker-action.wasm
//! target/release/examples/fleet_bench [--workers 1,2,4] [--slots 4] [--executions 3000] …
//! ```
//!
//! What it sets up (and removes at the end, also on Ctrl-C or an error): a scratch database
//! with Attune's schema subset (`tests/data/attune/schema.sql`), the pack `bench` with the
//! action `bench.greet` (`examples/worker-action`, a WASI p2 component, mode `greet`: it reads
//! its parameters from stdin and asks for three secrets) and its three secrets in
//! `attune.key` (`api_key` system, encrypted in Attune's blob format; `db_password` and
//! `region` pack, plain JSON), a RabbitMQ vhost of its own, and Attune's executor queues
//! `attune.execution.status.queue` and `attune.execution.completed.queue` (bound, consumed and
//! acknowledged one by one with prefetch 10, as Attune's `ExecutionManager` and
//! `CompletionListener` consume them).
//!
//! For each worker count N it starts N `attune-wasm worker` processes (release build,
//! `worker.max_concurrent_tasks` = `--slots`, default log level), then plays Attune's
//! scheduler: the execution rows are inserted `scheduled` beforehand (round robin over the N
//! workers), and each `ExecutionRequested` is published (persistent, publisher confirms
//! awaited off the critical path) on `execution.dispatch.worker.{id}`. Latency is from just
//! before the publish to the moment the `ExecutionCompleted` of that execution is delivered to
//! the completion consumer. Two closed loops per N: *saturated* (`--window`, default
//! N × slots executions in flight: throughput) and *one at a time* (window 1: latency of an
//! idle fleet). A warm-up (`--warmup` executions) comes first and is not counted.
//!
//! Attune's process model, in the same run: a `python3` process per execution (the real
//! interpreter, not a pyenv shim), spawned as Attune's `process_executor` does (stdin, stdout
//! and stderr piped, the parameters with the secrets merged in as one JSON line on stdin,
//! stdout read to the end, exit status awaited), running a script that does what the wasm
//! action does (parse the parameters, SHA-256 of three secrets, print one JSON line); at window
//! N × slots for each N and at window 1. Only the process is measured (no broker, no
//! database): this favours the process model.
//!
//! Also printed per phase: the CPU time of the worker processes (or of the python3 children)
//! per execution, the transactions committed in the scratch database per execution
//! (`pg_stat_database.xact_commit`, read `--stats-wait` seconds after each end of the phase,
//! once the backends have reported their counters; read-only transactions count), and the
//! load average at the start of the phase.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit};
use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Row};
use tokio::sync::mpsc;

use attune_wasm::worker::attune_db;
use attune_wasm::worker::protocol::{self, Envelope, ExecutionRequested};

/// The workers' `security.encryption_key` (Attune's password), scratch only.
const PASSWORD: &str = "fleet-bench-password-of-32-bytes-or-more";
/// Values planted in `attune.key` (scratch only).
const API_KEY: &str = "fleet-bench-api-key-0123456789abcdef";
const DB_PASSWORD: &str = "fleet-bench-db-password-9876543210";
const REGION: &str = "fleet-bench-region-eu-west-1";
/// Attune's executor queues (`crates/common/src/mq/config.rs`), bound on `attune.executions`.
const STATUS_QUEUE: &str = "attune.execution.status.queue";
const COMPLETED_QUEUE: &str = "attune.execution.completed.queue";
/// Attune's executor consumers' prefetch.
const EXECUTOR_PREFETCH: u16 = 10;
/// A phase fails when no completion arrives for this long.
const STALL: Duration = Duration::from_secs(60);

/// The python action: what `examples/worker-action` does in mode `greet`, the way an Attune
/// python action gets its input (one JSON line on stdin, secrets merged into it).
const PYTHON_ACTION: &str = r#"import hashlib, json, sys
params = json.loads(sys.stdin.readline() or "{}")
def describe(name):
    value = params.get(name)
    if value is None:
        return {"error": "not-found"}
    return {"len": len(value), "sha256": hashlib.sha256(value.encode()).hexdigest()[:8]}
print(json.dumps({
    "greeting": "hello " + str(params.get("name", "world")),
    "secrets": {n: describe(n) for n in ("api_key", "db_password", "region")},
}))
"#;

#[derive(Parser, Debug)]
#[command(about = "Scale-out benchmark of attune-wasm worker processes (BENCHMARKS.md)")]
struct Args {
    /// Worker counts to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    workers: Vec<usize>,
    /// `worker.max_concurrent_tasks` of each worker.
    #[arg(long, default_value_t = 4)]
    slots: usize,
    /// Executions in flight in the saturated phase (default: workers × slots).
    #[arg(long)]
    window: Option<usize>,
    /// Executions counted in each saturated phase.
    #[arg(long, default_value_t = 3000)]
    executions: usize,
    /// Executions counted in each one-at-a-time phase.
    #[arg(long, default_value_t = 300)]
    sequential: usize,
    /// Executions before each worker count's phases, not counted.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// `python3` processes per python phase (0: no python phases).
    #[arg(long, default_value_t = 400)]
    python_executions: usize,
    /// The worker binary (default `$ATTUNE_WASM`, else target/release/attune-wasm).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// The action file (default the worker-action component).
    #[arg(long)]
    action: Option<PathBuf>,
    /// PostgreSQL URL of a database to connect to for CREATE/DROP DATABASE (default
    /// `$ATTUNE_TEST_POSTGRES_URL`, else postgres://postgres@127.0.0.1:5432/test).
    #[arg(long)]
    pg_admin: Option<String>,
    /// RabbitMQ URL without a vhost; a vhost of the bench's own is added with rabbitmqctl.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672")]
    amqp: String,
    /// `RUST_LOG` of the workers (unset: the worker's default, warn).
    #[arg(long)]
    log: Option<String>,
    /// `synchronous_commit` of the scratch database (diagnostic: `off` shows what the WAL
    /// flushes of each commit cost; Attune's database keeps PostgreSQL's default, `on`).
    #[arg(long)]
    synchronous_commit: Option<String>,
    /// Seconds to wait before reading `pg_stat_database` at each end of a wasm phase (a
    /// PostgreSQL 15 backend that went idle may hold its counters up to 10 s).
    #[arg(long, default_value_t = 11)]
    stats_wait: u64,
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Attune's blob format: `base64(nonce‖ciphertext‖tag)` of the JSON text of `value` under
/// `SHA-256(password)`, and its key hash `hex(SHA-256(password))`.
fn attune_blob(password: &str, value: &str) -> (String, String) {
    let key = Sha256::digest(password.as_bytes());
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key).expect("32-byte key");
    let id = uuid::Uuid::new_v4();
    let nonce = &id.as_bytes()[..12];
    let plaintext = serde_json::to_string(value).expect("a string serializes");
    let sealed = cipher
        .encrypt(aes_gcm::Nonce::from_slice(nonce), plaintext.as_bytes())
        .expect("encryption of a short value");
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&sealed);
    (
        base64::engine::general_purpose::STANDARD.encode(blob),
        hex::encode(key),
    )
}

fn rabbitmqctl(args: &[&str]) -> Result<()> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("run rabbitmqctl")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// CPU seconds (user + system) of process `pid`, or of its reaped children with `children`.
fn cpu_secs(pid: &str, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): state is field 3.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (a, b) = if children { (13, 14) } else { (11, 12) };
    let ticks: u64 = [a, b]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    ticks as f64 / 100.0
}

/// CPU seconds of `pids` together.
fn cpu_of(pids: &[String]) -> f64 {
    pids.iter().map(|p| cpu_secs(p, false)).sum()
}

/// Processes whose command name is `name` (`/proc/*/comm`).
fn pids_of(name: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid = e.ok()?.file_name().into_string().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim() == name).then_some(pid)
    })
    .collect()
}

/// Transactions committed in database `db` so far (`pg_stat_database.xact_commit`: every
/// transaction, read-only ones included, as the backends have reported them).
async fn xact_commits(pool: &PgPool, db: &str) -> Result<i64> {
    Ok(
        sqlx::query("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(db)
            .fetch_one(pool)
            .await?
            .get::<i64, _>("xact_commit"),
    )
}

/// The PostgreSQL backends connected to database `db` (PostgreSQL runs on this machine).
async fn backends(pool: &PgPool, db: &str) -> Result<Vec<String>> {
    Ok(
        sqlx::query("SELECT pid FROM pg_stat_activity WHERE datname = $1")
            .bind(db)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| r.get::<i32, _>("pid").to_string())
            .collect(),
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The scratch Attune: removed when dropped (workers stopped, database dropped, vhost deleted).
struct Scratch {
    admin_url: String,
    db: String,
    db_url: String,
    vhost: String,
    amqp_url: String,
    dir: tempfile::TempDir,
    workers: Vec<Child>,
    bin: PathBuf,
    log: Option<String>,
    slots: usize,
    action_id: i64,
}

impl Scratch {
    async fn create(args: &Args, bin: PathBuf, action: &Path) -> Result<Self> {
        let admin_url = args.pg_admin.clone().unwrap_or_else(|| {
            std::env::var("ATTUNE_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
        });
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("aw_fleetbench_{}", &id[..12]);
        let dir = tempfile::tempdir()?;
        let db_url = match admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => bail!("the PostgreSQL URL has no database"),
        };
        let mut scratch = Self {
            admin_url,
            db: String::new(),
            db_url,
            vhost: String::new(),
            amqp_url: format!("{}/{name}", args.amqp.trim_end_matches('/')),
            dir,
            workers: Vec::new(),
            bin,
            log: args.log.clone(),
            slots: args.slots,
            action_id: 0,
        };
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&scratch.admin_url)
            .await
            .context("connect to PostgreSQL")?;
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await?;
        scratch.db.clone_from(&name);
        if let Some(mode) = &args.synchronous_commit {
            if !["on", "off", "local", "remote_write", "remote_apply"].contains(&mode.as_str()) {
                bail!("--synchronous-commit: on, off, local, remote_write or remote_apply");
            }
            sqlx::raw_sql(&format!(
                "ALTER DATABASE {name} SET synchronous_commit = {mode}"
            ))
            .execute(&admin)
            .await?;
        }
        admin.close().await;
        rabbitmqctl(&["-q", "add_vhost", &name])?;
        scratch.vhost.clone_from(&name);
        rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            &name,
            "guest",
            ".*",
            ".*",
            ".*",
        ])?;

        let actions = scratch.dir.path().join("packs/bench/actions");
        std::fs::create_dir_all(&actions)?;
        std::fs::copy(action, actions.join("greet.wasm"))
            .with_context(|| format!("copy {}", action.display()))?;
        let pool = scratch.pool(2).await?;
        let schema = std::fs::read_to_string(workspace().join("tests/data/attune/schema.sql"))?;
        sqlx::raw_sql(&schema).execute(&pool).await?;
        let (blob, hash) = attune_blob(PASSWORD, API_KEY);
        sqlx::raw_sql(
            "INSERT INTO attune.pack (ref, label) VALUES ('bench', 'Fleet bench');
             INSERT INTO attune.runtime (ref, name) VALUES ('core.wasm', 'wasm');
             INSERT INTO attune.action (ref, pack, pack_ref, label, entrypoint, runtime)
               VALUES ('bench.greet', 1, 'bench', 'Greet', 'greet.wasm', 1);",
        )
        .execute(&pool)
        .await?;
        let insert = "INSERT INTO attune.key (local_ref, owner_type, owner_pack, name, encrypted,
                          encryption_key_hash, value)
                      VALUES ($1, $2::text::attune.owner_type_enum, $3, $1, $4, $5, $6::text::jsonb)";
        for (name, owner, pack, encrypted, hash, value) in [
            ("api_key", "system", None, true, Some(hash), json!(blob)),
            (
                "db_password",
                "pack",
                Some(1_i64),
                false,
                None,
                json!(DB_PASSWORD),
            ),
            ("region", "pack", Some(1), false, None, json!(REGION)),
        ] {
            sqlx::query(insert)
                .bind(name)
                .bind(owner)
                .bind(pack)
                .bind(encrypted)
                .bind(hash)
                .bind(value.to_string())
                .execute(&pool)
                .await?;
        }
        scratch.action_id = sqlx::query("SELECT id FROM attune.action WHERE ref = 'bench.greet'")
            .fetch_one(&pool)
            .await?
            .get("id");
        pool.close().await;
        Ok(scratch)
    }

    /// A pool with Attune's `search_path` (its triggers name tables unqualified).
    async fn pool(&self, n: u32) -> Result<PgPool> {
        attune_db::connect(&self.db_url, n)
            .await
            .context("connect to the scratch database")
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("worker-{i}.log"))
    }

    /// Starts `n` workers; their ids once each consumes its queue.
    async fn start_workers(
        &mut self,
        n: usize,
        pool: &PgPool,
        conn: &Connection,
    ) -> Result<Vec<i64>> {
        for i in 0..n {
            let log = File::create(self.log_path(i))?;
            let mut cmd = Command::new(&self.bin);
            cmd.env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("ATTUNE__DATA_DIR", self.dir.path().join("data"))
                .env("ATTUNE__DATABASE__URL", &self.db_url)
                .env("ATTUNE__MESSAGE_QUEUE__URL", &self.amqp_url)
                .env("ATTUNE__SECURITY__ENCRYPTION_KEY", PASSWORD)
                .env("ATTUNE__PACKS_BASE_DIR", self.dir.path().join("packs"))
                .env("ATTUNE__WORKER__NAME", format!("fleet-bench-{i}"))
                .env(
                    "ATTUNE__WORKER__MAX_CONCURRENT_TASKS",
                    self.slots.to_string(),
                )
                .arg("worker")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            if let Some(level) = &self.log {
                cmd.env("RUST_LOG", level);
            }
            self.workers.push(
                cmd.spawn()
                    .with_context(|| format!("start {}", self.bin.display()))?,
            );
        }
        let mut ids = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        for i in 0..n {
            let name = format!("fleet-bench-{i}");
            loop {
                if let Some(status) = self.workers[i].try_wait()? {
                    bail!("worker {i} exited ({status}): {}", self.worker_log(i));
                }
                let id: Option<i64> = sqlx::query(
                    "SELECT id FROM attune.worker WHERE name = $1 AND status = 'active'",
                )
                .bind(&name)
                .fetch_optional(pool)
                .await?
                .map(|r| r.get("id"));
                if let Some(id) = id {
                    // Known (a passive declaration) once the worker has declared it, consumed
                    // once it has a consumer; a failed passive declaration closes its channel.
                    let queue = protocol::executions_queue(id);
                    let probe = conn
                        .create_channel()
                        .await?
                        .queue_declare(
                            queue.as_str().into(),
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await;
                    if probe.is_ok_and(|q| q.consumer_count() > 0) {
                        ids.push(id);
                        break;
                    }
                }
                if Instant::now() > deadline {
                    bail!("worker {i} did not start consuming: {}", self.worker_log(i));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(ids)
    }

    fn worker_log(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn worker_pids(&self) -> Vec<String> {
        self.workers.iter().map(|c| c.id().to_string()).collect()
    }

    fn workers_cpu(&self) -> f64 {
        self.worker_pids().iter().map(|p| cpu_secs(p, false)).sum()
    }

    /// SIGTERM to every worker, then waits (30 s, then SIGKILL).
    fn stop_workers(&mut self) {
        for child in &self.workers {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        for child in &mut self.workers {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.workers.clear();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.stop_workers();
        if !self.db.is_empty() {
            let dropped = Command::new("psql")
                .args([
                    &self.admin_url,
                    "-q",
                    "-c",
                    &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db),
                ])
                .output();
            if !dropped.is_ok_and(|o| o.status.success()) {
                eprintln!("could not drop database {}: drop it by hand", self.db);
            }
        }
        if !self.vhost.is_empty() && rabbitmqctl(&["-q", "delete_vhost", &self.vhost]).is_err() {
            eprintln!("could not delete vhost {}: delete it by hand", self.vhost);
        }
    }
}

/// An `ExecutionCompleted` as the completion consumer received it.
struct Done {
    id: i64,
    /// The terminal status, or `None` for the `ExecutionStatusChanged` to `running`.
    status: Option<String>,
    at: Instant,
}

/// What a closed loop measured.
struct Measured {
    secs: f64,
    /// Dispatch published → `ExecutionCompleted` delivered (or the python3 process ended).
    latencies: Vec<Duration>,
    /// Dispatch published → `ExecutionStatusChanged` (running) delivered.
    to_running: Vec<Duration>,
    failed: usize,
}

/// One phase's figures.
struct Phase {
    label: String,
    workers: Option<usize>,
    window: usize,
    count: usize,
    run: Measured,
    /// CPU of the workers (or of the python3 processes).
    cpu_secs: f64,
    /// CPU of this process (the stand-in scheduler and executor consumers, or the spawning).
    own_cpu_secs: f64,
    /// CPU of the PostgreSQL backends serving the scratch database.
    pg_cpu_secs: f64,
    /// CPU of RabbitMQ (`beam.smp`: the whole broker, other users' traffic included).
    mq_cpu_secs: f64,
    /// Transactions committed in the scratch database during the phase (`None`: not measured).
    pg_commits: Option<i64>,
    load: String,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.count as f64 / self.run.secs
    }

    fn percentile(&self, p: f64) -> f64 {
        percentile(&self.run.latencies, p)
    }
}

/// The `p`-th percentile of `latencies` in ms (nearest rank).
fn percentile(latencies: &[Duration], p: f64) -> f64 {
    let mut v = latencies.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1].as_secs_f64() * 1e3
}

/// Declares Attune's executor queues and consumes them: status changes acknowledged and
/// dropped, completions sent to `done`.
async fn executor_consumers(conn: &Connection, done: mpsc::UnboundedSender<Done>) -> Result<()> {
    for (queue, key) in [
        (STATUS_QUEUE, protocol::STATUS_CHANGED_KEY),
        (COMPLETED_QUEUE, protocol::COMPLETED_KEY),
    ] {
        let channel = conn.create_channel().await?;
        let mut dlx = FieldTable::default();
        dlx.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(protocol::DEAD_LETTER_EXCHANGE.into()),
        );
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                dlx,
            )
            .await?;
        channel
            .queue_bind(
                queue.into(),
                protocol::EXECUTIONS_EXCHANGE.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        channel
            .basic_qos(EXECUTOR_PREFETCH, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                format!("fleet-bench-{queue}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let done = done.clone();
        tokio::spawn(async move {
            let _channel = channel;
            while let Some(Ok(delivery)) = consumer.next().await {
                let at = Instant::now();
                if let Ok(e) = serde_json::from_slice::<Envelope<Value>>(&delivery.data) {
                    let id = e.payload["execution_id"].as_i64().unwrap_or(-1);
                    if e.message_type == "ExecutionCompleted" {
                        let status = e.payload["status"].as_str().unwrap_or("?").to_owned();
                        let _ = done.send(Done {
                            id,
                            status: Some(status),
                            at,
                        });
                    } else if e.payload["new_status"] == "running" {
                        let _ = done.send(Done {
                            id,
                            status: None,
                            at,
                        });
                    }
                }
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
            }
        });
    }
    Ok(())
}

/// The stand-in scheduler: publishes dispatches.
struct Scheduler {
    channel: Channel,
    action_id: i64,
    nacked: Arc<AtomicU64>,
}

impl Scheduler {
    async fn publish(&self, id: i64, worker: i64, params: &Value) -> Result<Instant> {
        let envelope = Envelope::new(
            protocol::EXECUTION_REQUESTED,
            ExecutionRequested {
                execution_id: id,
                action_id: Some(self.action_id),
                action_ref: Some("bench.greet".to_owned()),
                parent_id: None,
                enforcement_id: None,
                config: Some(params.clone()),
            },
            None,
        );
        let body = serde_json::to_vec(&envelope)?;
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        let start = Instant::now();
        let confirm = self
            .channel
            .basic_publish(
                protocol::EXECUTIONS_EXCHANGE.into(),
                protocol::dispatch_key(worker).as_str().into(),
                BasicPublishOptions::default(),
                &body,
                properties,
            )
            .await?;
        let nacked = Arc::clone(&self.nacked);
        tokio::spawn(async move {
            if !confirm.await.is_ok_and(|c| c.is_ack()) {
                nacked.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(start)
    }
}

/// Inserts `count` scheduled executions, round robin over `workers`: (id, worker) in order.
async fn schedule(pool: &PgPool, workers: &[i64], count: usize) -> Result<Vec<(i64, i64)>> {
    let rows = sqlx::query(
        "INSERT INTO attune.execution (action, action_ref, config, status, worker)
         SELECT a.id, a.ref, jsonb_build_object('name', 'bench ' || n), 'scheduled',
                ($1::bigint[])[1 + (n % cardinality($1::bigint[]))]
         FROM generate_series(1, $2) AS n, attune.action a WHERE a.ref = 'bench.greet'
         ORDER BY n RETURNING id, worker",
    )
    .bind(workers)
    .bind(i64::try_from(count)?)
    .fetch_all(pool)
    .await?;
    let mut out: Vec<(i64, i64)> = rows
        .iter()
        .map(|r| (r.get("id"), r.get("worker")))
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// A closed loop: `window` executions in flight until `jobs` have completed.
async fn fleet_loop(
    scheduler: &Scheduler,
    done: &mut mpsc::UnboundedReceiver<Done>,
    jobs: &[(i64, i64)],
    window: usize,
    stop: &AtomicBool,
) -> Result<Measured> {
    let mut sent: HashMap<i64, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(jobs.len());
    let mut to_running = Vec::with_capacity(jobs.len());
    let mut failed = 0;
    let mut next = 0;
    let params = |id: i64| json!({ "name": format!("bench {id}") });
    let start = Instant::now();
    while next < jobs.len().min(window) {
        let (id, worker) = jobs[next];
        sent.insert(id, scheduler.publish(id, worker, &params(id)).await?);
        next += 1;
    }
    let mut last = Instant::now();
    while latencies.len() < jobs.len() {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        let Ok(message) = tokio::time::timeout(Duration::from_millis(200), done.recv()).await
        else {
            if last.elapsed() > STALL {
                bail!(
                    "no ExecutionCompleted for {STALL:?} ({} of {} done)",
                    latencies.len(),
                    jobs.len()
                );
            }
            continue;
        };
        let Some(message) = message else {
            bail!("the completion consumer stopped");
        };
        last = Instant::now();
        let Some(status) = message.status else {
            if let Some(t0) = sent.get(&message.id) {
                to_running.push(message.at - *t0);
            }
            continue;
        };
        let Some(t0) = sent.remove(&message.id) else {
            continue;
        };
        latencies.push(message.at - t0);
        if status != "completed" {
            failed += 1;
        }
        if next < jobs.len() {
            let (id, worker) = jobs[next];
            sent.insert(id, scheduler.publish(id, worker, &params(id)).await?);
            next += 1;
        }
    }
    Ok(Measured {
        secs: start.elapsed().as_secs_f64(),
        latencies,
        to_running,
        failed,
    })
}

/// One python3 process per execution, `window` at a time (one thread each); `count` of them.
/// Each spawn is what Attune's `process_executor` does: stdin, stdout and stderr piped, the
/// parameters line written, stdout and stderr read to the end, the exit status awaited.
fn python_loop(
    python: &Path,
    script: &Path,
    count: usize,
    window: usize,
    stop: &AtomicBool,
) -> Result<Measured> {
    let run_one = |i: usize| -> Result<(Duration, bool)> {
        let mut line = json!({
            "name": format!("bench {i}"),
            "api_key": API_KEY,
            "db_password": DB_PASSWORD,
            "region": REGION,
        })
        .to_string();
        line.push('\n');
        let start = Instant::now();
        let mut child = Command::new(python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(line.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        let ok = out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|v| v["secrets"]["region"]["len"] == json!(REGION.len()));
        Ok((start.elapsed(), ok))
    };
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let results: Vec<Result<(Duration, bool)>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..window.min(count))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count || stop.load(Ordering::Relaxed) {
                            return mine;
                        }
                        mine.push(run_one(i));
                    }
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_default())
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    let mut latencies = Vec::with_capacity(count);
    let mut failed = 0;
    for r in results {
        let (latency, ok) = r?;
        latencies.push(latency);
        failed += usize::from(!ok);
    }
    Ok(Measured {
        secs,
        latencies,
        to_running: Vec::new(),
        failed,
    })
}

/// The interpreter `python3` on PATH resolves to (past a pyenv shim or a wrapper script).
fn real_python() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .context("run python3")?;
    if !out.status.success() {
        bail!("python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn table(phases: &[Phase]) -> String {
    let mut out = String::from(
        "| model | workers | in flight | executions | exec/s | p50 ms | p99 ms | p50 to running ms | CPU ms/exec: workers or python3 | PostgreSQL | RabbitMQ | bench | PostgreSQL commits/exec | failed | load (1/5/15 min) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for p in phases {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
            p.label,
            p.workers.map_or_else(|| "—".to_owned(), |n| n.to_string()),
            p.window,
            p.count,
            p.rate(),
            p.percentile(50.0),
            p.percentile(99.0),
            if p.run.to_running.is_empty() {
                "—".to_owned()
            } else {
                format!("{:.2}", percentile(&p.run.to_running, 50.0))
            },
            p.cpu_secs * 1e3 / p.count as f64,
            p.pg_cpu_secs * 1e3 / p.count as f64,
            p.mq_cpu_secs * 1e3 / p.count as f64,
            p.own_cpu_secs * 1e3 / p.count as f64,
            p.pg_commits.map_or_else(
                || "—".to_owned(),
                |n| format!("{:.2}", n as f64 / p.count as f64)
            ),
            p.run.failed,
            p.load,
        );
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    let bin = args
        .bin
        .clone()
        .or_else(|| std::env::var_os("ATTUNE_WASM").map(PathBuf::from))
        .unwrap_or_else(|| workspace().join("target/release/attune-wasm"));
    if !bin.is_file() {
        bail!(
            "no worker binary at {}: cargo build --release -p attune-wasm --bin attune-wasm",
            bin.display()
        );
    }
    let action = args.action.clone().unwrap_or_else(|| {
        workspace().join("examples/target/wasm32-wasip2/release/worker-action.wasm")
    });
    if !action.is_file() {
        bail!(
            "no action at {}: scripts/build-examples.sh",
            action.display()
        );
    }
    let python = if args.python_executions > 0 {
        Some(real_python()?)
    } else {
        None
    };

    let mut scratch = Scratch::create(&args, bin, &action).await?;
    let script = scratch.dir.path().join("action.py");
    std::fs::write(&script, PYTHON_ACTION)?;
    let pool = scratch.pool(4).await?;
    let conn = Connection::connect(&scratch.amqp_url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    protocol::declare_common(&channel).await?;
    let (done_tx, mut done) = mpsc::unbounded_channel();
    executor_consumers(&conn, done_tx).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let scheduler = Scheduler {
        channel,
        action_id: scratch.action_id,
        nacked: Arc::new(AtomicU64::new(0)),
    };
    eprintln!(
        "scratch database {}, vhost {}, worker {}, action {}, python {}",
        scratch.db,
        scratch.vhost,
        scratch.bin.display(),
        action.display(),
        python
            .as_ref()
            .map_or_else(|| "(none)".to_owned(), |p| p.display().to_string())
    );

    let rabbitmq = pids_of("beam.smp");
    let mut phases = Vec::new();
    let mut windows = Vec::new();
    for &n in &args.workers {
        let probe_conn =
            Connection::connect(&scratch.amqp_url, ConnectionProperties::default()).await?;
        let ids = scratch.start_workers(n, &pool, &probe_conn).await?;
        let _ = probe_conn.close(200, "probed".into()).await;
        let window = args.window.unwrap_or(n * args.slots);
        windows.push(window);
        let warm = schedule(&pool, &ids, args.warmup).await?;
        fleet_loop(&scheduler, &mut done, &warm, window, &stop).await?;
        for (label, window, count) in [
            ("wasm worker, saturated", window, args.executions),
            ("wasm worker, one at a time", 1, args.sequential),
        ] {
            if count == 0 {
                continue;
            }
            let jobs = schedule(&pool, &ids, count).await?;
            let pg = backends(&pool, &scratch.db).await?;
            let stats_wait = Duration::from_secs(args.stats_wait);
            tokio::time::sleep(stats_wait).await;
            let commits = xact_commits(&pool, &scratch.db).await?;
            let load = loadavg();
            let (cpu, own, pg0, mq0) = (
                scratch.workers_cpu(),
                cpu_secs("self", false),
                cpu_of(&pg),
                cpu_of(&rabbitmq),
            );
            let run = fleet_loop(&scheduler, &mut done, &jobs, window, &stop).await?;
            let cpu_after = (
                scratch.workers_cpu(),
                cpu_secs("self", false),
                cpu_of(&pg),
                cpu_of(&rabbitmq),
            );
            tokio::time::sleep(stats_wait).await;
            // Minus this read's own transaction.
            let pg_commits = xact_commits(&pool, &scratch.db).await? - commits - 1;
            let phase = Phase {
                label: label.to_owned(),
                workers: Some(n),
                window,
                count,
                run,
                cpu_secs: cpu_after.0 - cpu,
                own_cpu_secs: cpu_after.1 - own,
                pg_cpu_secs: cpu_after.2 - pg0,
                mq_cpu_secs: cpu_after.3 - mq0,
                pg_commits: Some(pg_commits),
                load,
            };
            eprintln!(
                "{}",
                table(std::slice::from_ref(&phase))
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            phases.push(phase);
        }
        scratch.stop_workers();
    }
    if let Some(python) = &python {
        windows.push(1);
        windows.sort_unstable();
        windows.dedup();
        for &window in &windows {
            let load = loadavg();
            let cpu = cpu_secs("self", true);
            let own = cpu_secs("self", false);
            let (python, script, stop) = (python.clone(), script.clone(), Arc::clone(&stop));
            let count = args.python_executions;
            let run = tokio::task::spawn_blocking(move || {
                python_loop(&python, &script, count, window, &stop)
            })
            .await??;
            let phase = Phase {
                label: "python3 per execution".to_owned(),
                workers: None,
                window,
                count: args.python_executions,
                run,
                cpu_secs: cpu_secs("self", true) - cpu,
                own_cpu_secs: cpu_secs("self", false) - own,
                pg_cpu_secs: 0.0,
                mq_cpu_secs: 0.0,
                pg_commits: None,
                load,
            };
            eprintln!(
                "{}",
                table(std::slice::from_ref(&phase))
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            phases.push(phase);
        }
    }
    let nacked = scheduler.nacked.load(Ordering::Relaxed);
    let _ = conn.close(200, "done".into()).await;
    pool.close().await;
    drop(scratch);

    println!("{}", table(&phases));
    // Ratios at equal concurrency: wasm saturated vs python at the same window.
    for p in phases.iter().filter(|p| p.workers.is_some()) {
        if let Some(py) = phases
            .iter()
            .find(|q| q.workers.is_none() && q.window == p.window)
        {
            println!(
                "{} worker(s), {} in flight: {:.1} × python3's executions/s, p50 {:.1} × lower",
                p.workers.unwrap_or(0),
                p.window,
                p.rate() / py.rate(),
                py.percentile(50.0) / p.percentile(50.0)
            );
        }
    }
    if nacked > 0 {
        bail!("{nacked} dispatches were not confirmed by the broker");
    }
    if phases.iter().any(|p| p.run.failed > 0) {
        bail!("some executions did not complete (column failed)");
    }
    Ok(())
}
