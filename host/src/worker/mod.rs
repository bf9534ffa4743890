//! `attune-wasm worker`: a drop-in Attune worker for WebAssembly actions (issue 12).
//!
//! Data flow, one module per step:
//!
//! ```text
//! config (Attune's keys) ─► attune_db (register, heartbeat; execution, action, attune.key)
//!        ─► protocol (attune.executions, worker.{id}.executions, envelopes)
//!        ─► service (consume a dispatch, run it through crate::executor, write the result,
//!                    publish ExecutionStatusChanged / ExecutionCompleted, then ack)
//! action_files: each action file read and hashed once per version (path, inode, size, times)
//! ledger: attune_wasm.completion, which ExecutionCompleted are still to publish
//! scheduler: `attune-wasm execute`, a stand-in for Attune's scheduler (wasm actions only)
//! metrics: opt-in Prometheus counters (`worker.metrics_address`)
//! fault: test-only fault hooks (feature `fault-injection`, never in a plain build)
//! ```
//!
//! Secrets come from Attune's own `attune.key` (read only, [`crate::store::AttuneKeys`]) and reach
//! the guest through the library's three doors; our own tables (the audit trail) live in the
//! schema [`OWN_SCHEMA`], never in Attune's. A dispatch is acknowledged only after its
//! execution's terminal status is committed and its `ExecutionCompleted` published.

pub mod action_files;
pub mod attune_db;
pub mod config;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod ledger;
pub mod metrics;
pub mod protocol;
pub mod scheduler;
pub mod service;

use crate::executor;

/// The PostgreSQL schema of this host's own tables (audit trail, migration ledger) on
/// Attune's database.
pub const OWN_SCHEMA: &str = "attune_wasm";

/// Worker and scheduler failures. Messages name queues, ids and refs, never a value or a
/// password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is missing or out of range.
    #[error("invalid worker configuration: {0}")]
    Config(String),
    /// Attune's database could not be reached or refused a statement.
    #[error("Attune database: {0}")]
    Database(String),
    /// The broker could not be reached or refused an operation.
    #[error("RabbitMQ: {0}")]
    Broker(String),
    /// A mandatory message (a dispatch) reached no queue: the worker has not declared its
    /// queue yet (it registers first, then declares).
    #[error(
        "the dispatch on {0} reached no queue: the worker has not declared its queue yet (just started?); the execution was marked failed, dispatch again"
    )]
    NotRouted(String),
    /// An exchange or queue could not be declared (e.g. it exists with other arguments).
    #[error("cannot declare {what}: {reason}")]
    Declare {
        /// The exchange, queue or binding, with the arguments this worker declares.
        what: String,
        /// The broker's answer.
        reason: String,
    },
    /// Another process holds the lock of this `worker.name` (it runs a worker of that name
    /// on the same database): two processes of one name would share one worker id and one
    /// queue, and each would take the other's running executions for abandoned.
    #[error(
        "another worker process named {0} is running on this database (it holds the lock of that worker.name): give each worker process a worker.name of its own"
    )]
    NameInUse(String),
    /// The connection holding this worker's name lock was cut, and another process of the
    /// same name took the lock meanwhile: this one stopped consuming.
    #[error(
        "worker {0} lost the lock of its worker.name to another process (its database connection was cut): it stopped consuming"
    )]
    NameLost(String),
    /// `execute`: no worker can take the execution.
    #[error(
        "no active worker runs wasm actions (status active, runtime wasm, a heartbeat in the last {0} s): start one with attune-wasm worker"
    )]
    NoWorker(u64),
    /// `execute`: the action is not registered.
    #[error("action {0} not found in attune.action")]
    UnknownAction(String),
    /// `execute --params` is not a JSON object.
    #[error("invalid --params: {0}")]
    Params(String),
    /// `execute --wait`: the execution did not end in time.
    #[error("execution {id} did not end within {secs} s (status {status})")]
    WaitTimeout {
        /// Execution id.
        id: i64,
        /// Seconds waited.
        secs: u64,
        /// Its status then.
        status: String,
    },
    /// Attune's database refused a statement about one execution (a constraint, a trigger, a
    /// permission): retrying the same statement will not help. Connection losses and
    /// transaction conflicts are [`Error::Database`].
    #[error("Attune database refused the statement: {0}")]
    Refused(String),
    /// The runtime could not be built.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::Error),
}

impl Error {
    /// [`Error::Database`] from a sqlx error (whose text carries no password).
    pub fn db(e: sqlx::Error) -> Self {
        Self::Database(e.to_string())
    }

    /// [`Error::Refused`] when the database answered with an error that will come again
    /// (SQLSTATE classes other than 08 connection, 40 transaction rollback, 53 insufficient
    /// resources, 57 operator intervention, 58 system error), else [`Error::Database`].
    pub fn statement(e: sqlx::Error) -> Self {
        let transient = |code: &str| {
            ["08", "40", "53", "57", "58"]
                .iter()
                .any(|c| code.starts_with(c))
        };
        match e.as_database_error().and_then(|d| d.code()) {
            Some(code) if !transient(&code) => Self::Refused(e.to_string()),
            _ => Self::db(e),
        }
    }
}

/// Why an execution ended `failed` (or `timeout`) around its guest: the `error` of its result.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The execution's action is not in `attune.action`.
    #[error("action {0} not found in attune.action")]
    ActionMissing(String),
    /// The action's ref is not a valid `pack.action`.
    #[error("action ref {0:?} is not a valid pack.action ref")]
    BadRef(String),
    /// The pack ref or entrypoint would leave `{packs_base_dir}/{pack}/actions/`.
    #[error("entrypoint {entrypoint:?} of pack {pack:?} is not a path inside the pack's actions directory")]
    BadEntrypoint {
        /// The pack ref.
        pack: String,
        /// The entrypoint.
        entrypoint: String,
    },
    /// The action file could not be read.
    #[error("cannot read action file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A redelivered dispatch found its execution `running`: the worker that ran it stopped
    /// before it ended. It is not run twice.
    #[error("the worker running this execution stopped before it ended; it was not run again")]
    Orphaned,
    /// The database refused this execution's updates [`service::MAX_REFUSALS`] times: the
    /// worker gave it up (the error of the last refusal).
    #[error("the worker gave this execution up after Attune's database refused it {attempts} times: {reason}")]
    GivenUp {
        /// Refusals.
        attempts: u32,
        /// The last refusal.
        reason: String,
    },
    /// The database refused the result document of a run (a constraint on `result` or the
    /// status); the execution ends `failed` with this instead.
    #[error(
        "the result of this execution could not be stored (Attune's database refused it): {0}"
    )]
    ResultRefused(String),
    /// The worker panicked while handling the execution (a bug). The panic's message is not
    /// used: it could hold secret data.
    #[error("the worker failed internally while handling this execution (a bug; details withheld, they could hold secret data); please report it")]
    Internal,
    /// The execution was being cancelled before it started.
    #[error("cancelled before it started")]
    CancelledBeforeStart,
    /// The library refused or failed the execution (compile, link, secrets, limits, timeout).
    #[error(transparent)]
    Executor(#[from] executor::Error),
}
