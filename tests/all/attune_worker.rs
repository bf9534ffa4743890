//! `attune-wasm worker` (issue 12) against real services: a scratch PostgreSQL database with
//! Attune's schema (`tests/data/attune/schema.sql`) and a RabbitMQ vhost of its own per test,
//! real worker processes, real wasm actions built from `examples/worker-action` (component and
//! core module), secrets inserted into `attune.key` by SQL in both ciphertext generations, and
//! executions dispatched by `attune-wasm execute` (or by hand, for malformed dispatches).
//!
//! `ATTUNE_TEST_POSTGRES=skip` or `ATTUNE_TEST_RABBITMQ=skip` skips these tests.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit};
use base64::Engine as _;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use secrecy::SecretString;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{Connection as _, Executor as _, Row};

use crate::support::{self, text, Target, KEY};

/// Plaintexts planted in `attune.key`; none may appear in a row, a message or a log.
const API_KEY: &str = "sk-live-attune-blob-0123456789abcdef";
const DB_PASSWORD: &str = "pg-password-plain-9876543210zyx";
const PACK_REGION: &str = "region-of-the-pack-eu-west-1";
const ACTION_REGION: &str = "region-of-the-action-us-east-2";
const IDENTITY_TOKEN: &str = "identity-token-never-for-actions-42";

fn admin_url() -> String {
    std::env::var("ATTUNE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn skipped() -> bool {
    let skip = |v: &str| std::env::var(v).as_deref() == Ok("skip");
    if skip("ATTUNE_TEST_POSTGRES") || skip("ATTUNE_TEST_RABBITMQ") {
        eprintln!("skipped: needs PostgreSQL and RabbitMQ");
        return true;
    }
    false
}

fn rabbitmqctl(args: &[&str]) {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("run rabbitmqctl (is RabbitMQ installed? .ci/run starts it)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        text(&out.stderr)
    );
}

/// The SHA-256 prefix the action reports for a value.
fn sha8(value: &str) -> String {
    Sha256::digest(value.as_bytes())
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Attune's blob format: `base64(nonce‖ciphertext‖tag)` of the JSON text of `value`, under
/// `SHA-256(password)`; its key hash `hex(SHA-256(password))`.
fn attune_blob(password: &str, value: &str) -> (String, String) {
    let key = Sha256::digest(password.as_bytes());
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key).unwrap();
    let id = uuid::Uuid::new_v4();
    let nonce = &id.as_bytes()[..12];
    let plaintext = serde_json::to_string(value).unwrap();
    let sealed = cipher
        .encrypt(aes_gcm::Nonce::from_slice(nonce), plaintext.as_bytes())
        .unwrap();
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&sealed);
    (
        base64::engine::general_purpose::STANDARD.encode(blob),
        hex::encode(key),
    )
}

/// A scratch Attune: its own database and vhost, a packs directory, worker processes.
struct Fleet {
    db: String,
    db_url: String,
    vhost: String,
    amqp_url: String,
    dir: tempfile::TempDir,
    workers: Vec<Child>,
    /// One channel for the messages the test publishes (opened on first use, and again
    /// after the broker closed it).
    publisher: tokio::sync::Mutex<Option<lapin::Channel>>,
}

impl Fleet {
    async fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db = format!("aw_{id}");
        let mut admin = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
        admin
            .execute(format!("CREATE DATABASE {db}").as_str())
            .await
            .unwrap();
        let db_url = match admin_url().rsplit_once('/') {
            Some((base, _)) => format!("{base}/{db}"),
            None => panic!("bad ATTUNE_TEST_POSTGRES_URL"),
        };
        let schema = std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/attune/schema.sql"),
        )
        .unwrap();
        let mut conn = sqlx::PgConnection::connect(&db_url).await.unwrap();
        sqlx::raw_sql(&schema).execute(&mut conn).await.unwrap();

        let vhost = format!("aw_{id}");
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let amqp_url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");

        // The example pack: the action as a component and as a core module, a missing file and
        // a file that is not wasm.
        let dir = tempfile::tempdir().unwrap();
        let actions = dir.path().join("packs/demo/actions");
        std::fs::create_dir_all(&actions).unwrap();
        std::fs::copy(
            support::wasm("worker-action", Target::P2),
            actions.join("greet.wasm"),
        )
        .unwrap();
        std::fs::copy(
            support::wasm("worker-action", Target::P1),
            actions.join("greet-classic.wasm"),
        )
        .unwrap();
        std::fs::write(actions.join("notwasm.wasm"), "#!/bin/sh\necho not wasm\n").unwrap();
        sqlx::raw_sql(
            "SET search_path TO attune;
             INSERT INTO pack (ref, label) VALUES ('demo', 'Demo'), ('other', 'Other');
             INSERT INTO runtime (ref, name) VALUES ('core.wasm', 'wasm');
             INSERT INTO action (ref, pack, pack_ref, label, entrypoint, runtime, timeout_seconds) VALUES
               ('demo.greet', 1, 'demo', 'Greet', 'greet.wasm', 1, NULL),
               ('demo.classic', 1, 'demo', 'Greet (core module)', 'greet-classic.wasm', 1, NULL),
               ('demo.slow', 1, 'demo', 'Slow', 'greet.wasm', 1, 1),
               ('demo.missing', 1, 'demo', 'Missing', 'missing.wasm', 1, NULL),
               ('demo.notwasm', 1, 'demo', 'Not wasm', 'notwasm.wasm', 1, NULL),
               ('demo.escape', 1, 'demo', 'Escape', '../../../etc/passwd', 1, NULL),
               ('other.greet', 2, 'other', 'Greet', 'greet.wasm', 1, NULL);",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        Self::plant_secrets(&mut conn).await;
        Self {
            db,
            db_url,
            vhost,
            amqp_url,
            dir,
            workers: Vec::new(),
            publisher: tokio::sync::Mutex::new(None),
        }
    }

    /// Secrets as Attune's API stores them: system `api_key` (blob format, Attune's key hash),
    /// pack `db_password` (plain JSON string) and `region`, `region` overridden for
    /// `demo.greet` (seed format), a system JSON object `settings`, an identity key and a key
    /// of another pack.
    async fn plant_secrets(conn: &mut sqlx::PgConnection) {
        let (blob, blob_hash) = attune_blob(KEY, API_KEY);
        let key = support::key(KEY);
        let seed = key.encrypt_seed(&SecretString::from(ACTION_REGION));
        let insert = "INSERT INTO attune.key (local_ref, owner_type, owner, owner_identity, owner_pack,
                          owner_action, name, encrypted, encryption_key_hash, value)
                      VALUES ($1, $2::text::attune.owner_type_enum, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb)";
        // (name, owner type, (owner, owner_identity) of an identity key, owner_pack,
        // owner_action, (encryption_key_hash when encrypted), value as JSON text)
        let plain = |v: Value| (false, None, v.to_string());
        let rows = [
            (
                "api_key",
                "system",
                None,
                None,
                None,
                (true, Some(blob_hash), json!(blob).to_string()),
            ),
            (
                "settings",
                "system",
                None,
                None,
                None,
                plain(json!({"tier": "gold", "n": 3})),
            ),
            (
                "db_password",
                "pack",
                None,
                Some(1_i64),
                None,
                plain(json!(DB_PASSWORD)),
            ),
            (
                "region",
                "pack",
                None,
                Some(1),
                None,
                plain(json!(PACK_REGION)),
            ),
            (
                "region",
                "action",
                None,
                None,
                Some(1_i64),
                (
                    true,
                    Some(key.key_hash().to_owned()),
                    json!(seed).to_string(),
                ),
            ),
            (
                "identity_token",
                "identity",
                Some(("alice", 7_i64)),
                None,
                None,
                plain(json!(IDENTITY_TOKEN)),
            ),
            (
                "other_token",
                "pack",
                None,
                Some(2),
                None,
                plain(json!("other-pack-secret-value-000")),
            ),
        ];
        for (name, owner_type, identity, pack, action, (encrypted, hash, value)) in rows {
            sqlx::query(insert)
                .bind(name)
                .bind(owner_type)
                .bind(identity.map(|(login, _)| login))
                .bind(identity.map(|(_, id)| id))
                .bind(pack)
                .bind(action)
                .bind(name)
                .bind(encrypted)
                .bind(hash)
                .bind(value)
                .execute(&mut *conn)
                .await
                .unwrap();
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_attune-wasm"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("ATTUNE__DATA_DIR", self.dir.path().join("data"))
            .env("ATTUNE__DATABASE__URL", &self.db_url)
            .env("ATTUNE__MESSAGE_QUEUE__URL", &self.amqp_url)
            .env("ATTUNE__SECURITY__ENCRYPTION_KEY", KEY)
            .env("ATTUNE__PACKS_BASE_DIR", self.dir.path().join("packs"))
            .env("ATTUNE__WORKER__HEARTBEAT_INTERVAL", "1")
            .env("ATTUNE__WORKER__MAX_CONCURRENT_TASKS", "4")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null());
        c
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("worker-{i}.log"))
    }

    /// Starts a worker named `name`; returns its index once it is registered and consuming.
    async fn start_worker(&mut self, name: &str) -> usize {
        let i = self.workers.len();
        let log = File::create(self.log_path(i)).unwrap();
        let child = self
            .cmd()
            .arg("worker")
            .env("ATTUNE__WORKER__NAME", name)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.workers.push(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log(i).contains("consuming dispatches") {
            assert!(
                Instant::now() < deadline,
                "worker {name} did not start: {}",
                self.log(i)
            );
            if let Ok(Some(status)) = self.workers[i].try_wait() {
                panic!("worker {name} exited with {status}: {}", self.log(i));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        i
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// `attune-wasm execute --action ACTION --params PARAMS --wait`: its JSON line and status.
    async fn execute(&self, action: &str, params: Value) -> (Value, Option<i32>) {
        let mut c = self.cmd();
        c.args(["execute", "--action", action, "--params"])
            .arg(params.to_string())
            .args(["--wait", "--wait-timeout", "60"]);
        let out = tokio::task::spawn_blocking(move || support::run_cmd(&mut c, None))
            .await
            .unwrap();
        support::assert_no_panic(&out);
        let line = text(&out.stdout);
        let report = serde_json::from_str(line.trim())
            .unwrap_or_else(|_| panic!("execute printed no JSON: {line} / {}", text(&out.stderr)));
        (report, out.status.code())
    }

    async fn pool(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.db_url)
            .await
            .unwrap()
    }

    async fn amqp(&self) -> lapin::Channel {
        let conn = Connection::connect(&self.amqp_url, ConnectionProperties::default())
            .await
            .unwrap();
        conn.create_channel().await.unwrap()
    }

    /// A queue that sees every status change and completion (declared before workers start).
    async fn observe(&self) -> lapin::Channel {
        let channel = self.amqp().await;
        attune_wasm::worker::protocol::declare_common(&channel)
            .await
            .unwrap();
        channel
            .queue_declare(
                "observer".into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        for key in ["execution.completed", "execution.status.changed"] {
            channel
                .queue_bind(
                    "observer".into(),
                    "attune.executions".into(),
                    key.into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .unwrap();
        }
        channel
    }

    /// Every message waiting in `queue`, acknowledged.
    async fn drain(channel: &lapin::Channel, queue: &str) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(
                serde_json::from_slice(&message.delivery.data)
                    .unwrap_or_else(|_| json!({"raw": text(&message.delivery.data)})),
            );
        }
        out
    }

    async fn publish_raw(&self, routing_key: &str, body: &[u8]) {
        let mut publisher = self.publisher.lock().await;
        if !publisher.as_ref().is_some_and(|c| c.status().connected()) {
            *publisher = Some(self.amqp().await);
        }
        let channel = publisher.as_ref().unwrap();
        channel
            .basic_publish(
                "attune.executions".into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// SIGTERM to worker `i`; its exit status.
    fn stop_worker(&mut self, i: usize) -> std::process::ExitStatus {
        let pid = self.workers[i].id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.workers[i].try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "worker did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asserts that no planted plaintext is in any execution row, worker log or `messages`.
    async fn assert_no_plaintext(&self, messages: &[Value]) {
        let pool = self.pool().await;
        let rows: Vec<String> =
            sqlx::query("SELECT row_to_json(e)::text AS r FROM attune.execution e")
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.get("r"))
                .collect();
        let logs: Vec<String> = (0..self.workers.len()).map(|i| self.log(i)).collect();
        let messages: Vec<String> = messages.iter().map(Value::to_string).collect();
        for secret in [
            API_KEY,
            DB_PASSWORD,
            PACK_REGION,
            ACTION_REGION,
            IDENTITY_TOKEN,
        ] {
            for (what, texts) in [("row", &rows), ("log", &logs), ("message", &messages)] {
                for t in texts {
                    assert!(!t.contains(secret), "plaintext in a {what}: {t}");
                }
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.workers {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("psql")
            .args([
                &admin_url(),
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db),
            ])
            .output();
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.vhost])
            .output();
    }
}

fn result(report: &Value) -> &Value {
    &report["result"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_runs_attune_executions_with_attune_secrets_end_to_end() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let observer = fleet.observe().await;
    let w = fleet.start_worker("wasm-worker-a").await;
    let pool = fleet.pool().await;
    let row = sqlx::query(
        "SELECT id, status::text AS status, worker_role::text AS role, capabilities::text AS caps
         FROM attune.worker WHERE name = 'wasm-worker-a'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("status"), "active");
    assert_eq!(row.get::<String, _>("role"), "action");
    let caps: Value = serde_json::from_str(&row.get::<String, _>("caps")).unwrap();
    assert_eq!(caps["runtimes"], json!(["wasm"]));

    // Component and core module: parameters in, result out, every owner type resolved.
    for action in ["demo.greet", "demo.classic"] {
        let (report, code) = fleet
            .execute(
                action,
                json!({"name": "ops", "secrets": ["api_key", "db_password", "region", "settings", "identity_token", "other_token"]}),
            )
            .await;
        assert_eq!(report["status"], "completed", "{action}: {report}");
        assert_eq!(code, Some(0));
        let r = result(&report);
        assert_eq!(r["succeeded"], true);
        assert_eq!(r["exit_code"], 0);
        assert_eq!(r["timed_out"], false);
        assert_eq!(r["stdout_truncated"], false);
        assert!(r["duration_ms"].is_u64());
        let data = &r["data"];
        assert_eq!(data["greeting"], "hello ops");
        assert_eq!(data["action"], action);
        let secrets = &data["secrets"];
        assert_eq!(
            secrets["api_key"]["sha256"],
            sha8(API_KEY),
            "{action}: blob-format key"
        );
        assert_eq!(secrets["db_password"]["sha256"], sha8(DB_PASSWORD));
        let settings = json!({"tier": "gold", "n": 3}).to_string();
        assert_eq!(
            secrets["settings"]["sha256"],
            sha8(&settings),
            "JSON as compact text"
        );
        assert!(
            secrets["identity_token"].get("error").is_some(),
            "{secrets}"
        );
        assert!(secrets["other_token"].get("error").is_some(), "{secrets}");
        // The action-level override of the pack's `region` holds only for demo.greet.
        let region = if action == "demo.greet" {
            ACTION_REGION
        } else {
            PACK_REGION
        };
        assert_eq!(secrets["region"]["sha256"], sha8(region), "{action}");
    }

    // A secret printed by the action is masked in the stored stdout.
    let (report, _) = fleet
        .execute("demo.greet", json!({"mode": "show", "secret": "api_key"}))
        .await;
    assert_eq!(report["status"], "completed", "{report}");
    let stdout = result(&report)["stdout"].as_str().unwrap();
    assert!(stdout.contains("the secret is "), "{stdout}");
    assert!(!stdout.contains(API_KEY), "{stdout}");
    assert_eq!(result(&report)["data"], json!({"shown": "api_key"}));

    // A failing action: Attune's error text from stderr, the module's own exit status (a
    // component's failure is status 1: WASI p2 has no exit codes).
    let (report, code) = fleet
        .execute(
            "demo.classic",
            json!({"mode": "fail", "message": "no such target", "code": 4}),
        )
        .await;
    assert_eq!(report["status"], "failed");
    assert_eq!(code, Some(1));
    assert_eq!(result(&report)["exit_code"], 4);
    assert_eq!(result(&report)["error"], "no such target");

    // Every execution: running, then one completion, published.
    let messages = Fleet::drain(&observer, "observer").await;
    let count = |kind: &str| {
        messages
            .iter()
            .filter(|m| m["message_type"] == kind)
            .count()
    };
    assert_eq!(count("ExecutionStatusChanged"), 4, "{messages:?}");
    assert_eq!(count("ExecutionCompleted"), 4, "{messages:?}");
    for m in &messages {
        if m["message_type"] == "ExecutionCompleted" {
            assert!(m["payload"]["action_id"].as_i64().unwrap() > 0);
            assert!(m["payload"]["result"].is_object());
        } else {
            assert_eq!(m["payload"]["new_status"], "running");
            assert_eq!(m["payload"]["previous_status"], "scheduled");
        }
    }
    let running: i64 =
        sqlx::query("SELECT count(*) AS n FROM attune.execution WHERE status = 'running'")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("n");
    assert_eq!(running, 0);
    // Our own tables are in attune_wasm, none was added to Attune's schema.
    let ours: Vec<String> = sqlx::query(
        "SELECT table_schema || '.' || table_name AS t FROM information_schema.tables
         WHERE table_schema IN ('attune', 'attune_wasm') ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("t"))
    .collect();
    for t in &ours {
        assert!(
            t.starts_with("attune_wasm.")
                || [
                    "attune.action",
                    "attune.execution",
                    "attune.key",
                    "attune.pack",
                    "attune.runtime",
                    "attune.worker"
                ]
                .contains(&t.as_str()),
            "unexpected table {t}"
        );
    }

    // The audit trail (schema attune_wasm) names Attune's execution ids, never a value.
    let audited: Vec<String> = sqlx::query(
        "SELECT DISTINCT execution_id FROM attune_wasm.audit WHERE secret_ref = 'api_key'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("execution_id"))
    .collect();
    let first: i64 = sqlx::query("SELECT min(id) AS id FROM attune.execution")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("id");
    assert!(audited.contains(&first.to_string()), "{audited:?}");

    // The secrets came with the claim statement, never from the executor's own read (its
    // fallback, which would log this).
    assert!(
        !fleet.log(w).contains("read with the claim do not parse"),
        "{}",
        fleet.log(w)
    );

    // SIGTERM: exit 0, marked inactive.
    let status = fleet.stop_worker(w);
    assert!(status.success(), "{status}: {}", fleet.log(w));
    let status: String =
        sqlx::query("SELECT status::text AS s FROM attune.worker WHERE name = 'wasm-worker-a'")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("s");
    assert_eq!(status, "inactive");
    fleet.assert_no_plaintext(&messages).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_times_out_per_the_action_and_fails_bad_dispatches_then_keeps_serving() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let w = fleet.start_worker("wasm-worker-b").await;

    // The action's timeout (1 s) stops a guest that never ends.
    let started = Instant::now();
    let (report, code) = fleet.execute("demo.slow", json!({"mode": "spin"})).await;
    assert_eq!(report["status"], "timeout", "{report}");
    assert_eq!(code, Some(1));
    assert_eq!(result(&report)["timed_out"], true);
    assert!(started.elapsed() < Duration::from_secs(60));

    // The execution's own timeout wins over the action's (none: the default, 600 s).
    let pool = fleet.pool().await;
    let worker_id = fleet.worker_id(&pool, "wasm-worker-b").await;
    let id = fleet
        .dispatch_new(&pool, worker_id, "demo.greet", &json!({"mode": "spin"}), 1)
        .await;
    let key = attune_wasm::worker::protocol::dispatch_key(worker_id);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: String =
            sqlx::query("SELECT status::text AS s FROM attune.execution WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get("s");
        if status == "timeout" {
            break;
        }
        assert!(Instant::now() < deadline, "status {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Missing file, non-wasm file, an entrypoint leaving the pack: failed with the reason.
    for (action, why) in [
        ("demo.missing", "cannot read action file"),
        ("demo.notwasm", "is not a WebAssembly binary"),
        (
            "demo.escape",
            "is not a path inside the pack's actions directory",
        ),
    ] {
        let (report, _) = fleet.execute(action, json!({})).await;
        assert_eq!(report["status"], "failed", "{action}: {report}");
        let error = result(&report)["error"].as_str().unwrap();
        assert!(error.contains(why), "{action}: {error}");
    }

    // Not JSON, another message type, an unknown execution: dead-lettered to attune.dlx.
    fleet.publish_raw(&key, b"{not json").await;
    fleet
        .publish_raw(&key, br#"{"message_type":"RuleCreated","payload":{}}"#)
        .await;
    fleet
        .publish_raw(
            &key,
            br#"{"message_type":"ExecutionRequested","payload":{"execution_id":987654}}"#,
        )
        .await;
    let channel = fleet.amqp().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut dead = Vec::new();
    while dead.len() < 3 {
        dead.extend(Fleet::drain(&channel, "attune.dlx.queue").await);
        assert!(Instant::now() < deadline, "dead letters: {dead:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // And the worker still serves.
    let (report, _) = fleet.execute("demo.greet", json!({"name": "again"})).await;
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(result(&report)["data"]["greeting"], "hello again");
    assert!(fleet.workers[w].try_wait().unwrap().is_none());
    fleet.assert_no_plaintext(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_dispatches_never_run_an_execution_twice() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let observer = fleet.observe().await;
    let w = fleet.start_worker("wasm-worker-c").await;
    let pool = fleet.pool().await;
    let (report, _) = fleet.execute("demo.greet", json!({"name": "once"})).await;
    assert_eq!(report["status"], "completed");
    let id = report["execution_id"].as_i64().unwrap();
    let before: String =
        sqlx::query("SELECT updated::text AS u FROM attune.execution WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("u");
    assert_eq!(Fleet::drain(&observer, "observer").await.len(), 2);

    // An execution left `running` by a worker that died: ended failed, not run.
    let orphan: i64 = sqlx::query(
        "INSERT INTO attune.execution (action, action_ref, config, status, started_at)
         VALUES (1, 'demo.greet', '{}', 'running', now()) RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get("id");
    let worker_id = fleet.worker_id(&pool, "wasm-worker-c").await;
    let key = attune_wasm::worker::protocol::dispatch_key(worker_id);
    for execution in [id, orphan] {
        let dispatch = json!({
            "message_id": uuid::Uuid::new_v4().to_string(),
            "message_type": "ExecutionRequested",
            "version": "1.0",
            "timestamp": "2026-01-01T00:00:00Z",
            "headers": {"retry_count": 1},
            "payload": {"execution_id": execution, "action_ref": "demo.greet", "config": {}},
        });
        fleet
            .publish_raw(&key, dispatch.to_string().as_bytes())
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: String =
            sqlx::query("SELECT status::text AS s FROM attune.execution WHERE id = $1")
                .bind(orphan)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get("s");
        if status != "running" {
            assert_eq!(status, "failed");
            break;
        }
        assert!(Instant::now() < deadline, "the orphan stayed running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let error: String =
        sqlx::query("SELECT result->>'error' AS e FROM attune.execution WHERE id = $1")
            .bind(orphan)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("e");
    assert!(error.contains("stopped before it ended"), "{error}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The terminal one: acknowledged and skipped, its row untouched, no second completion.
    let after: String =
        sqlx::query("SELECT updated::text AS u FROM attune.execution WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("u");
    assert_eq!(before, after);
    let messages = Fleet::drain(&observer, "observer").await;
    let completed: Vec<i64> = messages
        .iter()
        .filter(|m| m["message_type"] == "ExecutionCompleted")
        .map(|m| m["payload"]["execution_id"].as_i64().unwrap())
        .collect();
    assert_eq!(completed, vec![orphan], "{messages:?}");
    assert!(fleet.log(w).contains("already ended"), "{}", fleet.log(w));
    // Nothing left unacknowledged in the worker's queue.
    let channel = fleet.amqp().await;
    let queue = channel
        .queue_declare(
            attune_wasm::worker::protocol::executions_queue(worker_id)
                .as_str()
                .into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.message_count(), 0);
    fleet.assert_no_plaintext(&messages).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_load_and_survive_a_broker_disconnect() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let a = fleet.start_worker("wasm-worker-a").await;
    let b = fleet.start_worker("wasm-worker-b").await;
    let mut served = std::collections::BTreeSet::new();
    for i in 0..4 {
        let (report, _) = fleet.execute("demo.greet", json!({"name": i})).await;
        assert_eq!(report["status"], "completed", "{report}");
        served.insert(report["worker"].as_str().unwrap().to_owned());
    }
    assert_eq!(served.len(), 2, "round robin: {served:?}");

    // The broker drops every connection of the vhost: both workers reconnect and go on.
    rabbitmqctl(&[
        "close_all_connections",
        "-p",
        &fleet.vhost,
        "test: broker restart",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    for w in [a, b] {
        while fleet.log(w).matches("consuming dispatches").count() < 2 {
            assert!(
                Instant::now() < deadline,
                "no reconnection: {}",
                fleet.log(w)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for i in 0..4 {
        let (report, _) = fleet.execute("demo.classic", json!({"name": i})).await;
        assert_eq!(report["status"], "completed", "{report}");
    }
    for w in [a, b] {
        assert!(fleet.workers[w].try_wait().unwrap().is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_execution_end_then_marks_the_worker_inactive() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let w = fleet.start_worker("wasm-worker-d").await;
    let pool = fleet.pool().await;
    let mut c = fleet.cmd();
    c.args([
        "execute",
        "--action",
        "demo.slow",
        "--params",
        r#"{"mode":"spin"}"#,
    ]);
    let out = tokio::task::spawn_blocking(move || support::run_cmd(&mut c, None))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running: i64 =
            sqlx::query("SELECT count(*) AS n FROM attune.execution WHERE status = 'running'")
                .fetch_one(&pool)
                .await
                .unwrap()
                .get("n");
        if running == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGTERM mid-run: the execution still ends (its 1 s timeout) and is reported.
    let status = fleet.stop_worker(w);
    assert!(status.success(), "{status}: {}", fleet.log(w));
    let row = sqlx::query(
        "SELECT e.status::text AS e, w.status::text AS w FROM attune.execution e, attune.worker w
         WHERE w.name = 'wasm-worker-d'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("e"), "timeout");
    assert_eq!(row.get::<String, _>("w"), "inactive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_queue_declared_with_other_arguments_is_one_clear_error() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    // The first worker of a fresh database gets id 1; its queue already exists, without TTL.
    let channel = fleet.amqp().await;
    channel
        .queue_declare(
            "worker.1.executions".into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let log = File::create(fleet.log_path(0)).unwrap();
    let child = fleet
        .cmd()
        .arg("worker")
        .env("ATTUNE__WORKER__NAME", "wasm-worker-k4")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    fleet.workers.push(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = fleet.workers[0].try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running: {}", fleet.log(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(1));
    let log = fleet.log(0);
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{log}");
    assert!(
        errors[0].contains("cannot declare queue worker.1.executions")
            && errors[0].contains("x-message-ttl=300000")
            && errors[0].contains("PRECONDITION_FAILED"),
        "{log}"
    );
    assert!(!log.contains("retrying"), "{log}");
    // The worker row does not stay active.
    let pool = fleet.pool().await;
    let status: String =
        sqlx::query("SELECT status::text AS s FROM attune.worker WHERE name = 'wasm-worker-k4'")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("s");
    assert_eq!(status, "inactive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_go_on_while_cpu_bound_guests_fill_every_slot() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    fleet.start_worker("wasm-worker-e").await;
    let pool = fleet.pool().await;
    let worker_id = fleet.worker_id(&pool, "wasm-worker-e").await;
    // Four spinning guests (every slot, more than this machine's cores) for 8 s each.
    for _ in 0..4 {
        fleet
            .dispatch_new(&pool, worker_id, "demo.greet", &json!({"mode": "spin"}), 8)
            .await;
    }
    let count = |status: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query("SELECT count(*) AS n FROM attune.execution WHERE status::text = $1")
                .bind(status)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get::<i64, _>("n")
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while count("running").await < 4 {
        assert!(Instant::now() < deadline, "the four did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // While all four spin, the heartbeat (every second) stays fresh on the database's clock
    // (starved, it would age to the guests' 8 s; the margin is for a loaded machine).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let age: f64 = sqlx::query(
            "SELECT extract(epoch FROM now() - last_heartbeat)::float8 AS age
             FROM attune.worker WHERE id = $1",
        )
        .bind(worker_id)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("age");
        assert!(age < 4.0, "heartbeat {age} s old while the guests run");
        assert!(
            count("running").await > 0,
            "the guests ended too soon for this test"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while count("timeout").await < 4 {
        if Instant::now() >= deadline {
            let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as(
                "SELECT id, status::text, result::text FROM attune.execution ORDER BY id",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            panic!("the four did not end as timeouts: {rows:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_connection_closed_under_load_every_execution_still_ends_once() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    fleet.observe().await;
    fleet.start_worker("wasm-worker-f").await;
    let pool = fleet.pool().await;
    let worker_id = fleet.worker_id(&pool, "wasm-worker-f").await;
    let key = attune_wasm::worker::protocol::dispatch_key(worker_id);
    let mut ids = Vec::new();
    // One long run (ends by its 4 s timeout), then quick ones.
    for (config, timeout) in std::iter::once((r#"{"mode":"spin"}"#, 4))
        .chain(std::iter::repeat_n((r#"{"name":"load"}"#, 30), 8))
    {
        let id: i64 = sqlx::query(
            "INSERT INTO attune.execution (action, action_ref, config, status, worker, timeout_seconds)
             VALUES (1, 'demo.greet', $1::text::jsonb, 'scheduled', $2, $3) RETURNING id",
        )
        .bind(config)
        .bind(worker_id)
        .bind(timeout)
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("id");
        let dispatch =
            json!({"message_type": "ExecutionRequested", "payload": {"execution_id": id}});
        fleet
            .publish_raw(&key, dispatch.to_string().as_bytes())
            .await;
        ids.push(id);
    }
    let status_of = |id: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query("SELECT status::text AS s FROM attune.execution WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get::<String, _>("s")
        }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_of(ids[0]).await != "running" {
        assert!(Instant::now() < deadline, "the long run did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The broker drops the worker's connection while it runs (and has more queued).
    rabbitmqctl(&[
        "close_all_connections",
        "-p",
        &fleet.vhost,
        "test: broker restart",
    ]);
    for &id in &ids {
        loop {
            let status = status_of(id).await;
            if !["scheduled", "running"].contains(&status.as_str()) {
                let expected = if id == ids[0] { "timeout" } else { "completed" };
                assert_eq!(status, expected, "execution {id}: {}", fleet.log(0));
                break;
            }
            assert!(Instant::now() < deadline, "execution {id} stayed {status}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let channel = fleet.amqp().await;
    let messages = Fleet::drain(&channel, "observer").await;
    for &id in &ids {
        let completions = messages
            .iter()
            .filter(|m| {
                m["message_type"] == "ExecutionCompleted" && m["payload"]["execution_id"] == id
            })
            .count();
        assert_eq!(completions, 1, "execution {id}: {}", fleet.log(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_requests_stop_a_running_guest_and_one_not_started_yet() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    fleet.start_worker("wasm-worker-g").await;
    let pool = fleet.pool().await;
    let worker_id = fleet.worker_id(&pool, "wasm-worker-g").await;
    let insert = |config: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO attune.execution (action, action_ref, config, status, worker, timeout_seconds)
                 VALUES (1, 'demo.greet', $1::text::jsonb, 'scheduled', $2, 60) RETURNING id",
            )
            .bind(config)
            .bind(worker_id)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get::<i64, _>("id")
        }
    };
    let status_of = |id: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "SELECT status::text AS s, result::text AS r FROM attune.execution WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let dispatch_key = attune_wasm::worker::protocol::dispatch_key(worker_id);
    let cancel_key = attune_wasm::worker::protocol::cancel_key(worker_id);
    let message = |kind: &str, id: i64| {
        json!({"message_type": kind, "payload": {"execution_id": id, "worker_id": worker_id}})
            .to_string()
    };

    // A guest spinning with a 60 s timeout, cancelled while it runs: ends `cancelled` at once.
    let spinning = insert(r#"{"mode":"spin"}"#).await;
    fleet
        .publish_raw(
            &dispatch_key,
            message("ExecutionRequested", spinning).as_bytes(),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_of(spinning).await.get::<String, _>("s") != "running" {
        assert!(Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancelled_at = Instant::now();
    fleet
        .publish_raw(
            &cancel_key,
            message("ExecutionCancelRequested", spinning).as_bytes(),
        )
        .await;
    loop {
        let row = status_of(spinning).await;
        let status: String = row.get("s");
        if status != "running" {
            assert_eq!(status, "cancelled", "{}", fleet.log(0));
            let result: Value = serde_json::from_str(&row.get::<String, _>("r")).unwrap();
            assert_eq!(result["cancelled"], true);
            break;
        }
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(5),
            "the cancel did not stop the guest"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A cancel that comes before the dispatch: the execution ends `cancelled` without running.
    let early = insert(r#"{"name":"never"}"#).await;
    fleet
        .publish_raw(
            &cancel_key,
            message("ExecutionCancelRequested", early).as_bytes(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    fleet
        .publish_raw(
            &dispatch_key,
            message("ExecutionRequested", early).as_bytes(),
        )
        .await;
    loop {
        let status: String = status_of(early).await.get("s");
        if !["scheduled", "running"].contains(&status.as_str()) {
            assert_eq!(status, "cancelled", "{}", fleet.log(0));
            break;
        }
        assert!(Instant::now() < deadline, "status {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The worker goes on.
    let (report, _) = fleet.execute("demo.greet", json!({"name": "after"})).await;
    assert_eq!(report["status"], "completed", "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_shutdown_timeout_cancels_and_reports_the_running_execution() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let log = File::create(fleet.log_path(0)).unwrap();
    let child = fleet
        .cmd()
        .arg("worker")
        .env("ATTUNE__WORKER__NAME", "wasm-worker-h")
        .env("ATTUNE__WORKER__SHUTDOWN_TIMEOUT", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    fleet.workers.push(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fleet.log(0).contains("consuming dispatches") {
        assert!(Instant::now() < deadline, "{}", fleet.log(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pool = fleet.pool().await;
    let worker_id = fleet.worker_id(&pool, "wasm-worker-h").await;
    let id = fleet
        .dispatch_new(
            &pool,
            worker_id,
            "demo.greet",
            &json!({"mode": "spin"}),
            120,
        )
        .await;
    loop {
        let status: String =
            sqlx::query("SELECT status::text AS s FROM attune.execution WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get("s");
        if status == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = Instant::now();
    let status = fleet.stop_worker(0);
    assert!(status.success(), "{status}: {}", fleet.log(0));
    assert!(stopping.elapsed() < Duration::from_secs(15));
    let row = sqlx::query(
        "SELECT e.status::text AS e, w.status::text AS w FROM attune.execution e, attune.worker w
         WHERE e.id = $1 AND w.id = $2",
    )
    .bind(id)
    .bind(worker_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("e"), "cancelled", "{}", fleet.log(0));
    assert_eq!(row.get::<String, _>("w"), "inactive");
    // Acknowledged: nothing comes back to the queue.
    let channel = fleet.amqp().await;
    let queue = channel
        .queue_declare(
            attune_wasm::worker::protocol::executions_queue(worker_id)
                .as_str()
                .into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.message_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Worker faults (shared/cases/worker-faults.md, K1–K8) and kill -9.

impl Fleet {
    /// Starts a worker named `name` with extra environment `env`; its index once consuming.
    async fn start_worker_with(&mut self, name: &str, env: &[(&str, &str)]) -> usize {
        let i = self.spawn_worker_with(name, env);
        self.wait_log(i, "consuming dispatches", 1).await;
        i
    }

    /// Spawns a worker named `name` with extra environment `env`, without waiting for it;
    /// its index.
    fn spawn_worker_with(&mut self, name: &str, env: &[(&str, &str)]) -> usize {
        let i = self.workers.len();
        let log = File::create(self.log_path(i)).unwrap();
        let mut cmd = self.cmd();
        cmd.arg("worker")
            .env("ATTUNE__WORKER__NAME", name)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.workers.push(cmd.spawn().unwrap());
        i
    }

    /// Waits (`secs` at most) until worker `i` exits; its exit status.
    async fn wait_exit(&mut self, i: usize, secs: u64) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = self.workers[i].try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "worker {i} did not exit: {}",
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (60 s at most) until worker `i`'s log has `count` lines containing `text`.
    async fn wait_log(&mut self, i: usize, text: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.log(i).lines().filter(|l| l.contains(text)).count() < count {
            assert!(
                Instant::now() < deadline,
                "worker {i}: no {count} × {text:?}: {}",
                self.log(i)
            );
            if let Ok(Some(status)) = self.workers[i].try_wait() {
                panic!("worker {i} exited with {status}: {}", self.log(i));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lines of worker `i`'s log about execution `id` (its `execution=ID` field) containing
    /// `text`.
    fn log_lines(&self, i: usize, id: i64, text: &str) -> usize {
        let field = format!("execution={id}");
        self.log(i)
            .lines()
            .filter(|l| l.contains(text) && l.split_whitespace().any(|w| w == field))
            .count()
    }

    async fn worker_id(&self, pool: &sqlx::PgPool, name: &str) -> i64 {
        sqlx::query("SELECT id FROM attune.worker WHERE name = $1")
            .bind(name)
            .fetch_one(pool)
            .await
            .unwrap()
            .get("id")
    }

    /// A `scheduled` execution of `action` for `worker` with `config`, and its dispatch.
    async fn dispatch_new(
        &self,
        pool: &sqlx::PgPool,
        worker: i64,
        action: &str,
        config: &Value,
        timeout: i32,
    ) -> i64 {
        let id: i64 = sqlx::query(
            "INSERT INTO attune.execution (action, action_ref, config, status, worker, timeout_seconds)
             SELECT id, ref, $2::text::jsonb, 'scheduled', $3, $4 FROM attune.action WHERE ref = $1
             RETURNING id",
        )
        .bind(action)
        .bind(config.to_string())
        .bind(worker)
        .bind(timeout)
        .fetch_one(pool)
        .await
        .unwrap()
        .get("id");
        self.dispatch(worker, id).await;
        id
    }

    async fn dispatch(&self, worker: i64, id: i64) {
        let dispatch =
            json!({"message_type": "ExecutionRequested", "payload": {"execution_id": id}});
        self.publish_raw(
            &attune_wasm::worker::protocol::dispatch_key(worker),
            dispatch.to_string().as_bytes(),
        )
        .await;
    }

    async fn cancel(&self, worker: i64, id: i64) {
        let cancel = json!({"message_type": "ExecutionCancelRequested", "payload": {"execution_id": id, "worker_id": worker}});
        self.publish_raw(
            &attune_wasm::worker::protocol::cancel_key(worker),
            cancel.to_string().as_bytes(),
        )
        .await;
    }

    /// Status and result of execution `id`.
    async fn row(pool: &sqlx::PgPool, id: i64) -> (String, Value) {
        let row = sqlx::query(
            "SELECT status::text AS s, coalesce(result::text, 'null') AS r FROM attune.execution WHERE id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
        (
            row.get("s"),
            serde_json::from_str(&row.get::<String, _>("r")).unwrap(),
        )
    }

    /// Waits (`secs` at most) until execution `id` has left every status in `from`.
    async fn wait_left(pool: &sqlx::PgPool, id: i64, from: &[&str], secs: u64) -> (String, Value) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, result) = Self::row(pool, id).await;
            if !from.contains(&status.as_str()) {
                return (status, result);
            }
            assert!(Instant::now() < deadline, "execution {id} stayed {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Ready messages in the executions queue of `worker`.
    async fn queued(&self, worker: i64) -> u32 {
        let channel = self.amqp().await;
        channel
            .queue_declare(
                attune_wasm::worker::protocol::executions_queue(worker)
                    .as_str()
                    .into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }
}

/// Messages of `kind` about execution `id` among `messages`.
fn about<'a>(messages: &'a [Value], kind: &str, id: i64) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m["message_type"] == kind && m["payload"]["execution_id"] == id)
        .collect()
}

/// kill -9 of a worker mid-execution, then a restart under the same name: the execution it was
/// running ends `failed` with the reason (orphaned), was run once (one `running` change, its
/// audit entry never ended by a second run), the dispatch queued behind it is not lost, and
/// nothing stays `running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_execution_then_restart_ends_it_failed_and_runs_nothing_twice() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let observer = fleet.observe().await;
    let one_slot = [("ATTUNE__WORKER__MAX_CONCURRENT_TASKS", "1")];
    let w = fleet.start_worker_with("wasm-worker-k9", &one_slot).await;
    let pool = fleet.pool().await;
    let worker = fleet.worker_id(&pool, "wasm-worker-k9").await;
    // A long run that reads a secret first (its audit entry is written before it starts),
    // then a quick one waiting behind it for the only slot (prefetched, not started).
    let long = fleet
        .dispatch_new(
            &pool,
            worker,
            "demo.greet",
            &json!({"mode": "spin", "secret": "api_key"}),
            120,
        )
        .await;
    Fleet::wait_left(&pool, long, &["scheduled"], 60).await;
    let queued = fleet
        .dispatch_new(&pool, worker, "demo.greet", &json!({"name": "behind"}), 60)
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let entered: i64 = sqlx::query(
            "SELECT count(*) AS n FROM attune_wasm.audit_execution WHERE execution_id = $1 AND state = 'started'",
        )
        .bind(long.to_string())
        .fetch_one(&pool)
        .await
        .unwrap()
        .get("n");
        if entered == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the long run was never entered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(Fleet::row(&pool, long).await.0, "running");
    assert_eq!(Fleet::row(&pool, queued).await.0, "scheduled");

    // kill -9: no drain, no deregistration, no ack.
    fleet.workers[w].kill().unwrap();
    fleet.workers[w].wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.queued(worker).await < 2 {
        assert!(Instant::now() < deadline, "the dispatches did not return");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(Fleet::row(&pool, long).await.0, "running");

    // Restart under the same name: the same registration, the same queue.
    let again = fleet.start_worker_with("wasm-worker-k9", &one_slot).await;
    assert_eq!(fleet.worker_id(&pool, "wasm-worker-k9").await, worker);
    let (status, result) = Fleet::wait_left(&pool, long, &["running"], 60).await;
    assert_eq!(status, "failed", "{}", fleet.log(again));
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("stopped before it ended"), "{error}");
    assert_eq!(result["succeeded"], false);
    let (status, result) = Fleet::wait_left(&pool, queued, &["scheduled", "running"], 60).await;
    assert_eq!(status, "completed", "{}", fleet.log(again));
    assert_eq!(result["data"]["greeting"], "hello behind");

    // Run once: one `running` change, one completion each; the audit entry of the long run
    // is the first run's (started, never ended: a second run would have ended it).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = Fleet::drain(&observer, "observer").await;
    for id in [long, queued] {
        assert_eq!(
            about(&messages, "ExecutionStatusChanged", id).len(),
            1,
            "{id}: {messages:?}"
        );
        let completed = about(&messages, "ExecutionCompleted", id);
        assert_eq!(completed.len(), 1, "{id}: {messages:?}");
    }
    assert_eq!(
        about(&messages, "ExecutionCompleted", long)[0]["payload"]["status"],
        "failed"
    );
    let audit = sqlx::query(
        "SELECT state, ended IS NULL AS open FROM attune_wasm.audit_execution WHERE execution_id = $1",
    )
    .bind(long.to_string())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audit.get::<String, _>("state"), "started");
    assert!(audit.get::<bool, _>("open"));
    assert_eq!(fleet.log_lines(again, long, "execution starting"), 0);
    let running: i64 =
        sqlx::query("SELECT count(*) AS n FROM attune.execution WHERE status = 'running'")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("n");
    assert_eq!(running, 0);
    assert_eq!(fleet.queued(worker).await, 0);
    fleet.assert_no_plaintext(&messages).await;
}

/// K1: the broker connection is closed after the terminal status is committed and before the
/// ack (the test-only pause of `worker::fault`, feature `fault-injection`): the redelivered
/// dispatch finds the execution ended and is acknowledged without running the guest; one
/// result, one completion; the late ack of the old delivery fails on its own (closed) channel
/// and does not disturb the new one; the consumer goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k1_connection_closed_between_commit_and_ack_redelivery_is_skipped() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    fleet.observe().await;
    let pause = [(attune_wasm::worker::fault::PAUSE_BEFORE_ACK, "15000")];
    let w = fleet.start_worker_with("wasm-worker-k1", &pause).await;
    let pool = fleet.pool().await;
    let worker = fleet.worker_id(&pool, "wasm-worker-k1").await;
    let id = fleet
        .dispatch_new(&pool, worker, "demo.greet", &json!({"name": "k1"}), 60)
        .await;
    // The window: committed, not acknowledged.
    fleet.wait_log(w, "fault injection: pausing", 1).await;
    let (status, result) = Fleet::row(&pool, id).await;
    assert_eq!(status, "completed");
    let updated: String =
        sqlx::query("SELECT updated::text AS u FROM attune.execution WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("u");
    rabbitmqctl(&[
        "close_all_connections",
        "-p",
        &fleet.vhost,
        "test: K1, connection lost before the ack",
    ]);
    fleet
        .wait_log(
            w,
            "execution already ended: dispatch acknowledged and skipped",
            1,
        )
        .await;
    assert_eq!(
        fleet.log_lines(w, id, "execution already ended"),
        1,
        "{}",
        fleet.log(w)
    );
    // The old delivery's ack, after the pause, fails on its closed channel.
    fleet.wait_log(w, "cannot answer a delivery", 1).await;
    assert_eq!(
        fleet.log_lines(w, id, "execution starting"),
        1,
        "{}",
        fleet.log(w)
    );
    assert_eq!(Fleet::row(&pool, id).await, (status, result));
    let after: String =
        sqlx::query("SELECT updated::text AS u FROM attune.execution WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get("u");
    assert_eq!(updated, after, "the row was not written again");

    // The consumer is up: the next execution runs (its own ack pauses; the commit shows it).
    let next = fleet
        .dispatch_new(&pool, worker, "demo.greet", &json!({"name": "next"}), 60)
        .await;
    let (status, _) = Fleet::wait_left(&pool, next, &["scheduled", "running"], 60).await;
    assert_eq!(status, "completed");
    assert!(fleet.workers[w].try_wait().unwrap().is_none());
    let channel = fleet.amqp().await;
    let messages = Fleet::drain(&channel, "observer").await;
    assert_eq!(
        about(&messages, "ExecutionCompleted", id).len(),
        1,
        "{messages:?}"
    );
    assert_eq!(
        about(&messages, "ExecutionStatusChanged", id).len(),
        1,
        "{messages:?}"
    );
    assert_eq!(fleet.queued(worker).await, 0);
}

/// K3: with a database pool of 2 (`database.max_connections`), executions cancelled in the
/// middle of their database work many times and the worker's connections cut
/// (`pg_terminate_backend`) twice: afterwards status writes and heartbeats still succeed (no
/// connection or pool permit leaked), and every execution ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k3_pool_of_two_survives_cancels_mid_write_and_killed_connections() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let env = [
        ("ATTUNE__DATABASE__MAX_CONNECTIONS", "2"),
        ("ATTUNE__WORKER__MAX_CONCURRENT_TASKS", "4"),
    ];
    let w = fleet.start_worker_with("wasm-worker-k3", &env).await;
    // The test's own connections are named, so that the cut spares them.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            fleet
                .db_url
                .parse::<sqlx::postgres::PgConnectOptions>()
                .unwrap()
                .application_name("k3-test"),
        )
        .await
        .unwrap();
    let worker = fleet.worker_id(&pool, "wasm-worker-k3").await;
    let cut = || {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND application_name <> 'k3-test'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
            .get::<i64, _>("n")
        }
    };
    let mut ids = Vec::new();
    let mut killed = 0;
    for i in 0..60_u64 {
        // Secrets read from attune.key and written to the audit trail: database work each.
        let id = fleet
            .dispatch_new(
                &pool,
                worker,
                "demo.greet",
                &json!({"name": i, "secrets": ["api_key", "db_password", "region"]}),
                60,
            )
            .await;
        // Cancel 0–44 ms after the dispatch: before, during or after its database work.
        tokio::time::sleep(Duration::from_millis((i * 7) % 45)).await;
        fleet.cancel(worker, id).await;
        ids.push(id);
        if i == 20 || i == 40 {
            killed += cut().await;
        }
    }
    assert!(killed > 0, "the worker's connections were cut");
    let mut ended = std::collections::BTreeMap::<String, usize>::new();
    for &id in &ids {
        let (status, _) =
            Fleet::wait_left(&pool, id, &["requested", "scheduled", "running"], 120).await;
        *ended.entry(status).or_default() += 1;
    }
    eprintln!("K3: 60 executions cancelled early ended as {ended:?}; {killed} connections cut");
    assert!(ended.contains_key("cancelled"), "{ended:?}");

    // After the cuts: heartbeats go on and status writes succeed, more times than the pool
    // has connections.
    let beat = |pool: sqlx::PgPool| async move {
        sqlx::query("SELECT last_heartbeat::text AS t FROM attune.worker WHERE id = $1")
            .bind(worker)
            .fetch_one(&pool)
            .await
            .unwrap()
            .get::<String, _>("t")
    };
    let before = beat(pool.clone()).await;
    for i in 0..8 {
        let id = fleet
            .dispatch_new(
                &pool,
                worker,
                "demo.greet",
                &json!({"name": format!("after {i}")}),
                60,
            )
            .await;
        let (status, result) = Fleet::wait_left(&pool, id, &["scheduled", "running"], 60).await;
        assert_eq!(status, "completed", "{result}: {}", fleet.log(w));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while beat(pool.clone()).await == before {
        assert!(
            Instant::now() < deadline,
            "no heartbeat after the cuts: {}",
            fleet.log(w)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(fleet.workers[w].try_wait().unwrap().is_none());
}

/// K5: dispatches whose processing the database refuses every time (a trigger in this test's
/// own database) are handled a bounded number of times ([`MAX_REFUSALS`]), then the execution
/// ends `failed` with the reason, or, when even that is refused, the dispatch is
/// dead-lettered; a refused result ends the execution `failed`; the other executions flow.
///
/// [`MAX_REFUSALS`]: attune_wasm::worker::service::MAX_REFUSALS
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_a_dispatch_refused_every_time_is_given_up_and_others_flow() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let pool = fleet.pool().await;
    sqlx::raw_sql(
        "CREATE FUNCTION attune.k5_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.config->>'poison' = 'start' AND NEW.status = 'running' THEN
             RAISE EXCEPTION 'k5: execution % may not start', NEW.id;
           ELSIF NEW.config->>'poison' = 'all' THEN
             RAISE EXCEPTION 'k5: execution % may not change', NEW.id;
           ELSIF NEW.config->>'poison' = 'result' AND NEW.status = 'completed' THEN
             RAISE EXCEPTION 'k5: execution % may not complete', NEW.id
               USING ERRCODE = 'check_violation';
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER k5 BEFORE UPDATE ON attune.execution
           FOR EACH ROW EXECUTE FUNCTION attune.k5_refuse();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let w = fleet.start_worker("wasm-worker-k5").await;
    let worker = fleet.worker_id(&pool, "wasm-worker-k5").await;
    let start = fleet
        .dispatch_new(&pool, worker, "demo.greet", &json!({"poison": "start"}), 60)
        .await;
    let all = fleet
        .dispatch_new(&pool, worker, "demo.greet", &json!({"poison": "all"}), 60)
        .await;
    let result = fleet
        .dispatch_new(
            &pool,
            worker,
            "demo.greet",
            &json!({"poison": "result"}),
            60,
        )
        .await;
    let mut fine = Vec::new();
    for i in 0..6 {
        fine.push(
            fleet
                .dispatch_new(&pool, worker, "demo.classic", &json!({"name": i}), 60)
                .await,
        );
    }
    for &id in &fine {
        let (status, _) = Fleet::wait_left(&pool, id, &["scheduled", "running"], 60).await;
        assert_eq!(status, "completed", "{}", fleet.log(w));
    }
    let max = attune_wasm::worker::service::MAX_REFUSALS;
    let (status, outcome) = Fleet::wait_left(&pool, start, &["scheduled"], 90).await;
    assert_eq!(status, "failed", "{}", fleet.log(w));
    let error = outcome["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "gave this execution up after Attune's database refused it {max} times"
        )) && error.contains("may not start"),
        "{error}"
    );
    let (status, outcome) = Fleet::wait_left(&pool, result, &["scheduled", "running"], 90).await;
    assert_eq!(status, "failed", "{}", fleet.log(w));
    let error = outcome["error"].as_str().unwrap();
    assert!(
        error.contains("could not be stored") && error.contains("may not complete"),
        "{error}"
    );
    // Its summary line comes after the commit and names the status written, not the
    // `completed` the run produced.
    let field = format!("execution={result}");
    let ended: Vec<String> = fleet
        .log(w)
        .lines()
        .filter(|l| l.contains("execution ended") && l.split_whitespace().any(|f| f == field))
        .map(str::to_owned)
        .collect();
    assert_eq!(ended.len(), 1, "{}", fleet.log(w));
    assert!(
        ended[0].contains("status=\"failed\"") && !ended[0].contains("completed"),
        "{}",
        ended[0]
    );

    // `all` refuses even the failure: dead-lettered after as many attempts, row untouched.
    let channel = fleet.amqp().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut dead = Vec::new();
    while about(&dead, "ExecutionRequested", all).is_empty() {
        dead.extend(Fleet::drain(&channel, "attune.dlx.queue").await);
        assert!(
            Instant::now() < deadline,
            "not dead-lettered: {}",
            fleet.log(w)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(Fleet::row(&pool, all).await.0, "scheduled");

    // Bounded: MAX_REFUSALS - 1 requeues each, then nothing more.
    let requeued = |id| fleet.log_lines(w, id, "dispatch requeued");
    let counts = (requeued(start), requeued(all));
    assert_eq!(
        counts,
        ((max - 1) as usize, (max - 1) as usize),
        "{}",
        fleet.log(w)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((requeued(start), requeued(all)), counts);
    assert_eq!(fleet.queued(worker).await, 0);
    // The worker still serves.
    let (report, _) = fleet.execute("demo.greet", json!({"name": "still"})).await;
    assert_eq!(report["status"], "completed", "{report}");
}

/// K8: many more executions than instance-pool slots (8,000 by default, 20,000 with
/// `ATTUNE_TEST_K8_EXECUTIONS=20000`), in bursts far larger than the slots, and 500 one at a
/// time: none fails for lack of a slot (prefetch = slots + 2, a delivery waits
/// for a free slot; the pool's instances are returned after each run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k8_thousands_of_executions_none_fails_for_lack_of_slots() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    // Only the worker's own info lines (not three per execution).
    let env = [
        ("ATTUNE__WORKER__MAX_CONCURRENT_TASKS", "4"),
        ("RUST_LOG", "warn,attune_wasm::worker::service=info"),
    ];
    let w = fleet.start_worker_with("wasm-worker-k8", &env).await;
    let pool = fleet.pool().await;
    let worker = fleet.worker_id(&pool, "wasm-worker-k8").await;
    let channel = fleet.amqp().await;
    let key = attune_wasm::worker::protocol::dispatch_key(worker);
    let count = |status: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query("SELECT count(*) AS n FROM attune.execution WHERE status::text = $1")
                .bind(status)
                .fetch_one(&pool)
                .await
                .unwrap()
                .get::<i64, _>("n")
        }
    };
    // Bursts of 1,000 dispatches (250 × the slots), each burst published at once. 8,000 by
    // default: the full 20,000 of the fault table took 99 s here (a debug build of the worker
    // on a loaded 2-core machine, ~200 executions/s); ATTUNE_TEST_K8_EXECUTIONS=20000 runs it.
    let total: i64 = std::env::var("ATTUNE_TEST_K8_EXECUTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8_000);
    let burst: i64 = 1_000.min(total);
    let started = Instant::now();
    for b in 0..(total / burst) {
        let ids: Vec<i64> = sqlx::query(
            "INSERT INTO attune.execution (action, action_ref, config, status, worker, timeout_seconds)
             SELECT 1, 'demo.greet', jsonb_build_object('name', n, 'secrets', '[]'::jsonb), 'scheduled', $1, 60
             FROM generate_series(1, $2) AS n RETURNING id",
        )
        .bind(worker)
        .bind(burst)
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get("id"))
        .collect();
        for id in ids {
            let body =
                json!({"message_type": "ExecutionRequested", "payload": {"execution_id": id}})
                    .to_string();
            channel
                .basic_publish(
                    "attune.executions".into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    body.as_bytes(),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while count("completed").await < (b + 1) * burst {
            let failed = count("failed").await;
            assert_eq!(failed, 0, "{}", fleet.log(w));
            assert!(
                Instant::now() < deadline,
                "burst {b} did not end: {}",
                fleet.log(w)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let bursts = started.elapsed();
    // One at a time.
    let sequential = 500;
    let started = Instant::now();
    for i in 0..sequential {
        let id = fleet
            .dispatch_new(
                &pool,
                worker,
                "demo.greet",
                &json!({"name": i, "secrets": []}),
                60,
            )
            .await;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, result) = Fleet::row(&pool, id).await;
            if status == "completed" {
                break;
            }
            assert!(
                ["scheduled", "running"].contains(&status.as_str()),
                "{status}: {result}"
            );
            assert!(Instant::now() < deadline, "execution {id} stayed {status}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let one_by_one = started.elapsed();
    eprintln!(
        "K8: {total} executions in bursts of {burst} took {bursts:?}; {sequential} one at a time took {one_by_one:?}"
    );
    assert_eq!(count("completed").await, total + sequential);
    assert_eq!(count("failed").await, 0);
    let log = fleet.log(w);
    assert!(!log.contains("ERROR"), "{log}");
    assert!(fleet.workers[w].try_wait().unwrap().is_none());
}

/// K2: a guest blocked in a host call (sleeping: a WASI clock poll), component and core
/// module, cancelled about 1 s into its run, ends `cancelled` at once (the run future is
/// dropped, its store with it). The bound is a hang guard; the time is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k2_a_guest_blocked_in_a_host_call_is_cancelled_at_once() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let w = fleet.start_worker("wasm-worker-k2").await;
    let pool = fleet.pool().await;
    let worker = fleet.worker_id(&pool, "wasm-worker-k2").await;
    for action in ["demo.greet", "demo.classic"] {
        let id = fleet
            .dispatch_new(
                &pool,
                worker,
                action,
                &json!({"mode": "sleep", "ms": 60_000}),
                120,
            )
            .await;
        Fleet::wait_left(&pool, id, &["scheduled"], 60).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(Fleet::row(&pool, id).await.0, "running");
        let cancelled = Instant::now();
        fleet.cancel(worker, id).await;
        let (status, result) = Fleet::wait_left(&pool, id, &["running"], 30).await;
        let took = cancelled.elapsed();
        eprintln!(
            "K2: {action} sleeping in a host call, cancelled: status {status} after {took:?}"
        );
        assert_eq!(status, "cancelled", "{action}: {}", fleet.log(w));
        assert_eq!(result["cancelled"], true);
        assert!(took < Duration::from_secs(10), "{action}: {took:?}");
    }
    // Not cancelled, the sleep ends by itself (the mode works).
    let (report, _) = fleet
        .execute("demo.classic", json!({"mode": "sleep", "ms": 10}))
        .await;
    assert_eq!(result(&report)["data"], json!({"slept": 10}), "{report}");
}

/// Observability: `worker.metrics_address` serves Prometheus text at `/metrics`; after a few
/// executions the counts match, and no planted secret value appears in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_executions_and_carries_no_secret() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let env = [("ATTUNE__WORKER__METRICS_ADDRESS", "127.0.0.1:0")];
    let w = fleet.start_worker_with("wasm-worker-m", &env).await;
    let log = fleet.log(w);
    let address = log
        .lines()
        .find_map(|l| l.split("metrics served at http://").nth(1))
        .and_then(|rest| rest.split("/metrics").next())
        .unwrap_or_else(|| panic!("no metrics address in the log: {log}"))
        .to_owned();
    let scrape = |path: &'static str| {
        let address = address.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(&address).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                write!(s, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                out
            })
            .await
            .unwrap()
        }
    };
    let first = scrape("/metrics").await;
    assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
    assert!(
        first.contains("attune_wasm_executions_total{status=\"completed\"} 0\n"),
        "{first}"
    );

    for name in ["a", "b", "c"] {
        let (report, _) = fleet
            .execute(
                "demo.greet",
                json!({"name": name, "secrets": ["api_key", "db_password", "identity_token"]}),
            )
            .await;
        assert_eq!(report["status"], "completed", "{report}");
    }
    let (report, _) = fleet
        .execute("demo.greet", json!({"mode": "show", "secret": "api_key"}))
        .await;
    assert_eq!(report["status"], "completed", "{report}");
    let (report, _) = fleet
        .execute("demo.classic", json!({"mode": "fail", "message": "boom"}))
        .await;
    assert_eq!(report["status"], "failed", "{report}");
    let (report, _) = fleet.execute("demo.slow", json!({"mode": "spin"})).await;
    assert_eq!(report["status"], "timeout", "{report}");

    let response = scrape("/metrics").await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains("Content-Type: application/openmetrics-text"),
        "{head}"
    );
    // name{labels} -> value
    let series: std::collections::BTreeMap<&str, f64> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name, value.parse::<f64>().unwrap())
        })
        .collect();
    let get = |name: &str| {
        *series
            .get(name)
            .unwrap_or_else(|| panic!("no {name}: {body}"))
    };
    assert_eq!(
        get("attune_wasm_executions_total{status=\"completed\"}"),
        4.0,
        "{body}"
    );
    assert_eq!(get("attune_wasm_executions_total{status=\"failed\"}"), 1.0);
    assert_eq!(get("attune_wasm_executions_total{status=\"timeout\"}"), 1.0);
    assert_eq!(
        get("attune_wasm_executions_total{status=\"cancelled\"}"),
        0.0
    );
    assert_eq!(get("attune_wasm_execution_duration_seconds_count"), 6.0);
    assert!(
        get("attune_wasm_execution_duration_seconds_sum") >= 1.0,
        "the timeout ran 1 s"
    );
    assert_eq!(get("attune_wasm_executions_in_flight"), 0.0);
    // get-secret: 3 × (api_key, db_password delivered; identity_token not found) + show's.
    assert_eq!(
        get("attune_wasm_secret_requests_total{door=\"get-secret\",outcome=\"delivered\"}"),
        7.0,
        "{body}"
    );
    assert_eq!(
        get("attune_wasm_secret_requests_total{door=\"get-secret\",outcome=\"not-found\"}"),
        3.0,
        "{body}"
    );
    assert!(get("attune_wasm_secret_requests_total{door=\"env\",outcome=\"delivered\"}") > 0.0);
    for secret in [
        API_KEY,
        DB_PASSWORD,
        PACK_REGION,
        ACTION_REGION,
        IDENTITY_TOKEN,
    ] {
        assert!(
            !response.contains(secret),
            "a secret in the metrics: {response}"
        );
    }
    let missing = scrape("/other").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    fleet.assert_no_plaintext(&[]).await;
}

/// A mistyped broker URL (the `//` or one `/` missing after `amqp:`, as N18's typo of the
/// database URL) is reported without its password, by `execute` and by a worker retrying
/// the connection, even at `RUST_LOG=trace`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_broker_url_is_reported_without_its_password() {
    if skipped() {
        return;
    }
    const PW: &str = "amqp-typo-PW-4f1c9e7d";
    let mut fleet = Fleet::new().await;
    for url in [
        format!("amqp:guest:{PW}@127.0.0.1:5672/{}", fleet.vhost),
        format!("amqp:/guest:{PW}@127.0.0.1:5672/{}", fleet.vhost),
    ] {
        let mut c = fleet.cmd();
        c.env("ATTUNE__MESSAGE_QUEUE__URL", &url)
            .env("RUST_LOG", "trace")
            .args(["execute", "--action", "demo.greet"]);
        let out = tokio::task::spawn_blocking(move || support::run_cmd(&mut c, None))
            .await
            .unwrap();
        support::assert_no_panic(&out);
        let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(!out.status.success(), "{url}: {shown}");
        assert!(
            !shown.contains(PW),
            "execute with {url} showed the password: {shown}"
        );
        assert!(shown.contains("message_queue.url"), "{url}: {shown}");

        let i = fleet.workers.len();
        let log = File::create(fleet.log_path(i)).unwrap();
        let child = fleet
            .cmd()
            .arg("worker")
            .env("ATTUNE__MESSAGE_QUEUE__URL", &url)
            .env("RUST_LOG", "trace")
            .env("ATTUNE__WORKER__NAME", format!("typo-{i}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        fleet.workers.push(child);
        // It refuses to start, or (as it did) logs the failure and retries.
        let deadline = Instant::now() + Duration::from_secs(60);
        let exited = loop {
            if let Some(status) = fleet.workers[i].try_wait().unwrap() {
                break Some(status);
            }
            if fleet.log(i).contains("retrying") {
                break None;
            }
            assert!(Instant::now() < deadline, "{url}: {}", fleet.log(i));
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if exited.is_none() {
            fleet.stop_worker(i);
        }
        let log = fleet.log(i);
        assert!(log.contains("message_queue.url"), "{url}: {log}");
        assert!(
            !log.contains(PW),
            "worker with {url} logged the password: {log}"
        );
    }
}

/// The CLI pointed at Attune's database never creates its tables in Attune's schema (the
/// default `database.schema` is `attune`): refused, naming the schema; with a schema of its
/// own it reads the worker's audit trail. Attune's rows exported as the README shows (system
/// rows carry `owner = 'system'`, set by Attune's trigger) import into a store of its own.
/// Both found by the newcomer review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_on_attunes_database_stays_out_of_attunes_schema_and_imports_its_rows() {
    if skipped() {
        return;
    }
    let fleet = Fleet::new().await;
    let pool = fleet.pool().await;
    let ours = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'attune'
              AND table_name IN ('secrets', 'audit', 'audit_execution', 'store_meta', '_sqlx_migrations')",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    for args in [
        &["secret", "list"][..],
        &["audit", "list"],
        &["db", "migrate"],
    ] {
        let out = fleet.cmd().args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("database schema \"attune\" holds Attune's own tables"),
            "{args:?}: {err}"
        );
        assert_eq!(
            ours().await,
            0,
            "{args:?} created tables in Attune's schema"
        );
    }
    let out = fleet
        .cmd()
        .env("ATTUNE__DATABASE__SCHEMA", attune_wasm::worker::OWN_SCHEMA)
        .args(["audit", "list"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rows: Vec<String> =
        sqlx::query_scalar("SELECT row_to_json(k)::text FROM attune.key k ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        rows.iter().any(|r| r.contains("\"owner\":\"system\"")),
        "Attune's trigger names system rows' owner: {rows:?}"
    );
    let file = fleet.dir.path().join("keys.jsonl");
    std::fs::write(&file, rows.join("\n") + "\n").unwrap();
    let import = |args: &[&str]| {
        fleet
            .cmd()
            .env_remove("ATTUNE__DATABASE__URL")
            .args(args)
            .output()
            .unwrap()
    };
    let out = import(&["secret", "import", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = import(&["secret", "get", "api_key", "--reveal"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), API_KEY);
}

/// The third door through the worker (issue 14): the `wasi:config/store` example, unchanged,
/// reads Attune's secrets as configuration, and the worker's audit trail names the door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasi_config_example_reads_attune_secrets_through_the_worker() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    std::fs::copy(
        support::wasm("config-action", Target::P2),
        fleet.dir.path().join("packs/demo/actions/config.wasm"),
    )
    .unwrap();
    let pool = fleet.pool().await;
    sqlx::query(
        "INSERT INTO attune.action (ref, pack, pack_ref, label, entrypoint, runtime, timeout_seconds)
         VALUES ('demo.config', 1, 'demo', 'Config', 'config.wasm', 1, NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    fleet.start_worker("wasm-worker-config").await;
    let (report, code) = fleet
        .execute("demo.config", json!({"target": "production"}))
        .await;
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(code, Some(0));
    let data = &result(&report)["data"];
    assert_eq!(data["action"], "demo.config");
    assert_eq!(data["door"], "wasi-config");
    assert_eq!(data["target"], "production");
    assert_eq!(data["api_key"]["sha256_prefix"], sha8(API_KEY), "{data}");
    assert_eq!(data["db_password"]["sha256_prefix"], sha8(DB_PASSWORD));
    // What demo.config may see: system and pack secrets (not another pack's, not an
    // identity's, not demo.greet's own `region`).
    assert_eq!(
        data["keys"],
        json!(["api_key", "db_password", "region", "settings"])
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let doors: Vec<(String, String)> = sqlx::query(
            "SELECT secret_ref, outcome FROM attune_wasm.audit WHERE door = 'wasi-config'",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get("secret_ref"), r.get("outcome")))
        .collect();
        if doors.contains(&("demo.region".to_owned(), "delivered".to_owned())) {
            assert!(
                doors.contains(&("api_key".to_owned(), "delivered".to_owned())),
                "{doors:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no wasi-config record: {doors:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.assert_no_plaintext(&[report]).await;
}

/// Whether the completion ledger says the `ExecutionCompleted` of `id` was published
/// (`None`: no ledger row).
async fn ledger_published(pool: &sqlx::PgPool, id: i64) -> Option<bool> {
    sqlx::query_scalar::<_, bool>(
        "SELECT published IS NOT NULL FROM attune_wasm.completion WHERE execution_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Waits (60 s at most) until the ledger records the completion of `id` as published.
async fn wait_published(fleet: &Fleet, pool: &sqlx::PgPool, id: i64, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ledger_published(pool, id).await != Some(true) {
        assert!(
            Instant::now() < deadline,
            "the completion of {id} was never published: {}",
            fleet.log(i)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The worker dies after the terminal commit and before `ExecutionCompleted` is published
/// (fault `ATTUNE_WASM_FAULT_EXIT_BEFORE_COMPLETED`): after a restart, the redelivered
/// dispatch publishes the completion from the committed row, exactly once, without running
/// the guest again; a later dispatch of it finds the completion published and is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_is_published_once_when_the_worker_dies_after_the_commit() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let observer = fleet.observe().await;
    let exit = [(attune_wasm::worker::fault::EXIT_BEFORE_COMPLETED, "1")];
    let w = fleet.start_worker_with("wasm-worker-lost", &exit).await;
    let pool = fleet.pool().await;
    let worker = fleet.worker_id(&pool, "wasm-worker-lost").await;
    let id = fleet
        .dispatch_new(&pool, worker, "demo.greet", &json!({"name": "lost"}), 60)
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = fleet.workers[w].try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the worker did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(86), "{}", fleet.log(w));
    let (status, result) = Fleet::row(&pool, id).await;
    assert_eq!(status, "completed");
    assert_eq!(ledger_published(&pool, id).await, Some(false));
    let mut messages = Fleet::drain(&observer, "observer").await;
    assert!(about(&messages, "ExecutionCompleted", id).is_empty());

    let again = fleet.start_worker("wasm-worker-lost").await;
    wait_published(&fleet, &pool, id, again).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.queued(worker).await > 0 {
        assert!(Instant::now() < deadline, "the dispatch stayed queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    messages.extend(Fleet::drain(&observer, "observer").await);
    let completed = about(&messages, "ExecutionCompleted", id);
    assert_eq!(completed.len(), 1, "{messages:?}");
    assert_eq!(completed[0]["payload"]["status"], "completed");
    assert_eq!(completed[0]["payload"]["result"], result);
    assert_eq!(
        fleet.log_lines(
            again,
            id,
            "not yet published: publishing it from the committed row"
        ),
        1,
        "{}",
        fleet.log(again)
    );
    assert_eq!(fleet.log_lines(again, id, "execution starting"), 0);
    assert_eq!(Fleet::row(&pool, id).await, (status, result));

    // Dispatched again: published already, so skipped, and no second completion.
    let skipped = |f: &Fleet| f.log_lines(again, id, "dispatch acknowledged and skipped");
    let before = skipped(&fleet);
    fleet.dispatch(worker, id).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while skipped(&fleet) == before {
        assert!(Instant::now() < deadline, "{}", fleet.log(again));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = Fleet::drain(&observer, "observer").await;
    assert!(
        about(&later, "ExecutionCompleted", id).is_empty(),
        "{later:?}"
    );
    fleet.assert_no_plaintext(&messages).await;
}

/// The broker does not confirm an execution's `ExecutionCompleted` (fault
/// `ATTUNE_WASM_FAULT_FAIL_COMPLETED=1`): the dispatch is not acknowledged but requeued, and
/// its redelivery publishes the completion from the committed row: exactly one arrives, the
/// guest ran once, nothing stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_is_published_once_when_the_broker_does_not_confirm_it() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let observer = fleet.observe().await;
    let fail = [(attune_wasm::worker::fault::FAIL_COMPLETED, "1")];
    let w = fleet.start_worker_with("wasm-worker-nack", &fail).await;
    let pool = fleet.pool().await;
    let worker = fleet.worker_id(&pool, "wasm-worker-nack").await;
    let id = fleet
        .dispatch_new(&pool, worker, "demo.greet", &json!({"name": "nack"}), 60)
        .await;
    wait_published(&fleet, &pool, id, w).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.queued(worker).await > 0 {
        assert!(Instant::now() < deadline, "the dispatch stayed queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = Fleet::drain(&observer, "observer").await;
    let completed = about(&messages, "ExecutionCompleted", id);
    assert_eq!(completed.len(), 1, "{messages:?}");
    let (status, result) = Fleet::row(&pool, id).await;
    assert_eq!(status, "completed");
    assert_eq!(completed[0]["payload"]["result"], result);
    for (text, n) in [
        ("fault injection: ExecutionCompleted not sent", 1),
        ("ExecutionCompleted not published, dispatch requeued", 1),
        ("not yet published: publishing it from the committed row", 1),
        ("execution starting", 1),
    ] {
        assert_eq!(fleet.log_lines(w, id, text), n, "{text}: {}", fleet.log(w));
    }
}

/// K5 across processes: the refusal count travels with the dispatch (header
/// `x-attune-wasm-refusals`), so a worker restarted while a dispatch is being refused goes on
/// counting: the two processes together requeue it `MAX_REFUSALS - 1` times, then it is
/// given up (with a count kept per process the second would start again at zero).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k5_the_refusal_count_survives_a_restart_of_the_worker() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let pool = fleet.pool().await;
    sqlx::raw_sql(
        "CREATE FUNCTION attune.k5_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.config->>'poison' = 'start' AND NEW.status = 'running' THEN
             RAISE EXCEPTION 'k5: execution % may not start', NEW.id;
           END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER k5 BEFORE UPDATE ON attune.execution
           FOR EACH ROW EXECUTE FUNCTION attune.k5_refuse();",
    )
    .execute(&pool)
    .await
    .unwrap();
    let first = fleet.start_worker("wasm-worker-k5r").await;
    let worker = fleet.worker_id(&pool, "wasm-worker-k5r").await;
    let id = fleet
        .dispatch_new(&pool, worker, "demo.greet", &json!({"poison": "start"}), 60)
        .await;
    fleet.wait_log(first, "dispatch requeued", 2).await;
    assert!(fleet.stop_worker(first).success());
    let second = fleet.start_worker("wasm-worker-k5r").await;
    let (status, outcome) = Fleet::wait_left(&pool, id, &["scheduled"], 90).await;
    assert_eq!(status, "failed", "{}", fleet.log(second));
    let max = attune_wasm::worker::service::MAX_REFUSALS;
    let error = outcome["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("refused it {max} times")),
        "{error}"
    );
    let requeued = |i| fleet.log_lines(i, id, "dispatch requeued");
    let (a, b) = (requeued(first), requeued(second));
    assert!(a >= 2 && b >= 1, "{a} + {b}");
    assert_eq!(
        a + b,
        (max - 1) as usize,
        "{}\n{}",
        fleet.log(first),
        fleet.log(second)
    );
    assert_eq!(fleet.queued(worker).await, 0);
}

/// Attune's API cancels a running execution by setting it `canceling`, then sending
/// `ExecutionCancelRequested` (its `cancel_execution` handler): the worker stops the guest and
/// ends it `cancelled` from `canceling` (it wrote nothing while it expected `running` only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_through_attunes_api_status_canceling_ends_cancelled() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    fleet.start_worker("wasm-worker-api-cancel").await;
    let pool = fleet.pool().await;
    let worker_id = fleet.worker_id(&pool, "wasm-worker-api-cancel").await;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO attune.execution (action, action_ref, config, status, worker, timeout_seconds)
         VALUES (1, 'demo.greet', '{\"mode\":\"spin\"}'::jsonb, 'scheduled', $1, 60) RETURNING id",
    )
    .bind(worker_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let message = |kind: &str| {
        json!({"message_type": kind, "payload": {"execution_id": id, "worker_id": worker_id}})
            .to_string()
    };
    let status = || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT status::text FROM attune.execution WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    fleet
        .publish_raw(
            &attune_wasm::worker::protocol::dispatch_key(worker_id),
            message("ExecutionRequested").as_bytes(),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while status().await != "running" {
        assert!(Instant::now() < deadline, "never ran: {}", fleet.log(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::query("UPDATE attune.execution SET status = 'canceling' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    fleet
        .publish_raw(
            &attune_wasm::worker::protocol::cancel_key(worker_id),
            message("ExecutionCancelRequested").as_bytes(),
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = status().await;
        if now != "canceling" {
            assert_eq!(now, "cancelled", "{}", fleet.log(0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stayed canceling: {}",
            fleet.log(0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An `attune.key` row with an infinite time (`created = 'infinity'`, a hand-edited row) is a
/// corrupt row of that name: the execution still ends (it used to panic inside sqlx's time
/// decoding and stay `running`, its dispatch never answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attune_key_with_an_infinite_time_is_corrupt_and_the_execution_ends() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let pool = fleet.pool().await;
    // Attune's key trigger looks its tables up by the search path.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL search_path TO attune")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE key SET created = 'infinity' WHERE name = 'db_password'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    fleet.start_worker("wasm-worker-infinity").await;
    let worker_id = fleet.worker_id(&pool, "wasm-worker-infinity").await;
    let id = fleet
        .dispatch_new(&pool, worker_id, "demo.greet", &json!({"name": "x"}), 30)
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status: String =
            sqlx::query_scalar("SELECT status::text FROM attune.execution WHERE id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
        if status == "completed" || status == "failed" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stayed {status}: {}",
            fleet.log(0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = fleet.log(0);
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        log.contains("created or updated is not a finite time"),
        "{log}"
    );
}

/// A core module printing `line` (and a newline) on stdout.
fn printing_module(line: &str) -> Vec<u8> {
    let escaped: String = line
        .bytes()
        .chain(std::iter::once(b'\n'))
        .map(|b| format!("\\{b:02x}"))
        .collect();
    wat::parse_str(format!(
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write"
               (func $fd_write (param i32 i32 i32 i32) (result i32)))
             (memory (export "memory") 1)
             (data (i32.const 64) "{escaped}")
             (func (export "_start")
               (i32.store (i32.const 0) (i32.const 64))
               (i32.store (i32.const 4) (i32.const {len}))
               (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        len = line.len() + 1
    ))
    .unwrap()
}

/// The worker reads an action file once per version (the compiled guest is kept by path,
/// inode, size and times): a file replaced by a rename, then rewritten in place, between
/// executions runs its new code each time, also after the previous version was remembered
/// (it had settled, see `worker::action_files::SETTLE`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_action_file_runs_its_new_code() {
    if skipped() {
        return;
    }
    use attune_wasm::worker::action_files::SETTLE;
    let mut fleet = Fleet::new().await;
    let pool = fleet.pool().await;
    sqlx::query(
        "INSERT INTO attune.action (ref, pack, pack_ref, label, entrypoint, runtime)
         VALUES ('demo.swap', 1, 'demo', 'Swap', 'swap.wasm', 1)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let actions = fleet.dir.path().join("packs/demo/actions");
    let file = actions.join("swap.wasm");
    let write = |bytes: &[u8]| {
        // Modified an hour ago; its change time stays now, so it settles after SETTLE.
        std::fs::write(&file, bytes).unwrap();
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    };
    write(&printing_module(r#"{"version":1}"#));
    let written = Instant::now();
    fleet.start_worker("wasm-worker-swap").await;
    let worker = fleet.worker_id(&pool, "wasm-worker-swap").await;
    async fn run(fleet: &Fleet, pool: &sqlx::PgPool, worker: i64) -> Value {
        let id = fleet
            .dispatch_new(pool, worker, "demo.swap", &json!({}), 60)
            .await;
        let (status, result) = Fleet::wait_left(pool, id, &["scheduled", "running"], 60).await;
        assert_eq!(status, "completed", "{result}");
        result["data"].clone()
    }
    let settle = |since: Instant| async move {
        if let Some(left) = (SETTLE + Duration::from_millis(200)).checked_sub(since.elapsed()) {
            tokio::time::sleep(left).await;
        }
    };
    settle(written).await;
    // Read, remembered (settled), then served without a read.
    for _ in 0..2 {
        assert_eq!(run(&fleet, &pool, worker).await, json!({"version": 1}));
    }

    // Replaced by a rename: another inode.
    let next = actions.join("swap.next");
    std::fs::write(&next, printing_module(r#"{"version":2}"#)).unwrap();
    std::fs::rename(&next, &file).unwrap();
    assert_eq!(run(&fleet, &pool, worker).await, json!({"version": 2}));
    let renamed = Instant::now();
    settle(renamed).await;
    assert_eq!(run(&fleet, &pool, worker).await, json!({"version": 2}));

    // Rewritten in place (same inode), an old modification time.
    let inode = |p: &PathBuf| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = inode(&file);
    write(&printing_module(r#"{"version":3,"in_place":true}"#));
    assert_eq!(inode(&file), before);
    assert_eq!(
        run(&fleet, &pool, worker).await,
        json!({"version": 3, "in_place": true})
    );
}

// ---------------------------------------------------------------------------------------------
// Robustness: one process per worker name, panics, the shutdown's budget.

/// Two processes with one `worker.name` would share one worker id and one queue, and take
/// each other's running executions for abandoned: the second refuses to start (exit 1, a
/// message naming the name), without touching the worker's row; the first goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_of_one_worker_name_the_second_refuses_to_start() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let first = fleet.start_worker("wasm-worker-twin").await;
    let pool = fleet.pool().await;
    let row = |pool: sqlx::PgPool| async move {
        let r = sqlx::query(
            "SELECT status::text AS s, capabilities::text AS c, host FROM attune.worker
             WHERE name = 'wasm-worker-twin'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (
            r.get::<String, _>("s"),
            r.get::<String, _>("c"),
            r.get::<String, _>("host"),
        )
    };
    let before = row(pool.clone()).await;
    let second = fleet.spawn_worker_with(
        "wasm-worker-twin",
        &[("ATTUNE__WORKER__MAX_CONCURRENT_TASKS", "2")],
    );
    let status = fleet.wait_exit(second, 60).await;
    let log = fleet.log(second);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(
            "error: another worker process named wasm-worker-twin is running on this database"
        ),
        "{log}"
    );
    assert!(!log.contains("registered in attune.worker"), "{log}");
    assert!(!log.contains("consuming dispatches"), "{log}");
    // The row is the first process's still (the second's capabilities would differ).
    assert_eq!(row(pool.clone()).await, before);
    assert_eq!(before.0, "active");
    for i in 0..3 {
        let (report, _) = fleet.execute("demo.greet", json!({"name": i})).await;
        assert_eq!(report["status"], "completed", "{report}");
    }
    assert!(fleet.workers[first].try_wait().unwrap().is_none());
    // Stopped, it releases the name: a new process of that name starts.
    assert!(fleet.stop_worker(first).success());
    let again = fleet.start_worker("wasm-worker-twin").await;
    let (report, _) = fleet.execute("demo.greet", json!({"name": "again"})).await;
    assert_eq!(report["status"], "completed", "{report}");
    assert!(fleet.workers[again].try_wait().unwrap().is_none());
}

/// The connection holding a worker's name lock is cut, and another session of the same
/// name (this test) takes the lock before the worker opens it again: the worker stops
/// consuming and exits 1 naming the name, leaving the worker's row alone (not `inactive`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_name_lock_is_taken_meanwhile_stops_consuming() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let w = fleet.start_worker("wasm-worker-cut").await;
    let pool = fleet.pool().await;
    let mut other = sqlx::PgConnection::connect(&fleet.db_url).await.unwrap();
    other.execute("SET lock_timeout = '3s'").await.unwrap();
    let mut taken = false;
    for _ in 0..10 {
        let cut: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = $1",
        )
        .bind(attune_wasm::worker::attune_db::LOCK_APPLICATION)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(cut <= 1, "one lock connection per worker: {cut}");
        // Waits for the cut session to end (the worker may take the lock again first: then
        // cut again).
        if sqlx::query("SELECT pg_advisory_lock(hashtextextended('attune-wasm worker ' || $1, 0))")
            .bind("wasm-worker-cut")
            .execute(&mut other)
            .await
            .is_ok()
        {
            taken = true;
            break;
        }
    }
    assert!(taken, "the test never took the lock: {}", fleet.log(w));
    let status = fleet.wait_exit(w, 60).await;
    let log = fleet.log(w);
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(
            "error: worker wasm-worker-cut lost the lock of its worker.name to another process"
        ),
        "{log}"
    );
    let status: String =
        sqlx::query_scalar("SELECT status::text FROM attune.worker WHERE name = 'wasm-worker-cut'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(status, "active", "the row is the other process's now");
}

/// A panic while an execution runs (test-only `ATTUNE_WASM_FAULT_PANIC_IN_EXECUTION=1`: the
/// first execution of the process panics once `running`) ends that execution `failed` with a
/// fixed reason (never the panic's message), publishes one `ExecutionCompleted`, acknowledges
/// the dispatch; the worker goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_an_execution_ends_it_failed_and_the_worker_goes_on() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let observer = fleet.observe().await;
    let panic = [(attune_wasm::worker::fault::PANIC_IN_EXECUTION, "1")];
    let w = fleet.start_worker_with("wasm-worker-panic", &panic).await;
    let pool = fleet.pool().await;
    let worker = fleet.worker_id(&pool, "wasm-worker-panic").await;
    let id = fleet
        .dispatch_new(
            &pool,
            worker,
            "demo.greet",
            &json!({"name": "boom", "secrets": ["api_key", "db_password"]}),
            60,
        )
        .await;
    let (status, result) = Fleet::wait_left(&pool, id, &["scheduled", "running"], 60).await;
    assert_eq!(status, "failed", "{}", fleet.log(w));
    assert_eq!(
        result["error"],
        "the worker failed internally while handling this execution (a bug; details withheld, they could hold secret data); please report it"
    );
    wait_published(&fleet, &pool, id, w).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while fleet.queued(worker).await > 0 {
        assert!(Instant::now() < deadline, "the dispatch stayed queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The worker goes on.
    for i in 0..3 {
        let (report, _) = fleet.execute("demo.greet", json!({"name": i})).await;
        assert_eq!(report["status"], "completed", "{report}");
    }
    assert!(fleet.workers[w].try_wait().unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let messages = Fleet::drain(&observer, "observer").await;
    let completed = about(&messages, "ExecutionCompleted", id);
    assert_eq!(completed.len(), 1, "{messages:?}");
    assert_eq!(completed[0]["payload"]["status"], "failed");
    assert_eq!(completed[0]["payload"]["result"], result);
    let log = fleet.log(w);
    for (text, n) in [
        ("fault injection: panicking while the execution runs", 1),
        ("internal error while handling this execution", 1),
        ("execution ended", 1),
        ("execution starting", 0),
    ] {
        assert_eq!(fleet.log_lines(w, id, text), n, "{text}: {log}");
    }
    // The panic's message is nowhere: the hook prints where, never what.
    assert!(!log.contains("a panic while execution"), "{log}");
    assert!(log.contains("error: internal error at "), "{log}");
    assert_eq!(Fleet::row(&pool, id).await, (status, result));
    fleet.assert_no_plaintext(&messages).await;
}

/// SIGTERM while the broker refuses the worker's connections (its permissions on the vhost
/// cleared, its connection closed) during a run: the run is cancelled and its status
/// committed, and the shutdown keeps to `worker.shutdown_timeout` (4 s here; a fixed 10 s
/// wait after the cancellation, and the completion's wait for a broker, made it 14 s or
/// more). The completion is not lost: with the broker back, the next worker of that name
/// publishes it from the committed row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_the_broker_refuses_connections_keeps_to_the_shutdown_timeout() {
    if skipped() {
        return;
    }
    let mut fleet = Fleet::new().await;
    let budget = [("ATTUNE__WORKER__SHUTDOWN_TIMEOUT", "4")];
    let w = fleet
        .start_worker_with("wasm-worker-refused", &budget)
        .await;
    let pool = fleet.pool().await;
    let worker = fleet.worker_id(&pool, "wasm-worker-refused").await;
    let id = fleet
        .dispatch_new(&pool, worker, "demo.greet", &json!({"mode": "spin"}), 120)
        .await;
    let (status, _) = Fleet::wait_left(&pool, id, &["scheduled"], 60).await;
    assert_eq!(status, "running");
    rabbitmqctl(&["clear_permissions", "-p", &fleet.vhost, "guest"]);
    rabbitmqctl(&[
        "close_all_connections",
        "-p",
        &fleet.vhost,
        "test: the broker refuses the worker",
    ]);
    fleet.wait_log(w, "retrying in", 1).await;
    let stopping = Instant::now();
    let status = fleet.stop_worker(w);
    let took = stopping.elapsed();
    assert!(status.success(), "{status}: {}", fleet.log(w));
    assert!(
        took < Duration::from_secs(4 + 5),
        "the shutdown took {took:?}: {}",
        fleet.log(w)
    );
    let (status, result) = Fleet::row(&pool, id).await;
    assert_eq!(status, "cancelled", "{}", fleet.log(w));
    assert_eq!(result["cancelled"], true);
    assert_eq!(ledger_published(&pool, id).await, Some(false));

    rabbitmqctl(&[
        "set_permissions",
        "-p",
        &fleet.vhost,
        "guest",
        ".*",
        ".*",
        ".*",
    ]);
    let again = fleet.start_worker("wasm-worker-refused").await;
    wait_published(&fleet, &pool, id, again).await;
    assert_eq!(Fleet::row(&pool, id).await, (status, result));
}

/// The worker reads an action's keys in its claim statement; `AttuneKeys`' own read (the
/// worker's fallback, and the library's store over Attune's database) gives the same rows:
/// system, pack and action keys of the action, never an identity key, plain values as is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attune_keys_own_read_gives_the_rows_the_claim_gives() {
    use attune_wasm::secrets::names::ActionRef;
    use attune_wasm::store::{AttuneKeys, StoredValue, Visible};
    use secrecy::ExposeSecret;
    use std::str::FromStr;
    if skipped() {
        return;
    }
    let fleet = Fleet::new().await;
    let options = sqlx::postgres::PgConnectOptions::from_str(&fleet.db_url)
        .unwrap()
        .options([("search_path", "attune")]);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let store = AttuneKeys::store(pool);
    let rows = store
        .visible_to(&ActionRef::new("demo.greet").unwrap())
        .await
        .unwrap();
    let mut seen: Vec<(String, String)> = rows
        .iter()
        .map(|r| match r {
            Visible::Row(r) => (r.owner.to_string(), r.name.as_str().to_owned()),
            Visible::Corrupt { .. } => panic!("a planted key is corrupt"),
        })
        .collect();
    seen.sort();
    let expected = [
        ("action demo.greet", "region"),
        ("pack demo", "db_password"),
        ("pack demo", "region"),
        ("system", "api_key"),
        ("system", "settings"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(o, n)| ((*o).to_owned(), (*n).to_owned()))
        .collect();
    assert_eq!(seen, expected);
    let password = rows.iter().find_map(|r| match r {
        Visible::Row(r) if r.name.as_str() == "db_password" => Some(&r.value),
        _ => None,
    });
    assert!(
        matches!(password, Some(StoredValue::Plain(v)) if v.expose_secret() == DB_PASSWORD),
        "the plain pack key as it was set"
    );
}
