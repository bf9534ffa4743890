//! Shared test support: the real `attune-wasm` binary, real guests built from `examples/`, and a
//! private data directory per test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use attune_wasm::store::{NewSecret, OpenMode, Store};
use secrecy::SecretString;

/// Password used by most tests (40 bytes).
pub const KEY: &str = "integration-test-key-0123456789abcdefghij";
/// Another valid password.
pub const OTHER_KEY: &str = "a-completely-different-key-9876543210zyxw";

/// The encryption key derived from `password` (e.g. [`KEY`]).
pub fn key(password: &str) -> attune_wasm::secrets::crypto::EncryptionKey {
    attune_wasm::secrets::crypto::EncryptionKey::from_password(&SecretString::from(password))
        .expect("a valid password")
}

/// Which build of a guest.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// wasm32-wasip2: a component.
    P2,
    /// wasm32-wasip1: a core module.
    P1,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// Builds every example for both targets once per test process; returns the target dir.
fn examples_built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = workspace_root();
        let target_dir = root.join("examples").join("target");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .current_dir(root.join("examples"))
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("RUSTFLAGS")
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--target",
                "wasm32-wasip1",
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .output()
            .expect("run cargo");
        assert!(
            out.status.success(),
            "building examples failed (are the targets installed? run scripts/setup.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target_dir
    })
}

/// Path of example `name` built for `target`.
pub fn wasm(name: &str, target: Target) -> PathBuf {
    let triple = match target {
        Target::P2 => "wasm32-wasip2",
        Target::P1 => "wasm32-wasip1",
    };
    examples_built()
        .join(triple)
        .join("release")
        .join(format!("{name}.wasm"))
}

/// The secret-probe guest.
pub fn probe(target: Target) -> PathBuf {
    wasm("secret-probe", target)
}

/// One isolated host: its own data directory (embedded SQLite) and key.
pub struct Host {
    pub dir: tempfile::TempDir,
    pub key: Option<String>,
    /// Extra settings (e.g. a PostgreSQL URL and schema).
    pub settings: Vec<(String, String)>,
}

/// Whether the PostgreSQL tests are skipped (`ATTUNE_TEST_POSTGRES=skip`); the caller says so
/// on stderr, as the external-tool tests do.
fn postgres_skipped() -> bool {
    std::env::var("ATTUNE_TEST_POSTGRES").as_deref() == Ok("skip")
}

impl Host {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            key: Some(KEY.to_owned()),
            settings: Vec::new(),
        }
    }

    /// A host on the test PostgreSQL (`ATTUNE_TEST_POSTGRES_URL`, default
    /// `postgres://postgres@127.0.0.1:5432/test`) in a fresh schema, dropped by `drop_schema`.
    /// `None` when `ATTUNE_TEST_POSTGRES=skip`.
    pub fn postgres() -> Option<Self> {
        if postgres_skipped() {
            eprintln!("skipped: ATTUNE_TEST_POSTGRES=skip (needs PostgreSQL)");
            return None;
        }
        let url = std::env::var("ATTUNE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let schema = format!("it_{}", uuid::Uuid::new_v4().simple());
        Some(Self {
            settings: vec![
                ("ATTUNE__DATABASE__URL".into(), url),
                ("ATTUNE__DATABASE__SCHEMA".into(), schema),
            ],
            ..Self::new()
        })
    }

    /// The value of setting `key` (e.g. `ATTUNE__DATABASE__URL`), if set.
    pub fn setting(&self, key: &str) -> Option<String> {
        self.settings
            .iter()
            .find(|(n, _)| n == key)
            .map(|(_, v)| v.clone())
    }

    /// This host's PostgreSQL schema (`None` on SQLite).
    pub fn schema(&self) -> Option<String> {
        self.setting("ATTUNE__DATABASE__SCHEMA")
    }

    /// Drops this host's PostgreSQL schema (if any).
    pub async fn drop_schema(&self) {
        let get = |k: &str| self.setting(k);
        if let (Some(url), Some(schema)) = (
            get("ATTUNE__DATABASE__URL"),
            get("ATTUNE__DATABASE__SCHEMA"),
        ) {
            use sqlx::Connection as _;
            let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
            // A background writer of the test (an audit batch still in flight) can deadlock
            // with the drop (40P01): PostgreSQL aborts one of the two; drop again.
            for attempt in 1.. {
                match sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                    .execute(&mut c)
                    .await
                {
                    Ok(_) => break,
                    Err(e) if attempt < 5 => {
                        eprintln!("drop schema {schema}: {e}; again");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                    Err(e) => panic!("drop schema {schema}: {e}"),
                }
            }
        }
    }

    pub fn without_key() -> Self {
        Self {
            key: None,
            ..Self::new()
        }
    }

    /// Every regular file under the data directory (database, WAL, compilation cache).
    pub fn stored_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.dir.path().join("data"), &mut out);
        assert!(!out.is_empty(), "the data directory holds files");
        out
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("data").join("secrets.db")
    }

    /// `attune-wasm` with a clean environment: only this host's settings.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_attune-wasm"));
        c.env_clear()
            .env("ATTUNE__DATA_DIR", self.dir.path().join("data"))
            .stdin(Stdio::null())
            .envs(self.settings.iter().map(|(k, v)| (k, v)));
        if let Some(key) = &self.key {
            c.env("ATTUNE__SECURITY__ENCRYPTION_KEY", key);
        }
        c
    }

    /// `attune-wasm ARGS` with `stdin`, returning its output.
    pub fn exec(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        run_cmd(self.cmd().args(args), stdin)
    }

    /// `secret set NAME VALUE OWNER...`, asserting success.
    pub fn set(&self, name: &str, value: &str, owner: &[&str]) {
        let mut args = vec!["secret", "set", name, value];
        args.extend_from_slice(owner);
        let out = self.exec(&args, None);
        assert!(out.status.success(), "set {name}: {}", text(&out.stderr));
    }

    /// `run FILE --action ACTION --no-redact EXTRA -- ARGS`: output unmasked, so that tests
    /// can read what the probe received (masking has tests of its own).
    pub fn run(&self, file: &Path, action: &str, extra: &[&str], guest_args: &[&str]) -> Output {
        let mut with = vec!["--no-redact"];
        with.extend_from_slice(extra);
        self.run_redacted(file, action, &with, guest_args)
    }

    /// `run FILE --action ACTION EXTRA -- ARGS`, as an operator runs it (output masked).
    pub fn run_redacted(
        &self,
        file: &Path,
        action: &str,
        extra: &[&str],
        guest_args: &[&str],
    ) -> Output {
        let mut c = self.cmd();
        c.arg("run")
            .arg(file)
            .args(["--action", action])
            .args(extra);
        if !guest_args.is_empty() {
            c.arg("--").args(guest_args);
        }
        run_cmd(&mut c, None)
    }

    /// Runs the probe's `get NAMES...` and returns the parsed JSON object.
    pub fn get(&self, target: Target, action: &str, names: &[&str]) -> serde_json::Value {
        let mut args = vec!["get"];
        args.extend_from_slice(names);
        let out = self.run(&probe(target), action, &[], &args);
        assert!(
            out.status.success(),
            "probe get failed: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("probe prints JSON")
    }

    /// Runs the probe's `env` and returns the guest environment.
    pub fn env(&self, target: Target, action: &str) -> serde_json::Map<String, serde_json::Value> {
        let out = self.run(&probe(target), action, &[], &["env"]);
        assert!(
            out.status.success(),
            "probe env failed: {}",
            text(&out.stderr)
        );
        match serde_json::from_slice(&out.stdout).expect("probe prints JSON") {
            serde_json::Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    /// Opens this host's store through the library (for rows the CLI refuses to write).
    pub async fn store(&self) -> Store {
        self.store_cached(None).await
    }

    /// As [`Host::store`], keeping the rows each action sees in memory for `ttl`.
    pub async fn store_cached(&self, ttl: Option<std::time::Duration>) -> Store {
        let get = |k: &str| self.setting(k);
        let mut options = attune_wasm::store::StoreOptions::new(
            get("ATTUNE__DATABASE__URL")
                .unwrap_or_else(|| format!("sqlite://{}", self.db_path().display())),
        );
        if let Some(schema) = get("ATTUNE__DATABASE__SCHEMA") {
            options.schema = schema;
        }
        options.cache_ttl = ttl;
        Store::open_with(&options, OpenMode::CreateIfMissing)
            .await
            .expect("open store")
    }

    /// Every backend: the embedded SQLite, and PostgreSQL unless skipped.
    pub fn all_backends() -> Vec<Self> {
        if postgres_skipped() {
            eprintln!("PostgreSQL skipped: ATTUNE_TEST_POSTGRES=skip (SQLite only)");
            return vec![Self::new()];
        }
        vec![Self::new(), Self::postgres().expect("not skipped")]
    }

    /// Writes a raw row, bypassing CLI validation of the value; replaces any stored row of
    /// that owner and name, whatever its key.
    pub async fn put_raw(
        &self,
        owner: attune_wasm::secrets::names::Owner,
        name: &str,
        encrypted: bool,
        key_hash: Option<&str>,
        value: &str,
    ) {
        self.store()
            .await
            .put_with(
                &NewSecret {
                    owner,
                    name: attune_wasm::secrets::names::SecretName::new(name).expect("valid name"),
                    value: if encrypted {
                        attune_wasm::store::StoredValue::encrypted(
                            value,
                            key_hash.map(attune_wasm::store::KeyHash::new),
                        )
                    } else {
                        attune_wasm::store::StoredValue::Plain(SecretString::from(value))
                    },
                },
                attune_wasm::store::Replace::Any,
            )
            .await
            .expect("put raw row");
    }
}

pub fn run_cmd(c: &mut Command, stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    if stdin.is_some() {
        c.stdin(Stdio::piped());
    }
    let mut child = c.spawn().expect("spawn attune-wasm");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input).expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

/// Fails if the process panicked (exit 101 or a panic or internal-error line on stderr).
pub fn assert_no_panic(out: &Output) {
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(101), "panicked: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "{stderr}"
    );
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The value the probe reported for `name`, or its error name.
pub fn value(report: &serde_json::Value, name: &str) -> Result<String, String> {
    let entry = &report[name];
    match (entry.get("value"), entry.get("error")) {
        (Some(v), _) => Ok(v.as_str().expect("string").to_owned()),
        (None, Some(e)) => Err(e.as_str().expect("string").to_owned()),
        _ => panic!("no entry for {name} in {report}"),
    }
}

/// A runtime configuration with the pooling allocator sized for `executions`.
pub fn pooled(executions: u32) -> attune_wasm::RuntimeConfig {
    let mut pooling = attune_wasm::Pooling::default();
    pooling.executions = executions;
    let mut config = attune_wasm::RuntimeConfig::default();
    config.pooling = Some(pooling);
    config
}

/// A library execution of the probe as `action` with `args`: no stdin, output captured (1 MiB
/// per stream), default limits, no masking.
pub fn probe_execution(action: &str, args: &[&str]) -> attune_wasm::executor::Execution {
    use attune_wasm::executor::Execution;
    use attune_wasm::runtime::Output;
    let mut execution = Execution::new(
        attune_wasm::secrets::names::ActionRef::new(action).expect("valid action ref"),
        "probe.wasm",
    );
    execution.args = args.iter().map(|a| (*a).to_owned()).collect();
    execution.stdout = Output::Capture(1 << 20);
    execution.stderr = Output::Capture(1 << 20);
    execution.redact = false;
    execution.max_output = 1 << 20;
    execution
}
