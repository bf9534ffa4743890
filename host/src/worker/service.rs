//! The worker process: registration and heartbeat, the consumer of `worker.{id}.executions`,
//! and one execution per dispatch.
//!
//! Per dispatch: load the execution; one already ended is acknowledged and skipped (a
//! redelivery), one found `running` was left by a worker that died and is ended `failed`
//! (never run twice); otherwise it is moved to `running` (`ExecutionStatusChanged`), its action
//! file is loaded (compiled once per content), run with the parameters on stdin and the
//! secrets of `attune.key`, its terminal status and result are committed, `ExecutionCompleted`
//! is published, and only then is the dispatch acknowledged. A message that is not a dispatch
//! (not JSON, another type, an unknown execution) is dead-lettered to `attune.dlx`.
//!
//! A dispatch whose execution the database refuses to update (a constraint, a trigger: an
//! error that comes back every time) is requeued at most [`MAX_REFUSALS`] times by this
//! process (classic queues keep no delivery count, so the count is the worker's), then given
//! up: the execution is ended `failed` with the reason, or, when even that is refused, the
//! dispatch is dead-lettered. A database that cannot be reached is not a refusal: that
//! dispatch is requeued until it comes back.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::postgres::PgPool;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::attune_db::{self, ActionRow, ExecutionRow, TERMINAL};
use super::config::{WorkerConfig, RUNTIME_NAME};
use super::metrics::{self, Metrics};
use super::protocol::{self, Envelope, ExecutionRequested};
use super::{Error, Failure, OWN_SCHEMA};
use crate::executor::{self, Execution, Executor, SecretSource};
use crate::runtime::{self, GetAll, Limits, Output, Pooling, Runtime, RuntimeConfig, Stdin};
use crate::secrets::names::ActionRef;
use crate::store::{AttuneKeys, OpenMode, Store, StoreOptions};

/// Longest wait between two attempts to reach the broker.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How many times this process handles a dispatch whose execution the database refuses to
/// update before it gives the dispatch up (fault K5).
pub const MAX_REFUSALS: u32 = 5;

/// Runs the worker until `shutdown` turns `true`: registers, heartbeats, consumes dispatches;
/// then stops consuming, lets running executions finish (up to `worker.shutdown_timeout`),
/// marks itself `inactive` and returns.
///
/// # Errors
/// [`Error::Database`] when Attune's database cannot be reached at start,
/// [`Error::Declare`] when the worker's queues exist with other arguments, [`Error::Config`]
/// when `worker.metrics_address` cannot be bound, [`Error::Runtime`].
/// A lost broker connection is retried with backoff, not an error.
pub async fn run(mut cfg: WorkerConfig, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
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
    let pool = attune_db::connect(&cfg.database_url, cfg.db_max_connections).await?;
    let capabilities = json!({
        "runtimes": [RUNTIME_NAME],
        "max_concurrent_executions": cfg.max_concurrent,
        "worker_version": env!("CARGO_PKG_VERSION"),
    });
    let host = cfg.name.trim_start_matches("worker-").to_owned();
    let worker_id = attune_db::register(&pool, &cfg.name, &host, &capabilities).await?;
    tracing::info!(worker_id, name = %cfg.name, "registered in attune.worker");

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
    let executor = Executor::new(
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
    );
    let executor = Arc::new(executor.with_config_get_all(if cfg.refuse_config_get_all {
        GetAll::Refused
    } else {
        GetAll::Answered
    }));
    let (publisher, _) = watch::channel(None);
    let ctx = Arc::new(Ctx {
        pool: pool.clone(),
        executor,
        worker_id,
        publisher,
        max_stdout: cfg.max_stdout,
        max_stderr: cfg.max_stderr,
        packs_base_dir: cfg.packs_base_dir.clone(),
        default_timeout: cfg.default_timeout,
        in_flight: std::sync::Mutex::default(),
        cancels: std::sync::Mutex::default(),
        refusals: std::sync::Mutex::default(),
        metrics,
    });
    let heartbeat = Heartbeat::start(&cfg.database_url, worker_id, cfg.heartbeat)?;

    let consumed = consume(&ctx, &cfg, &mut shutdown).await;
    heartbeat.stop();
    if let Err(e) = attune_db::deregister(&pool, worker_id).await {
        tracing::error!("cannot mark the worker inactive: {e}");
    }
    ctx.executor.flush().await;
    tracing::info!(worker_id, "worker stopped");
    consumed
}

/// What every execution task shares.
struct Ctx {
    pool: PgPool,
    executor: Arc<Executor>,
    worker_id: i64,
    /// The channel (confirm mode) results are published on; replaced on reconnection.
    publisher: watch::Sender<Option<Channel>>,
    max_stdout: u64,
    max_stderr: u64,
    packs_base_dir: PathBuf,
    default_timeout: Duration,
    /// Executions this process is handling now, by id: a redelivery of one of them (after a
    /// lost broker connection) waits for it instead of taking it for abandoned.
    in_flight: std::sync::Mutex<std::collections::HashMap<i64, watch::Receiver<()>>>,
    /// Cancel handles by execution id: of running executions, and of executions cancelled
    /// before their dispatch came (already cancelled: they end at once when it does).
    cancels: std::sync::Mutex<std::collections::HashMap<i64, runtime::Cancel>>,
    /// Refusals so far by execution id (see [`MAX_REFUSALS`]); an entry lives until its
    /// dispatch is acknowledged or dead-lettered.
    refusals: std::sync::Mutex<std::collections::HashMap<i64, u32>>,
    /// Counters served at `/metrics`.
    metrics: Arc<Metrics>,
}

/// Marks an execution as handled by this process until dropped; waiters on its receiver are
/// woken when it is.
struct InFlight<'a> {
    ctx: &'a Ctx,
    id: i64,
    _done: watch::Sender<()>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ctx.in_flight().remove(&self.id);
    }
}

/// The heartbeat, on a thread and a tokio runtime of its own (with its own database
/// connection): guests run on the main runtime's threads without yielding, so CPU-bound
/// executions on every slot would otherwise delay the beats until the scheduler takes the
/// worker for dead. Beats every `period` on the database's clock; a failed beat is logged and
/// retried at the next period.
struct Heartbeat {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    fn start(url: &str, id: i64, period: Duration) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the heartbeat runtime: {e}")))?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let url = url.to_owned();
        let thread = std::thread::Builder::new()
            .name("attune-heartbeat".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut pool: Option<PgPool> = None;
                    loop {
                        tokio::select! {
                            _ = &mut stopped => return,
                            _ = tick.tick() => {}
                        }
                        if pool.is_none() {
                            match attune_db::connect(&url, 1).await {
                                Ok(p) => pool = Some(p),
                                Err(e) => tracing::error!("heartbeat failed: {e}"),
                            }
                        }
                        if let Some(p) = &pool {
                            if let Err(e) = attune_db::heartbeat(p, id).await {
                                tracing::error!("heartbeat failed: {e}");
                            }
                        }
                    }
                });
            })
            .map_err(|e| Error::Config(format!("cannot start the heartbeat thread: {e}")))?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Stops beating (before the worker is marked inactive).
    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The consume loop, reconnecting to the broker with backoff, until `shutdown`; then drains.
async fn consume(
    ctx: &Arc<Ctx>,
    cfg: &WorkerConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), Error> {
    let slots = Arc::new(Semaphore::new(
        usize::try_from(cfg.max_concurrent).unwrap_or(1),
    ));
    // Attune's prefetch: max_concurrent_tasks + 2; a delivery waits for a free slot.
    let prefetch = u16::try_from(cfg.max_concurrent.saturating_add(2)).unwrap_or(u16::MAX);
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    let mut last: Option<(Connection, Channel, String)> = None;
    'connect: loop {
        if *shutdown.borrow() {
            break;
        }
        let connected = async {
            let conn = Connection::connect(&cfg.amqp_url, ConnectionProperties::default())
                .await
                .map_err(|e| Error::Broker(format!("cannot connect: {e}")))?;
            let (consumer, channel, tag) = open_consumer(&conn, ctx, prefetch).await?;
            Ok::<_, Error>((conn, consumer, channel, tag))
        }
        .await;
        let (conn, mut consumer, channel, tag) = match connected {
            Ok(c) => c,
            Err(e @ Error::Declare { .. }) => return Err(e),
            Err(e) => {
                tracing::error!("{e}; retrying in {backoff:?}");
                tokio::select! {
                    _ = shutdown.changed() => break 'connect,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let cancels = match open_cancels(&conn, ctx.worker_id).await {
            Ok(consumer) => tokio::spawn(cancel_loop(Arc::clone(ctx), consumer)),
            Err(e) => {
                tracing::error!("{e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let _cancels = AbortOnDrop(cancels);
        // A lost connection is noticed here even while every slot is busy (running executions
        // publish their results on the next connection, so it must not wait for a free slot).
        let mut events = conn.events_listener();
        tracing::info!(queue = %protocol::executions_queue(ctx.worker_id), "consuming dispatches");
        loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = shutdown.changed() => {
                    last = Some((conn, channel, tag));
                    break 'connect;
                }
                Some(lapin::Event::Error(e)) = events.next() => {
                    tracing::warn!("broker connection lost ({e}); reconnecting");
                    break;
                }
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break 'connect,
                },
            };
            let next = tokio::select! {
                _ = shutdown.changed() => {
                    last = Some((conn, channel, tag));
                    break 'connect;
                }
                Some(lapin::Event::Error(e)) = events.next() => {
                    tracing::warn!("broker connection lost ({e}); reconnecting");
                    break;
                }
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let ctx = Arc::clone(ctx);
                    tasks.spawn(async move {
                        ctx.handle(delivery).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!("broker connection lost ({e}); reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("the broker ended the consumer; reconnecting");
                    break;
                }
            }
        }
    }
    // Stop consuming; what was prefetched and not started returns to the queue on close.
    if let Some((_, channel, tag)) = &last {
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    let drained = tokio::time::timeout(cfg.shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // The rest are cancelled: each ends `cancelled`, reported and acknowledged.
        tracing::warn!(
            running = tasks.len(),
            "shutdown timeout passed: cancelling the executions still running"
        );
        for cancel in ctx
            .cancels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
        {
            cancel.cancel();
        }
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if ended.is_err() {
            tracing::warn!(
                running = tasks.len(),
                "shutdown: executions still not ended are abandoned unacknowledged (their dispatches return to the queue)"
            );
            tasks.abort_all();
        }
    }
    if let Some((conn, _, _)) = last {
        let _ = conn.close(200, "worker shutdown".into()).await;
    }
    Ok(())
}

/// Aborts a task when dropped (the cancel consumer of a connection that is gone).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Consumes `worker.{id}.cancel` (declared with the dispatch queue).
async fn open_cancels(conn: &Connection, id: i64) -> Result<lapin::Consumer, Error> {
    let broker = |what: &'static str| move |e: lapin::Error| Error::Broker(format!("{what}: {e}"));
    let channel = conn
        .create_channel()
        .await
        .map_err(broker("cannot open a channel"))?;
    channel
        .basic_qos(10, BasicQosOptions::default())
        .await
        .map_err(broker("cannot set the prefetch count"))?;
    channel
        .basic_consume(
            protocol::cancel_queue(id).as_str().into(),
            format!("attune-wasm-cancel-{id}-{}", uuid::Uuid::new_v4().simple())
                .as_str()
                .into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("cannot consume the worker's cancel queue"))
}

/// `ExecutionCancelRequested`: cancels the execution if it runs here, or marks it so that it
/// ends `cancelled` at once when its dispatch comes. Malformed messages are dead-lettered.
async fn cancel_loop(ctx: Arc<Ctx>, mut consumer: lapin::Consumer) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let id = serde_json::from_slice::<Envelope<Value>>(&delivery.data)
            .ok()
            .filter(|e| e.message_type == "ExecutionCancelRequested")
            .and_then(|e| e.payload.get("execution_id").and_then(Value::as_i64));
        let answered = match id {
            Some(id) => {
                tracing::info!(execution = id, "cancel requested");
                ctx.cancel_handle(id).cancel();
                delivery.acker.ack(BasicAckOptions::default()).await
            }
            None => {
                tracing::error!("cancel request dead-lettered: not an ExecutionCancelRequested with a numeric execution_id");
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: false,
                        multiple: false,
                    })
                    .await
            }
        };
        if let Some(reason) = answer_failure(answered) {
            tracing::warn!("cannot answer a delivery ({reason}); the broker will redeliver it");
        }
    }
}

/// Why an ack or nack did not reach the broker, if it did not: lapin answers `Ok(false)`
/// (not an error) for a delivery whose channel was closed meanwhile.
fn answer_failure(answered: Result<bool, lapin::Error>) -> Option<String> {
    match answered {
        Ok(true) => None,
        Ok(false) => Some("its channel is closed".to_owned()),
        Err(e) => Some(e.to_string()),
    }
}

/// Declares the topology, opens the publishing channel (confirm mode) and the consumer.
async fn open_consumer(
    conn: &Connection,
    ctx: &Ctx,
    prefetch: u16,
) -> Result<(lapin::Consumer, Channel, String), Error> {
    let broker = |what: &'static str| move |e: lapin::Error| Error::Broker(format!("{what}: {e}"));
    let channel = conn
        .create_channel()
        .await
        .map_err(broker("cannot open a channel"))?;
    protocol::declare_common(&channel).await?;
    protocol::declare_worker(&channel, ctx.worker_id).await?;
    let publisher = conn
        .create_channel()
        .await
        .map_err(broker("cannot open a channel"))?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker("cannot enable publisher confirms"))?;
    ctx.publisher.send_replace(Some(publisher));
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(broker("cannot set the prefetch count"))?;
    let tag = format!(
        "attune-wasm-worker-{}-{}",
        ctx.worker_id,
        uuid::Uuid::new_v4().simple()
    );
    let consumer = channel
        .basic_consume(
            protocol::executions_queue(ctx.worker_id).as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("cannot consume the worker's queue"))?;
    Ok((consumer, channel, tag))
}

/// What to answer the broker about one delivery.
enum Disposition {
    /// Done (terminal status committed, or nothing to do).
    Ack,
    /// Never processable: to `attune.dlx`.
    DeadLetter,
    /// A transient failure (database unreachable): back to the queue, later.
    Requeue,
    /// The database refused an update of the execution (the error): requeued, counted, and
    /// given up after [`MAX_REFUSALS`].
    Refused(String),
}

impl Ctx {
    fn in_flight(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<i64, watch::Receiver<()>>> {
        // A poisoned lock only means a panic while inserting or removing; the map is valid.
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cancel handle of execution `id` (created when there is none yet).
    fn cancel_handle(&self, id: i64) -> runtime::Cancel {
        // A poisoned lock only means a panic while inserting or removing; the map is valid.
        self.cancels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id)
            .or_default()
            .clone()
    }

    fn forget_cancel(&self, id: i64) {
        self.cancels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }

    /// Claims execution `id` for this delivery, or answers the receiver of the delivery that
    /// already handles it.
    fn claim(&self, id: i64) -> Result<InFlight<'_>, watch::Receiver<()>> {
        let mut map = self.in_flight();
        if let Some(done) = map.get(&id) {
            return Err(done.clone());
        }
        let (done, waiter) = watch::channel(());
        map.insert(id, waiter);
        Ok(InFlight {
            ctx: self,
            id,
            _done: done,
        })
    }

    async fn handle(&self, delivery: Delivery) {
        let (id, disposition) = match parse(&delivery) {
            Some((id, correlation)) => {
                let disposition = self.dispatch(id, correlation.clone()).await;
                (Some(id), self.settle(id, disposition, correlation).await)
            }
            None => (None, Disposition::DeadLetter),
        };
        #[cfg(feature = "fault-injection")]
        if let (Some(id), Disposition::Ack, false) = (id, &disposition, delivery.redelivered) {
            super::fault::pause_before_ack(id).await;
        }
        let answered = match disposition {
            Disposition::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
            Disposition::DeadLetter => {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: false,
                        multiple: false,
                    })
                    .await
            }
            Disposition::Requeue | Disposition::Refused(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await
            }
        };
        // The channel is gone (lapin answers `Ok(false)` for a delivery of a closed channel):
        // the broker redelivers, and the redelivery finds the execution ended (acknowledged
        // and skipped then). An old delivery's tag is never answered on a newer channel (each
        // acker belongs to its own channel).
        match answer_failure(answered) {
            Some(reason) => tracing::warn!(
                execution = id,
                "cannot answer a delivery ({reason}); the broker will redeliver it"
            ),
            None => tracing::debug!(execution = id, "delivery answered"),
        }
    }

    /// Counts a refusal; past [`MAX_REFUSALS`] gives the execution up. Forgets the count once
    /// the dispatch is acknowledged or dead-lettered.
    async fn settle(
        &self,
        id: i64,
        disposition: Disposition,
        correlation: Option<String>,
    ) -> Disposition {
        let refusals = || {
            self.refusals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        match disposition {
            Disposition::Refused(why) => {
                let attempts = {
                    let mut map = refusals();
                    let n = map.entry(id).or_insert(0);
                    *n += 1;
                    *n
                };
                if attempts < MAX_REFUSALS {
                    tracing::warn!(
                        execution = id,
                        attempts,
                        "Attune's database refused an update of this execution, dispatch requeued: {why}"
                    );
                    return Disposition::Refused(why);
                }
                refusals().remove(&id);
                self.metrics.given_up();
                self.give_up(id, attempts, why, correlation).await
            }
            Disposition::Requeue => Disposition::Requeue,
            done => {
                if !refusals().is_empty() {
                    refusals().remove(&id);
                }
                done
            }
        }
    }

    /// Ends an execution the database refused [`MAX_REFUSALS`] times `failed`, or, when that
    /// is refused too, dead-letters its dispatch.
    async fn give_up(
        &self,
        id: i64,
        attempts: u32,
        why: String,
        correlation: Option<String>,
    ) -> Disposition {
        let execution = match attune_db::execution(&self.pool, id).await {
            Ok(Some(e)) => e,
            Ok(None) | Err(_) => {
                tracing::error!(
                    execution = id,
                    attempts,
                    "dispatch dead-lettered: Attune's database refused this execution {attempts} times"
                );
                return Disposition::DeadLetter;
            }
        };
        if TERMINAL.contains(&execution.status.as_str()) {
            return Disposition::Ack;
        }
        let failure = Failure::GivenUp {
            attempts,
            reason: why,
        };
        let expected = execution.status.clone();
        match self
            .end_unstarted(&execution, &expected, "failed", &failure, correlation)
            .await
        {
            Disposition::Ack => Disposition::Ack,
            _ => {
                tracing::error!(
                    execution = id,
                    attempts,
                    "dispatch dead-lettered: Attune's database refused this execution {attempts} times, and refused ending it failed"
                );
                Disposition::DeadLetter
            }
        }
    }

    /// One dispatch of execution `id`: what to answer the broker.
    async fn dispatch(&self, id: i64, correlation: Option<String>) -> Disposition {
        let _claim = match self.claim(id) {
            Ok(claim) => claim,
            Err(mut done) => {
                // The broker redelivered a dispatch this process is still running (its
                // connection was lost): acknowledged once that run has ended and committed.
                while done.changed().await.is_ok() {}
                tracing::info!(
                    execution = id,
                    "redelivered while it ran here: acknowledged after it ended"
                );
                return Disposition::Ack;
            }
        };
        let execution = match attune_db::execution(&self.pool, id).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                tracing::error!(
                    execution = id,
                    "dispatch dead-lettered: no such execution in attune.execution"
                );
                return Disposition::DeadLetter;
            }
            Err(e) => {
                tracing::error!(
                    execution = id,
                    "cannot load the execution, dispatch requeued: {e}"
                );
                return Disposition::Requeue;
            }
        };
        let status = execution.status.clone();
        match status.as_str() {
            s if TERMINAL.contains(&s) => {
                tracing::info!(
                    execution = id,
                    status = s,
                    "execution already ended: dispatch acknowledged and skipped"
                );
                Disposition::Ack
            }
            "running" => {
                self.end_unstarted(
                    &execution,
                    "running",
                    "failed",
                    &Failure::Orphaned,
                    correlation,
                )
                .await
            }
            "canceling" => {
                self.end_unstarted(
                    &execution,
                    "canceling",
                    "cancelled",
                    &Failure::CancelledBeforeStart,
                    correlation,
                )
                .await
            }
            _ => self.run_execution(execution, correlation).await,
        }
    }

    /// Ends an execution that this worker will not run (left `running` by a dead worker, or
    /// `canceling`): status and result committed, `ExecutionCompleted` published.
    async fn end_unstarted(
        &self,
        execution: &ExecutionRow,
        expected: &str,
        status: &str,
        why: &Failure,
        correlation: Option<String>,
    ) -> Disposition {
        let action = attune_db::action(&self.pool, execution)
            .await
            .ok()
            .flatten();
        let result = failure_result(why, status == "cancelled", 0);
        tracing::warn!(execution = execution.id, action = %execution.action_ref, status, "execution ended without running: {why}");
        self.complete(
            execution,
            action.as_ref(),
            expected,
            status,
            result,
            correlation,
        )
        .await
    }

    async fn run_execution(
        &self,
        execution: ExecutionRow,
        correlation: Option<String>,
    ) -> Disposition {
        let id = execution.id;
        let previous = match attune_db::start(&self.pool, id, self.worker_id).await {
            Ok(Some(previous)) => previous,
            Ok(None) => {
                tracing::info!(
                    execution = id,
                    "execution changed state before it started: dispatch acknowledged and skipped"
                );
                return Disposition::Ack;
            }
            Err(Error::Refused(why)) => return Disposition::Refused(why),
            Err(e) => {
                tracing::error!(
                    execution = id,
                    "cannot start the execution, dispatch requeued: {e}"
                );
                return Disposition::Requeue;
            }
        };
        let changed = Envelope::new(
            "ExecutionStatusChanged",
            protocol::StatusChanged {
                execution_id: id,
                action_ref: execution.action_ref.clone(),
                previous_status: previous,
                new_status: "running".into(),
                changed_at: protocol::now_rfc3339(),
            },
            correlation.clone(),
        );
        if let Err(e) = self.publish(protocol::STATUS_CHANGED_KEY, &changed).await {
            tracing::error!(execution = id, "ExecutionStatusChanged not published: {e}");
        }

        let action = match attune_db::action(&self.pool, &execution).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(execution = id, "cannot load the action: {e}");
                None
            }
        };
        let started = Instant::now();
        let outcome = match &action {
            Some(action) => {
                let _running = self.metrics.running();
                self.run_guest(&execution, action).await
            }
            None => Err(Failure::ActionMissing(execution.action_ref.clone())),
        };
        self.forget_cancel(id);
        let elapsed = started.elapsed();
        if action.is_some() {
            self.metrics.observe_duration(elapsed);
        }
        if let Ok(report) = &outcome {
            for ((door, outcome), count) in &report.secret_totals {
                self.metrics.secrets(*door, *outcome, *count);
            }
        }
        let (status, result) = outcome_result(outcome, self.max_stdout, self.max_stderr, elapsed);
        tracing::info!(
            execution = id,
            action = %execution.action_ref,
            status,
            duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "execution ended"
        );
        self.complete(
            &execution,
            action.as_ref(),
            "running",
            status,
            result,
            correlation,
        )
        .await
    }

    /// Commits the terminal status (retrying while the database is unreachable), publishes
    /// `ExecutionCompleted`, and tells the caller to acknowledge. A result the database
    /// refuses is replaced by status `failed` with the refusal as its error; when that is
    /// refused too, [`Disposition::Refused`].
    async fn complete(
        &self,
        execution: &ExecutionRow,
        action: Option<&ActionRow>,
        expected: &str,
        status: &str,
        result: Value,
        correlation: Option<String>,
    ) -> Disposition {
        let id = execution.id;
        let written = match self.write_terminal(id, expected, status, &result).await {
            Ok(written) => Ok((status, result, written)),
            Err(Error::Refused(why)) => {
                tracing::error!(
                    execution = id,
                    "Attune's database refused the result; ending the execution failed instead: {why}"
                );
                let duration = result
                    .get("duration_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let fallback = failure_result(&Failure::ResultRefused(why), false, duration);
                match self.write_terminal(id, expected, "failed", &fallback).await {
                    Ok(written) => Ok(("failed", fallback, written)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let (status, result, written) = match written {
            Ok(w) => w,
            Err(Error::Refused(why)) => return Disposition::Refused(why),
            Err(e) => {
                tracing::error!(
                    execution = id,
                    "cannot write the result, dispatch requeued: {e}"
                );
                return Disposition::Requeue;
            }
        };
        if !written {
            tracing::warn!(
                execution = id,
                "execution changed state while it ran; its result was not written"
            );
            return Disposition::Ack;
        }
        let completed = Envelope::new(
            "ExecutionCompleted",
            protocol::Completed {
                execution_id: id,
                action_id: action.map(|a| a.id).or(execution.action).unwrap_or(0),
                action_ref: execution.action_ref.clone(),
                status: status.to_owned(),
                result: Some(result),
                completed_at: protocol::now_rfc3339(),
            },
            correlation,
        );
        self.metrics.ended(status);
        if let Err(e) = self.publish(protocol::COMPLETED_KEY, &completed).await {
            tracing::error!(execution = id, "ExecutionCompleted not published: {e}");
        }
        Disposition::Ack
    }

    /// `attune_db::finish`, retried with backoff (10 times) while the database cannot be
    /// reached; a refusal is answered at once.
    async fn write_terminal(
        &self,
        id: i64,
        expected: &str,
        status: &str,
        result: &Value,
    ) -> Result<bool, Error> {
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            match attune_db::finish(&self.pool, id, expected, status, result).await {
                Err(e @ Error::Database(_)) if attempts < 10 => {
                    attempts += 1;
                    tracing::error!(execution = id, "cannot write the result, retrying: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
                other => return other,
            }
        }
    }

    /// Publishes on the current channel, waiting (up to ~60 s) for a reconnection.
    async fn publish<T: Serialize>(&self, key: &str, envelope: &Envelope<T>) -> Result<(), Error> {
        let mut last = Error::Broker("no broker connection".into());
        for _ in 0..240 {
            let channel = self.publisher.borrow().clone();
            if let Some(channel) = channel {
                match protocol::publish(&channel, key, envelope, false).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(last)
    }

    async fn run_guest(
        &self,
        execution: &ExecutionRow,
        action: &ActionRow,
    ) -> Result<executor::Report, Failure> {
        let action_ref = ActionRef::new(&action.action_ref)
            .map_err(|_| Failure::BadRef(action.action_ref.escape_default().to_string()))?;
        let path = action_file(&self.packs_base_dir, &action.pack_ref, &action.entrypoint)?;
        let bytes = tokio::fs::read(&path).await.map_err(|e| Failure::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let name = path.display().to_string();
        // Compiling is CPU-bound; a cached guest (same content) returns at once.
        let guest = tokio::task::block_in_place(|| self.executor.runtime().load(&name, &bytes))
            .map_err(executor::Error::Runtime)?;
        let timeout = [execution.timeout_seconds, action.timeout_seconds]
            .into_iter()
            .flatten()
            .find_map(|t| u64::try_from(t).ok().filter(|t| *t > 0))
            .map_or(self.default_timeout, Duration::from_secs);
        let mut params = match &execution.config {
            Some(v) if !v.is_null() => v.to_string(),
            _ => "{}".to_owned(),
        };
        params.push('\n');
        let cap = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let request = Execution {
            stdin: Stdin::Bytes(params.into()),
            stdout: Output::Capture(cap(self.max_stdout)),
            stderr: Output::Capture(cap(self.max_stderr)),
            limits: Limits {
                timeout,
                ..Limits::default()
            },
            max_output: self.max_stdout.max(self.max_stderr),
            execution_id: Some(execution.id.to_string()),
            cancel: self.cancel_handle(execution.id),
            ..Execution::new(action_ref, action.entrypoint.clone())
        };
        Ok(self.executor.execute(&guest, request).await?)
    }
}

/// The execution id and correlation id of a dispatch; `None` (logged) for a message to
/// dead-letter: not an Attune envelope, not an `ExecutionRequested`, no numeric
/// `execution_id`.
fn parse(delivery: &Delivery) -> Option<(i64, Option<String>)> {
    let envelope: Envelope<Value> = match serde_json::from_slice(&delivery.data) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(
                "dispatch dead-lettered: not an Attune message envelope ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            );
            return None;
        }
    };
    if envelope.message_type != protocol::EXECUTION_REQUESTED {
        tracing::error!(
            message_type = %envelope.message_type.escape_default(),
            "dispatch dead-lettered: not an ExecutionRequested message"
        );
        return None;
    }
    let correlation = envelope.correlation_id.clone();
    match serde_json::from_value::<ExecutionRequested>(envelope.payload) {
        Ok(request) => Some((request.execution_id, correlation)),
        Err(e) => {
            tracing::error!(
                "dispatch dead-lettered: ExecutionRequested payload without a numeric execution_id ({:?} error)",
                e.classify()
            );
            None
        }
    }
}

/// `{packs_base_dir}/{pack_ref}/actions/{entrypoint}`, refusing a pack ref or entrypoint that
/// would leave that directory (absolute, `..`, empty).
fn action_file(base: &Path, pack: &str, entrypoint: &str) -> Result<PathBuf, Failure> {
    let bad = || Failure::BadEntrypoint {
        pack: pack.escape_default().to_string(),
        entrypoint: entrypoint.escape_default().to_string(),
    };
    let plain = |p: &Path| {
        p.components().count() > 0 && p.components().all(|c| matches!(c, Component::Normal(_)))
    };
    let (pack_path, entry_path) = (Path::new(pack), Path::new(entrypoint));
    if !plain(pack_path) || pack_path.components().count() != 1 || !plain(entry_path) {
        return Err(bad());
    }
    Ok(base.join(pack_path).join("actions").join(entry_path))
}

/// Attune's `result` document of an execution that ended without output (`why` its error).
fn failure_result(why: &Failure, cancelled: bool, duration_ms: u64) -> Value {
    json!({
        "succeeded": false,
        "exit_code": null,
        "duration_ms": duration_ms,
        "stdout": "",
        "data": null,
        "error": why.to_string(),
        "stdout_truncated": false,
        "stderr_truncated": false,
        "timed_out": false,
        "cancelled": cancelled,
    })
}

/// The terminal status and Attune's `result` document of an execution's outcome.
fn outcome_result(
    outcome: Result<executor::Report, Failure>,
    max_stdout: u64,
    max_stderr: u64,
    elapsed: Duration,
) -> (&'static str, Value) {
    let duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    match outcome {
        Ok(report) => {
            let exit = report.exit;
            let stdout_bytes = exit.stdout.unwrap_or_default();
            let stderr_bytes = exit.stderr.unwrap_or_default();
            let stdout = String::from_utf8_lossy(&stdout_bytes).into_owned();
            let stderr = String::from_utf8_lossy(&stderr_bytes);
            let succeeded = exit.code == 0;
            let error = (!succeeded).then(|| error_text(&stderr, exit.code));
            let result = json!({
                "succeeded": succeeded,
                "exit_code": exit.code,
                "duration_ms": duration_ms,
                "data": data_of(&stdout),
                "stdout": stdout,
                "error": error,
                "stdout_truncated": stdout_bytes.len() as u64 >= max_stdout,
                "stderr_truncated": stderr_bytes.len() as u64 >= max_stderr,
                "timed_out": false,
            });
            (if succeeded { "completed" } else { "failed" }, result)
        }
        Err(failure) => {
            let timed_out = matches!(
                failure,
                Failure::Executor(executor::Error::Runtime(runtime::Error::Timeout(_)))
            );
            let cancelled = matches!(
                failure,
                Failure::Executor(executor::Error::Runtime(runtime::Error::Cancelled))
            );
            let result = json!({
                "succeeded": false,
                "exit_code": null,
                "duration_ms": duration_ms,
                "data": null,
                "stdout": "",
                "error": failure.to_string(),
                "stdout_truncated": false,
                "stderr_truncated": false,
                "timed_out": timed_out,
                "cancelled": cancelled,
            });
            let status = if timed_out {
                "timeout"
            } else if cancelled {
                "cancelled"
            } else {
                "failed"
            };
            (status, result)
        }
    }
}

/// Attune's `error` of a failed run: stderr when it has at most 5 lines, else its last line,
/// else `Command exited with code N`.
fn error_text(stderr: &str, code: i32) -> String {
    let trimmed = stderr.trim();
    let lines: Vec<&str> = trimmed.lines().collect();
    match lines.len() {
        0 => format!("Command exited with code {code}"),
        1..=5 => trimmed.to_owned(),
        _ => lines.last().map_or_else(String::new, |l| (*l).to_owned()),
    }
}

/// `data`: stdout parsed as JSON (the whole of it, else its last non-empty line), or null.
fn data_of(stdout: &str) -> Value {
    let trimmed = stdout.trim();
    if trimmed.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(trimmed)
        .ok()
        .or_else(|| {
            trimmed
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .and_then(|l| serde_json::from_str(l.trim()).ok())
        })
        .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn action_files_stay_inside_the_pack() {
        let base = Path::new("/packs");
        assert_eq!(
            action_file(base, "p", "a.wasm").unwrap(),
            PathBuf::from("/packs/p/actions/a.wasm")
        );
        assert_eq!(
            action_file(base, "p", "sub/a.wasm").unwrap(),
            PathBuf::from("/packs/p/actions/sub/a.wasm")
        );
        for (pack, entry) in [
            ("p", "../../etc/passwd"),
            ("p", "/etc/passwd"),
            ("..", "a.wasm"),
            ("p/q", "a.wasm"),
            ("p", ""),
            ("", "a.wasm"),
            ("p", "./a.wasm"),
        ] {
            assert!(action_file(base, pack, entry).is_err(), "{pack} {entry}");
        }
    }

    #[test]
    fn error_and_data_follow_attune() {
        assert_eq!(error_text("", 3), "Command exited with code 3");
        assert_eq!(error_text("boom\n", 1), "boom");
        assert_eq!(error_text("1\n2\n3\n4\n5\n6\nlast\n", 1), "last");
        assert_eq!(data_of("{\"a\":1}\n"), json!({"a": 1}));
        assert_eq!(data_of("log line\n{\"a\":2}\n"), json!({"a": 2}));
        assert_eq!(data_of("not json"), Value::Null);
    }
}
