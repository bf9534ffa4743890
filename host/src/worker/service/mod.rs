//! The worker process: registration and heartbeat, the consumer of `worker.{id}.executions`,
//! and one execution per dispatch.
//!
//! Per dispatch: load the execution; one already ended is acknowledged and skipped (a
//! redelivery; or, when the completion ledger says its `ExecutionCompleted` is still pending,
//! that is published from the committed row first), one found `running` was left by a worker
//! that died and is ended `failed` (never run twice); otherwise it is moved to `running`
//! (`ExecutionStatusChanged`), its action file is loaded (compiled once per content), run with
//! the parameters on stdin and the secrets of `attune.key`, its terminal status and result are
//! committed, `ExecutionCompleted` is published and confirmed by the broker, and only then is
//! the dispatch acknowledged (not confirmed: requeued). A message that is not a dispatch (not
//! JSON, another type, an unknown execution) is dead-lettered to `attune.dlx`.
//!
//! A dispatch whose execution the database refuses to update (a constraint, a trigger: an
//! error that comes back every time) is put back at most [`MAX_REFUSALS`] times, carrying its
//! count in a header ([`super::protocol::REFUSALS_HEADER`]: classic queues keep no delivery
//! count), then given up: the execution is ended `failed` with the reason, or, when even that
//! is refused, the dispatch is dead-lettered. A database that cannot be reached is not a
//! refusal: that dispatch is requeued until it comes back.
//!
//! One file per concern:
//!
//! ```text
//! mod.rs       run: registration, runtime and executor, the shared context, the stop
//! heartbeat.rs the heartbeat thread: the worker-name lock on its connection, deregistration
//! consume.rs   the broker connection, the consume loop with its slots, the drain on shutdown
//! delivery.rs  one delivery: parse, claim, dispatch by status, refusals, the broker's answer
//! execution.rs one execution: start, the guest run, the unstarted endings
//! complete.rs  the terminal commit and ExecutionCompleted
//! cancel.rs    the cancel queue and the cancel handles (bounded)
//! recent.rs    expiring, capped entries by execution id (stray cancels, refusal counts)
//! result.rs    Attune's result document
//! ```

mod cancel;
mod complete;
mod consume;
mod delivery;
mod execution;
mod heartbeat;
mod recent;
mod result;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::postgres::PgPool;
use tokio::sync::watch;

use super::action_files::ActionFiles;
use super::config::{WorkerConfig, RUNTIME_NAME};
use super::metrics::{self, Metrics};
use super::{attune_db, ledger, Error, OWN_SCHEMA};
use crate::executor::{self, Executor, SecretSource};
use crate::runtime::{GetAll, Pooling, Runtime, RuntimeConfig};
use crate::store::{AttuneKeys, OpenMode, Store, StoreOptions};
use cancel::Cancels;
use heartbeat::Heartbeat;
use recent::Recent;

/// Longest wait between two attempts to reach the broker.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How many times a dispatch whose execution the database refuses to update is handled before
/// the worker gives it up (fault K5); counted with the message
/// ([`super::protocol::REFUSALS_HEADER`]), so across restarts of the worker.
pub const MAX_REFUSALS: u32 = 5;

/// How long this process keeps the refusal count of a dispatch after its last refusal:
/// twice the dispatch queue's message TTL (a dispatch waiting longer than that in the queue
/// has been dead-lettered, and will not come back).
const REFUSALS_TTL: Duration = cancel::STRAY_CANCEL_TTL;

/// Most refusal counts kept; past it the oldest is dropped (that dispatch then counts from its
/// header only).
const MAX_REFUSAL_ENTRIES: usize = 10_000;

/// Runs the worker until `shutdown` turns `true`: takes the lock of its `worker.name` (one
/// process per name), registers, heartbeats, consumes dispatches; then stops consuming, lets
/// running executions finish and cancels the rest, all within `worker.shutdown_timeout`,
/// marks itself `inactive` and returns.
///
/// # Errors
/// [`Error::Database`] when Attune's database cannot be reached at start,
/// [`Error::NameInUse`] when another process of the same `worker.name` runs,
/// [`Error::NameLost`] (after a drain as on shutdown) when that happened while running (the
/// lock's connection was cut and another process took the lock),
/// [`Error::Declare`] when the worker's queues exist with other arguments, [`Error::Config`]
/// when `worker.metrics_address` cannot be bound, [`Error::Runtime`].
/// A lost broker connection is retried with backoff, not an error.
pub async fn run(mut cfg: WorkerConfig, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
    let pool = attune_db::connect(&cfg.database_url, cfg.db_max_connections).await?;
    // Before the row is touched: a second process of this name changes nothing.
    let mut heartbeat = Heartbeat::lock(&cfg.database_url, &cfg.name, cfg.heartbeat).await?;
    let metrics = Arc::new(Metrics::new());
    let _metrics_endpoint = match cfg.metrics_address {
        Some(address) => {
            let listener = metrics::bind(address).await?;
            let bound = listener.local_addr().unwrap_or(address);
            tracing::info!(address = %bound, "metrics served at http://{bound}/metrics");
            Some(AbortOnDrop(tokio::spawn(metrics::serve(
                listener,
                Arc::clone(&metrics),
            ))))
        }
        None => None,
    };
    let capabilities = json!({
        "runtimes": [RUNTIME_NAME],
        "max_concurrent_executions": cfg.max_concurrent,
        "worker_version": env!("CARGO_PKG_VERSION"),
    });
    let host = cfg.name.trim_start_matches("worker-").to_owned();
    let worker_id = attune_db::register(&pool, &cfg.name, &host, &capabilities).await?;
    tracing::info!(worker_id, name = %cfg.name, "registered in attune.worker");
    heartbeat.begin(worker_id);

    let runtime = Arc::new(Runtime::new(RuntimeConfig {
        pooling: Some(Pooling {
            executions: cfg.max_concurrent,
            ..Pooling::default()
        }),
        ..RuntimeConfig::default()
    })?);
    let mut own = StoreOptions::new(cfg.database_url.clone());
    OWN_SCHEMA.clone_into(&mut own.schema);
    own.max_connections = 2;
    let audit = match Store::open_with(&own, OpenMode::CreateIfMissing).await {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!("audit trail disabled: cannot open schema attune_wasm: {e}");
            None
        }
    };
    // The completion ledger lives in the schema the store just created.
    let ledger = match &audit {
        Some(_) => match ledger::ensure(&pool).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "completion ledger disabled: cannot create attune_wasm.completion: {e}"
                );
                false
            }
        },
        None => {
            tracing::warn!("completion ledger disabled: no schema attune_wasm");
            false
        }
    };
    let executor = Arc::new(
        Executor::new(
            runtime,
            SecretSource::Separate {
                rows: AttuneKeys::store(pool.clone()),
                audit,
            },
            cfg.key.take(),
            if cfg.strict {
                executor::Strictness::Strict
            } else {
                executor::Strictness::Lenient
            },
        )
        .with_config_get_all(if cfg.refuse_config_get_all {
            GetAll::Refused
        } else {
            GetAll::Answered
        }),
    );
    let (publisher, _) = watch::channel(None);
    let ctx = Arc::new(Ctx {
        pool: pool.clone(),
        executor,
        worker_id,
        ledger,
        publisher,
        action_files: ActionFiles::default(),
        published: std::sync::Mutex::default(),
        published_added: tokio::sync::Notify::new(),
        max_stdout: cfg.max_stdout,
        max_stderr: cfg.max_stderr,
        packs_base_dir: cfg.packs_base_dir.clone(),
        default_timeout: cfg.default_timeout,
        in_flight: std::sync::Mutex::default(),
        cancels: Cancels::default(),
        refusals: std::sync::Mutex::new(Recent::new(REFUSALS_TTL, MAX_REFUSAL_ENTRIES)),
        metrics,
    });

    // Stops on SIGTERM, or when the name lock was lost to another process.
    let (stopping, mut stop) = watch::channel(false);
    let mut lost = heartbeat.lost();
    let _stopper = AbortOnDrop(tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => {}
            _ = lost.wait_for(|lost| *lost) => {}
        }
        stopping.send_replace(true);
    }));
    let recorder = Arc::clone(&ctx);
    let recorder = AbortOnDrop(tokio::spawn(async move {
        recorder.record_published_loop().await;
    }));
    let consumed = consume::consume(&ctx, &cfg, &mut stop).await;
    drop(recorder);
    ctx.record_published().await;
    let lost = *heartbeat.lost().borrow();
    let deadline = match &consumed {
        Ok(deadline) => *deadline,
        Err(_) => std::time::Instant::now(),
    };
    heartbeat.stop(deadline);
    ctx.executor.flush().await;
    tracing::info!(worker_id, "worker stopped");
    if lost {
        return Err(Error::NameLost(cfg.name.clone()));
    }
    consumed.map(|_| ())
}

/// What every execution task shares.
struct Ctx {
    pool: PgPool,
    executor: Arc<Executor>,
    worker_id: i64,
    /// Whether the completion ledger (`attune_wasm.completion`, [`ledger`]) is in use.
    ledger: bool,
    /// The channel (confirm mode) results are published on; replaced on reconnection.
    publisher: watch::Sender<Option<lapin::Channel>>,
    /// The compiled guest of each action file, by path and version.
    action_files: ActionFiles,
    /// Executions whose `ExecutionCompleted` the broker confirmed, not yet recorded in the
    /// ledger (the next terminal commit records them, or `record_published_loop`).
    published: std::sync::Mutex<Vec<i64>>,
    /// Woken when an id is added to `published`.
    published_added: tokio::sync::Notify,
    max_stdout: u64,
    max_stderr: u64,
    packs_base_dir: PathBuf,
    default_timeout: Duration,
    /// Executions this process is handling now, by id: a redelivery of one of them (after a
    /// lost broker connection) waits for it instead of taking it for abandoned.
    in_flight: std::sync::Mutex<std::collections::HashMap<i64, watch::Receiver<()>>>,
    /// Cancel handles by execution id (bounded, see [`Cancels`]).
    cancels: Cancels,
    /// Refusals so far by execution id, as this process counted them (see [`MAX_REFUSALS`]:
    /// the count when a dispatch could not be put back with its header); an entry lives
    /// until its dispatch is acknowledged or dead-lettered, or [`REFUSALS_TTL`] after its
    /// last refusal (its dispatch expired in the queue), at most [`MAX_REFUSAL_ENTRIES`].
    refusals: std::sync::Mutex<Recent<u32>>,
    /// Counters served at `/metrics`.
    metrics: Arc<Metrics>,
}

/// Aborts a task when dropped (the cancel consumer of a connection that is gone).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
