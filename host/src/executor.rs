//! One execution end to end (seed "Secret Injection Flow"): fetch the rows visible to the
//! action in one query, resolve and decrypt the winners, check env names, build the guest's
//! environment from an explicit list, run the guest in its own store, drop every plaintext.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};

use crate::audit;
use crate::crypto::EncryptionKey;
use crate::mounts::{self, Boundary};
use crate::names::{ActionRef, SecretName, ENV_PREFIX};
use crate::resolve::{self, Delivery, Resolution};
use crate::runtime::{
    self, Cancel, DirMount, Guest, GuestExit, GuestSetup, Limits, Output, Runtime, SecretDoor,
    Stdin,
};
use crate::store::{self, Store};

/// Prefix reserved for metadata variables set by the host.
pub const METADATA_PREFIX: &str = "ATTUNE_";

/// Execution failures. Messages name secrets by ref, never by value.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `--env` entry is malformed or uses a reserved name.
    #[error("invalid guest environment variable {name:?}: {reason}")]
    Env {
        /// The variable name as given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Resolution failed (e.g. two secrets map to one env variable).
    #[error(transparent)]
    Resolve(#[from] resolve::Error),
    /// The secret store could not be read and strict mode is on.
    #[error("secret store unavailable (strict mode): {0}")]
    Store(String),
    /// A visible secret could not be delivered and strict mode is on.
    #[error("secret {secret_ref} cannot be delivered (strict mode): {reason}")]
    Undeliverable {
        /// Ref of the secret.
        secret_ref: String,
        /// Why.
        reason: String,
    },
    /// A mount would give the guest a protected object, or its guest path is refused.
    #[error(transparent)]
    Mount(#[from] mounts::Error),
    /// The guest failed to compile, link or run.
    #[error(transparent)]
    Runtime(#[from] runtime::Error),
    /// The execution could not be entered in the audit trail before its guest started, so
    /// the guest was not started.
    #[error(transparent)]
    Audit(#[from] audit::Error),
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where secrets come from for the executions of an [`Executor`].
pub enum SecretSource {
    /// An open store: its rows, and its audit trail.
    Store(Store),
    /// No store could be opened; the text says why (warned on every execution, or an error
    /// under strict mode).
    Missing(String),
    /// Rows read from one store (the worker's: Attune's own `attune.key`, read only, see
    /// [`store::AttuneKeys`]), the audit trail written to another when given.
    Separate {
        /// Where the rows an action may see are read.
        rows: Store,
        /// Where the audit trail is written (none: no trail).
        audit: Option<Store>,
    },
}

impl SecretSource {
    /// The store rows are read from, if any.
    fn rows(&self) -> Option<&Store> {
        match self {
            Self::Store(store) | Self::Separate { rows: store, .. } => Some(store),
            Self::Missing(_) => None,
        }
    }

    /// The store the audit trail is written to, if any.
    fn audit(&self) -> Option<&Store> {
        match self {
            Self::Store(store)
            | Self::Separate {
                audit: Some(store), ..
            } => Some(store),
            Self::Missing(_) | Self::Separate { audit: None, .. } => None,
        }
    }
}

/// One execution's request.
pub struct Execution {
    /// The action being run (`pack.action`): selects the visible secrets.
    pub action: ActionRef,
    /// `argv` after `argv[0]`.
    pub args: Vec<String>,
    /// `argv[0]`, usually the file name.
    pub program: String,
    /// Extra environment (`--env K=V`); `SECRET_*` and `ATTUNE_*` are reserved.
    pub env: Vec<(String, String)>,
    /// Directory mounts, checked against the executor's [`Boundary`] before anything else.
    pub dirs: Vec<DirMount>,
    /// Guest stdin.
    pub stdin: Stdin,
    /// Guest stdout.
    pub stdout: Output,
    /// Guest stderr.
    pub stderr: Output,
    /// Limits.
    pub limits: Limits,
    /// When set, only these names are delivered (all three doors); other visible names
    /// answer `access-denied` to `get-secret` and `wasi:config/store.get`.
    pub allowed: Option<BTreeSet<SecretName>>,
    /// Mask every resolved secret value in stdout/stderr (see [`crate::redact`]).
    pub redact: bool,
    /// Most bytes of stdout, and separately of stderr, captured or passed through; further
    /// writes fail and [`GuestExit::output_capped`] is set.
    pub max_output: u64,
    /// This execution's id in the audit trail and the guest's `ATTUNE_EXECUTION_ID` (the
    /// worker gives Attune's `execution.id`); `None`: a fresh UUID v4.
    pub execution_id: Option<String>,
    /// Cancelling it ends the execution at once with [`runtime::Error::Cancelled`].
    pub cancel: Cancel,
}

/// Default [`Execution::max_output`]: 16 MiB per stream.
pub const DEFAULT_MAX_OUTPUT: u64 = 16 * 1024 * 1024;

impl Execution {
    /// An execution of `program` as `action` with the library defaults: no arguments, no
    /// extra environment, no mounts, empty stdin, stdout and stderr captured up to
    /// [`DEFAULT_MAX_OUTPUT`] bytes each, default [`Limits`], every visible secret allowed,
    /// output masked. Change fields with struct update syntax:
    /// `Execution { redact: false, ..Execution::new(action, "a.wasm") }`.
    pub fn new(action: ActionRef, program: impl Into<String>) -> Self {
        let capture = usize::try_from(DEFAULT_MAX_OUTPUT).unwrap_or(usize::MAX);
        Self {
            action,
            args: Vec::new(),
            program: program.into(),
            env: Vec::new(),
            dirs: Vec::new(),
            stdin: Stdin::Empty,
            stdout: Output::Capture(capture),
            stderr: Output::Capture(capture),
            limits: Limits::default(),
            allowed: None,
            redact: true,
            max_output: DEFAULT_MAX_OUTPUT,
            execution_id: None,
            cancel: Cancel::new(),
        }
    }
}

/// What an execution produced.
#[derive(Debug)]
pub struct Report {
    /// Execution id (UUID v4), also given to the guest as `ATTUNE_EXECUTION_ID`.
    pub execution_id: String,
    /// How the guest ended.
    pub exit: GuestExit,
    /// Refs of the secrets injected through the env door.
    pub env_secrets: Vec<String>,
    /// Secret requests of the run by (door, outcome), summed over secrets: the audit
    /// trail's counts without names (for metrics).
    pub secret_totals: std::collections::BTreeMap<(audit::Door, audit::Outcome), u64>,
}

/// What an execution does when a visible secret cannot be delivered, or the store cannot be
/// read, or its ciphertext floor record is not authentic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Strictness {
    /// Warn and go on without the secret (the seed's behaviour, the default).
    #[default]
    Lenient,
    /// Fail the execution before its guest starts.
    Strict,
}

/// Runs executions: a runtime, a secret source, the key and the strictness policy.
pub struct Executor {
    runtime: Arc<Runtime>,
    source: SecretSource,
    key: Option<EncryptionKey>,
    strictness: Strictness,
    /// What no mount may reach.
    boundary: Boundary,
    /// Where the audit trail goes (none: no trail).
    sink: Option<Arc<dyn audit::Sink>>,
    /// Whether `wasi:config/store.get-all` is answered ([`Executor::with_config_get_all`]).
    config_get_all: bool,
    /// Started by the first execution that has records, on its tokio runtime; started again
    /// on the current one if that runtime has shut down since.
    audit: std::sync::Mutex<Option<Arc<audit::Writer>>>,
}

impl Executor {
    /// Builds an executor. [`Strictness::Strict`] makes an undeliverable secret or a missing
    /// store fail the execution before its guest starts ([`Strictness::Lenient`]: warn and go
    /// on, as the seed says).
    ///
    /// Mounts are refused when they reach `/proc`, `/sys`, `/dev`, the runtime's compilation
    /// cache or the store's database file and directory; add the data directory and the
    /// configuration file with [`Executor::with_boundary`].
    pub fn new(
        runtime: Arc<Runtime>,
        source: SecretSource,
        key: Option<EncryptionKey>,
        strictness: Strictness,
    ) -> Self {
        let mut boundary = Boundary::new();
        if let Some(cache) = runtime.cache_dir() {
            boundary.protect(mounts::Kind::Cache, cache);
        }
        for file in [source.rows(), source.audit()]
            .into_iter()
            .flatten()
            .filter_map(Store::database_file)
        {
            boundary.protect_database(file);
        }
        let sink = source
            .audit()
            .map(|store| Arc::new(store.clone()) as Arc<dyn audit::Sink>);
        Self {
            runtime,
            source,
            key,
            strictness,
            boundary,
            sink,
            config_get_all: true,
            audit: std::sync::Mutex::new(None),
        }
    }

    /// Whether components' `wasi:config/store.get-all` is answered (`true`, the default:
    /// every secret the action may see, each recorded) or refused with
    /// `upstream("access-denied")` (`false`, `security.refuse_config_get_all`): see
    /// [`SecretDoor::with_config_get_all`].
    #[must_use]
    pub fn with_config_get_all(mut self, answered: bool) -> Self {
        self.config_get_all = answered;
        self
    }

    /// Also refuses mounts that reach what `boundary` protects (the data directory, the
    /// configuration file, a store not open yet).
    #[must_use]
    pub fn with_boundary(mut self, boundary: &Boundary) -> Self {
        self.boundary.extend(boundary);
        self
    }

    /// What no mount may reach.
    pub fn boundary(&self) -> &Boundary {
        &self.boundary
    }

    /// Waits until the audit records of every execution finished so far are stored. Call it
    /// before shutting the tokio runtime down or reading the trail back.
    pub async fn flush(&self) {
        let writer = self
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(writer) = writer {
            writer.flush().await;
        }
    }

    /// The running audit writer, started on the current tokio runtime when there is none or
    /// the previous one's runtime has shut down.
    fn audit_writer(&self, sink: &Arc<dyn audit::Sink>) -> Arc<audit::Writer> {
        // A poisoned lock only means a panic while swapping the handle; the slot is valid.
        let mut slot = self
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*slot {
            Some(writer) if !writer.is_closed() => Arc::clone(writer),
            _ => {
                let writer = Arc::new(audit::Writer::spawn(Arc::clone(sink)));
                *slot = Some(Arc::clone(&writer));
                writer
            }
        }
    }

    /// The runtime, to compile guests.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Resolves the secrets `action` may see (one store query, winners decrypted).
    ///
    /// # Errors
    /// [`Error::Resolve`] on an env-name collision; [`Error::Store`] and
    /// [`Error::Undeliverable`] under strict mode.
    pub async fn resolve(&self, action: &ActionRef) -> Result<Resolution> {
        let (rows, floor) = match &self.source {
            SecretSource::Missing(why) => (self.missing(why)?, None),
            SecretSource::Store(store) | SecretSource::Separate { rows: store, .. } => {
                match store.visible_to(action).await {
                    // The floor is verified only for a store that has one (after `key rotate`).
                    Ok(rows) => {
                        let floor = match (store.floor_record(), self.key.as_ref()) {
                            (Some(record), Some(key)) => match key.floor(Some(record)) {
                                Some(floor) => Some(floor),
                                None => {
                                    self.floor_not_authentic()?;
                                    None
                                }
                            },
                            _ => None,
                        };
                        (rows, floor)
                    }
                    Err(e) => (self.missing(&e.to_string())?, None),
                }
            }
        };
        let resolution = Resolution::resolve(rows, self.key.as_ref(), floor)?;
        for (secret, why) in resolution.unavailable() {
            if self.strictness == Strictness::Strict {
                return Err(Error::Undeliverable {
                    secret_ref: secret.secret_ref(),
                    reason: why.to_string(),
                });
            }
            tracing::warn!(
                secret = %secret.secret_ref(),
                action = %action,
                "secret not delivered: {why}"
            );
        }
        Ok(resolution)
    }

    /// A floor record that the configured key does not authenticate: tampered with, or made
    /// under another key. Unbound rows are not refused then, so it is worth a warning (and a
    /// failure under strict mode).
    fn floor_not_authentic(&self) -> Result<()> {
        let why = "the store's ciphertext floor record is not authentic under the configured key (tampered with, or written under another key): unbound rows are not refused";
        if self.strictness == Strictness::Strict {
            return Err(Error::Store(why.to_owned()));
        }
        tracing::warn!("{why}");
        Ok(())
    }

    fn missing(&self, why: &str) -> Result<Vec<store::SecretRow>> {
        if self.strictness == Strictness::Strict {
            return Err(Error::Store(why.to_owned()));
        }
        tracing::warn!("running without secrets: {why}");
        Ok(Vec::new())
    }

    /// Runs `guest` as `exec.action` with the secrets it may see.
    ///
    /// # Errors
    /// [`Error::Mount`], [`Error::Env`], [`Error::Resolve`], strict-mode errors (all before
    /// the guest starts), and [`Error::Runtime`].
    pub async fn execute(&self, guest: &Guest, exec: Execution) -> Result<Report> {
        let dirs = self.boundary.check(&exec.dirs)?;
        let execution_id = match exec.execution_id {
            Some(id) => id,
            None => uuid::Uuid::new_v4().to_string(),
        };
        let mut env = vec![
            ("ATTUNE_ACTION_REF".to_owned(), exec.action.to_string()),
            ("ATTUNE_PACK_REF".to_owned(), exec.action.pack().to_string()),
            ("ATTUNE_EXECUTION_ID".to_owned(), execution_id.clone()),
        ];
        for (k, v) in exec.env {
            check_env_name(&k)?;
            if v.contains('\0') {
                return Err(Error::Env {
                    name: k,
                    reason: "its value contains a NUL byte",
                });
            }
            env.retain(|(existing, _)| *existing != k);
            env.push((k, v));
        }

        let resolution = self.resolve(&exec.action).await?;
        let log = audit::Log::default();
        for (secret, _) in resolution.unavailable() {
            log.note(
                &secret.secret_ref(),
                audit::Door::Env,
                audit::Outcome::Unavailable,
            );
        }
        let mut secret_env: Vec<(String, SecretString)> = Vec::new();
        let mut env_secrets = Vec::new();
        for secret in resolution.iter() {
            if exec
                .allowed
                .as_ref()
                .is_some_and(|a| !a.contains(&secret.name))
            {
                continue;
            }
            let Delivery::Value(value) = &secret.delivery else {
                continue;
            };
            if value.expose_secret().contains('\0') {
                // A C guest would see a truncated value; get-secret still delivers it whole.
                tracing::warn!(secret = %secret.secret_ref(), "not injected into the environment: value contains a NUL byte");
                continue;
            }
            secret_env.push((secret.name.env_var(), value.clone()));
            log.note(
                &secret.secret_ref(),
                audit::Door::Env,
                audit::Outcome::Delivered,
            );
            env_secrets.push(secret.secret_ref());
        }
        tracing::info!(
            execution = %execution_id,
            action = %exec.action,
            kind = ?guest.kind(),
            visible = resolution.len(),
            injected = env_secrets.len(),
            "execution starting"
        );

        let redact = if exec.redact {
            let mut values = Vec::new();
            for secret in resolution.iter() {
                if let Delivery::Value(v) = &secret.delivery {
                    let v = v.expose_secret();
                    let stored = if secret.encrypted {
                        crate::redact::Stored::Encrypted
                    } else {
                        crate::redact::Stored::Plain
                    };
                    if !v.is_empty() && !stored.masks(v) {
                        match stored {
                            crate::redact::Stored::Encrypted => tracing::warn!(
                                secret = %secret.secret_ref(),
                                "value shorter than {} bytes is not masked in output",
                                stored.min_masked_len()
                            ),
                            crate::redact::Stored::Plain => tracing::warn!(
                                secret = %secret.secret_ref(),
                                "plain value shorter than {} bytes is not masked in output (stored with --plain: configuration, not a secret)",
                                stored.min_masked_len()
                            ),
                        }
                    }
                    values.push((v, stored));
                }
            }
            crate::redact::Patterns::with_storage(values)
        } else {
            crate::redact::Patterns::new(std::iter::empty())
        };

        let mut args = Vec::with_capacity(exec.args.len() + 1);
        args.push(exec.program);
        args.extend(exec.args);
        let setup = GuestSetup {
            args,
            env,
            secret_env,
            dirs,
            stdin: exec.stdin,
            stdout: exec.stdout,
            stderr: exec.stderr,
            limits: exec.limits,
            redact,
            max_output: exec.max_output,
            cancel: exec.cancel,
            secrets: SecretDoor::new(
                resolution,
                exec.allowed,
                exec.limits.secret_calls,
                log.clone(),
            )
            .with_config_get_all(self.config_get_all),
        };
        // Cancelled before it starts: nothing is delivered, so nothing goes on record.
        if setup.cancel.is_cancelled() {
            return Err(runtime::Error::Cancelled.into());
        }
        let started = store::now();
        let execution = |state, ended| audit::ExecutionRecord {
            execution_id: execution_id.clone(),
            action_ref: exec.action.to_string(),
            started: started.clone(),
            ended,
            state,
        };
        // Deliveries through the environment are on record before the guest can read them:
        // a host killed mid-run leaves them in the trail (run `started`, never `ended`).
        let entered = log.records(&started, &execution_id, exec.action.as_str());
        let writer = self.writer();
        let was_entered = writer.is_some() && !entered.is_empty();
        if let (Some(writer), true) = (&writer, was_entered) {
            writer
                .begin(execution(audit::RunState::Started, None), entered)
                .await?;
        }
        let exit = self.runtime.run(guest, setup).await;
        // The end is queued once, after the guest, whatever its outcome (see `flush`). A guest
        // that never started (no free pool slot, a mount that failed) is `not-started`: its
        // environment reached no guest code.
        let state = match exit {
            Err(runtime::Error::PoolExhausted(_) | runtime::Error::Dir { .. }) => {
                audit::RunState::NotStarted
            }
            _ => audit::RunState::Ended,
        };
        if let Some(writer) = &writer {
            let mut records = log.records(&started, &execution_id, exec.action.as_str());
            // The environment door's records were written when the execution was entered.
            records.retain(|r| r.door != audit::Door::Env);
            if was_entered || !records.is_empty() {
                writer
                    .end(execution(state, Some(store::now())), records)
                    .await;
            }
        }
        let exit = exit?;
        if exit.output_capped {
            tracing::warn!(
                execution = %execution_id,
                "guest output was cut at {} bytes per stream",
                exec.max_output
            );
        }
        tracing::info!(
            execution = %execution_id,
            code = exit.code,
            secret_calls = exit.secret_calls,
            "execution finished"
        );
        Ok(Report {
            execution_id,
            exit,
            env_secrets,
            secret_totals: log.totals(),
        })
    }
}

impl Executor {
    /// The audit writer, when secrets come from a store.
    fn writer(&self) -> Option<Arc<audit::Writer>> {
        self.sink.as_ref().map(|sink| self.audit_writer(sink))
    }
}

/// Checks a `--env` name: non-empty, no `=` or NUL, not in the reserved `SECRET_`/`ATTUNE_`
/// namespaces.
fn check_env_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("the name is empty")
    } else if name.contains('=') || name.contains('\0') {
        Some("the name contains '=' or a NUL byte")
    } else if name.to_ascii_uppercase().starts_with(ENV_PREFIX) {
        Some("SECRET_* is reserved for injected secrets; store a secret instead")
    } else if name.to_ascii_uppercase().starts_with(METADATA_PREFIX) {
        Some("ATTUNE_* is reserved for execution metadata")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::Env {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Parses `HOST::GUEST` (wasmtime CLI syntax) or `HOST` (mounted at the same path).
///
/// # Errors
/// A message when either side is empty.
pub fn parse_dir(spec: &str) -> std::result::Result<DirMount, String> {
    let (host, guest) = match spec.split_once("::") {
        Some((h, g)) => (h, g),
        None => (spec, spec),
    };
    if host.is_empty() || guest.is_empty() {
        return Err(format!("expected HOST::GUEST or HOST, got {spec:?}"));
    }
    Ok(DirMount {
        host: PathBuf::from(host),
        guest: guest.to_owned(),
        read_only: false,
    })
}

/// As [`parse_dir`], for a read-only mount (`--dir-ro`).
///
/// # Errors
/// A message when either side is empty.
pub fn parse_dir_ro(spec: &str) -> std::result::Result<DirMount, String> {
    parse_dir(spec).map(|d| DirMount {
        read_only: true,
        ..d
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reserved_env_names_are_refused() {
        for bad in [
            "SECRET_API_KEY",
            "secret_x",
            "ATTUNE_ACTION_REF",
            "",
            "A=B",
            "N\0",
        ] {
            assert!(check_env_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_env_name("RUST_LOG").is_ok());
    }

    #[test]
    fn dir_specs() {
        let d = parse_dir("/tmp/x::/data").unwrap();
        assert_eq!(d.guest, "/data");
        assert_eq!(parse_dir("/tmp").unwrap().guest, "/tmp");
        assert!(parse_dir("::/x").is_err());
    }
}
