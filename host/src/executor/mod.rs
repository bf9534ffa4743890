//! One execution end to end (seed "Secret Injection Flow"): fetch the rows visible to the
//! action in one query, resolve and decrypt the winners, check env names, build the guest's
//! environment from an explicit list, run the guest in its own store, drop every plaintext.
//!
//! ```text
//! mod        Executor (runtime, secret source, key, strictness, boundary, audit writer), Error
//! execution  Execution (one request), Report (what it produced), env-name checks
//! execute    Executor::resolve and Executor::execute: resolve ─► audit ─► run ─► audit
//! mounts     Boundary: what no mount may reach (store, cache, data dir, /proc, /sys, /dev)
//! ```

mod execute;
mod execution;
pub mod mounts;

use std::sync::Arc;

use crate::runtime::{self, GetAll, Runtime};
use crate::secrets::crypto::EncryptionKey;
use crate::store::{audit, resolve, Store};

pub use self::execution::{Execution, Report, DEFAULT_MAX_OUTPUT};
pub use self::mounts::Boundary;

/// Prefix reserved for metadata variables set by the host.
pub const METADATA_PREFIX: &str = "ATTUNE_";

/// Execution failures. Messages name secrets by ref, never by value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// [`crate::store::AttuneKeys`]), the audit trail written to another when given.
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
    /// The audit journal of a SQLite trail: entries and deliveries go there before a guest
    /// has them, instead of waiting for a commit.
    journal: Option<Arc<crate::store::Journal>>,
    /// Whether `wasi:config/store.get-all` is answered ([`Executor::with_config_get_all`]).
    config_get_all: GetAll,
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
        let journal = source.audit().and_then(Store::audit_journal).cloned();
        Self {
            runtime,
            source,
            key,
            strictness,
            boundary,
            sink,
            journal,
            config_get_all: GetAll::Answered,
            audit: std::sync::Mutex::new(None),
        }
    }

    /// Whether components' `wasi:config/store.get-all` is answered ([`GetAll::Answered`], the
    /// default: every secret the action may see, each recorded) or refused with
    /// `upstream("access-denied")` ([`GetAll::Refused`], `security.refuse_config_get_all`).
    #[must_use]
    pub fn with_config_get_all(mut self, get_all: GetAll) -> Self {
        self.config_get_all = get_all;
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

    /// Waits until the audit records of every execution finished so far are stored, or until
    /// a write of the trail fails (logged; the records stay held and are retried, see
    /// [`audit::Writer`]). Call it before shutting the tokio runtime down or reading the trail
    /// back.
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
                let writer = Arc::new(audit::Writer::spawn_journaled(
                    Arc::clone(sink),
                    self.journal.clone(),
                ));
                *slot = Some(Arc::clone(&writer));
                writer
            }
        }
    }

    /// The runtime, to compile guests.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The audit writer, when secrets come from a store.
    fn writer(&self) -> Option<Arc<audit::Writer>> {
        self.sink.as_ref().map(|sink| self.audit_writer(sink))
    }
}
