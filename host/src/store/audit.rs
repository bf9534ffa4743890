//! The audit trail: one record per (secret, door, outcome) of an execution, with a count;
//! never a value. Stored as one row per execution (`audit_execution`): whether its run started
//! and ended, and its records packed in that row (issue 13; one row and one statement per
//! write, where a row per record cost six rows and their indexes per execution).
//!
//! An execution that receives secrets through the environment door is entered in the trail
//! *before* its guest starts, with those deliveries, and the write is awaited (a host killed
//! mid-run leaves the delivery on record, its run `started` and never `ended`). Everything
//! else (the `get-secret` requests, the end of the run) is collected in memory while the guest
//! runs and handed at the end to a [`Writer`], which replaces the execution's row with its
//! complete records; it stores many executions per statement, so neither `get-secret` nor the
//! end of an execution waits on the database.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use crate::secrets::names::ActionRef;
use crate::store::Timestamp;

/// Through which door a secret was asked for or given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Door {
    /// A `SECRET_*` environment variable.
    Env,
    /// The `get-secret` WIT import.
    GetSecret,
    /// The standard `wasi:config/store` import (`get`, `get-all`).
    WasiConfig,
}

impl Door {
    /// Stored spelling: `env`, `get-secret`, `wasi-config`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Env => "env",
            Self::GetSecret => "get-secret",
            Self::WasiConfig => "wasi-config",
        }
    }
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Outcome {
    /// The value was delivered.
    Delivered,
    /// Nothing of that name is visible.
    NotFound,
    /// Visible but not allowed (allow-list or call budget).
    AccessDenied,
    /// The name breaks the naming rule.
    InvalidName,
    /// Visible but could not be decrypted.
    Unavailable,
}

impl Outcome {
    /// Stored spelling: `delivered`, `not-found`, `access-denied`, `invalid-name`,
    /// `unavailable` (the WIT `secret-error` cases).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::NotFound => "not-found",
            Self::AccessDenied => "access-denied",
            Self::InvalidName => "invalid-name",
            Self::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most distinct records kept per execution; further distinct requests are counted in one
/// `(other requests)` record so a hostile guest cannot grow the log without bound.
pub const MAX_RECORDS: usize = 1_000;

/// Placeholder for a requested name that is not recorded (invalid, or equal to a value).
pub const UNRECORDED: &str = "(unrecorded name)";

/// What a `wasi:config/store.get-all` call refused as a whole is recorded as (it names no
/// secret: the host's option refuses it, or the call budget cannot cover it).
pub const GET_ALL: &str = "(get-all)";

/// One request of an execution as it is stored, packed in its execution's row: what was asked
/// for, through which door, what became of it, how many times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Secret ref, or the requested name (or a placeholder: [`UNRECORDED`], [`GET_ALL`]).
    pub secret_ref: String,
    /// Door.
    pub door: Door,
    /// Outcome.
    pub outcome: Outcome,
    /// How many identical requests.
    pub count: u64,
}

/// One audit record, as listed: a [`Request`] with its execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When: the execution's start.
    pub at: Timestamp,
    /// Execution id.
    pub execution_id: String,
    /// Action ref.
    pub action_ref: ActionRef,
    /// Secret ref, or the requested name.
    pub secret_ref: String,
    /// Door.
    pub door: Door,
    /// Outcome.
    pub outcome: Outcome,
    /// How many identical requests.
    pub count: u64,
}

/// Where an execution's run stands in the trail (`audit_execution.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Entered before its guest started; no end recorded yet (still running, or the host
    /// stopped before the end: `kill -9`, power loss).
    Started,
    /// The guest ran and ended (any exit status, trap or limit).
    Ended,
    /// The guest never started (no free pool slot, a mount that failed): the deliveries
    /// recorded for it reached no guest code.
    NotStarted,
}

impl RunState {
    /// Stored spelling: `started`, `ended`, `not-started`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Ended => "ended",
            Self::NotStarted => "not-started",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "started" => Some(Self::Started),
            "ended" => Some(Self::Ended),
            "not-started" => Some(Self::NotStarted),
            _ => None,
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One execution in the trail (`audit_execution`): written when its run starts (if it
/// receives secrets through the environment) and again, as an upsert replacing its state, end
/// and requests, when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionRecord {
    /// Execution id.
    pub execution_id: String,
    /// Action ref.
    pub action_ref: ActionRef,
    /// When the execution was entered, the `at` of its records.
    pub started: Timestamp,
    /// When its run ended; `None` while [`RunState::Started`].
    pub ended: Option<Timestamp>,
    /// Where the run stands.
    pub state: RunState,
    /// Its requests so far, in the order they are listed last (see [`Log::requests`]).
    pub requests: Vec<Request>,
}

/// One listed record with the state of its execution's run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The record.
    pub record: Record,
    /// The run's state; `None` for records written before the trail had executions.
    pub run: Option<RunState>,
}

/// What one write of the trail stores: executions, each inserted or replaced by id with its
/// requests.
#[derive(Debug, Default)]
pub struct Batch {
    /// Executions to upsert by `execution_id`; at most one per id.
    pub executions: Vec<ExecutionRecord>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.executions.is_empty()
    }

    /// Records in the batch (for messages).
    pub fn records(&self) -> usize {
        self.executions.iter().map(|e| e.requests.len()).sum()
    }

    /// Adds an execution, replacing an earlier entry of the same id (its later state wins).
    fn push_execution(&mut self, execution: ExecutionRecord) {
        self.executions
            .retain(|e| e.execution_id != execution.execution_id);
        self.executions.push(execution);
    }
}

/// The trail could not be written before a guest started: the guest is not started.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit trail cannot be written, so the guest was not started: {0}")]
pub struct Error(String);

/// Counts per (secret ref, door, outcome).
type Counts = BTreeMap<(String, Door, Outcome), u64>;

/// The in-memory log of one execution, shared by the executor and the store's secret door.
#[derive(Clone, Default)]
pub struct Log {
    inner: Arc<Mutex<Counts>>,
}

impl Log {
    /// Counts one request.
    pub fn note(&self, secret_ref: &str, door: Door, outcome: Outcome) {
        // A poisoned lock only means another thread panicked while counting; keep counting.
        let mut map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = if map.len() >= MAX_RECORDS
            && !map.contains_key(&(secret_ref.to_owned(), door, outcome))
        {
            ("(other requests)".to_owned(), door, outcome)
        } else {
            (secret_ref.to_owned(), door, outcome)
        };
        *map.entry(key).or_insert(0) += 1;
    }

    /// Requests so far by door and outcome, summed over secrets (for metrics; no names).
    pub fn totals(&self) -> BTreeMap<(Door, Outcome), u64> {
        let map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = BTreeMap::new();
        for ((_, door, outcome), count) in map.iter() {
            *out.entry((*door, *outcome)).or_insert(0) += count;
        }
        out
    }

    /// The requests of this execution so far, ready to store: the environment door's first
    /// (they are entered before the guest starts), then the others, each part ordered by secret
    /// ref, door and outcome. Listings show them newest first, that is in reverse.
    pub fn requests(&self) -> Vec<Request> {
        let map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut requests: Vec<Request> = map
            .iter()
            .map(|((secret_ref, door, outcome), count)| Request {
                secret_ref: secret_ref.clone(),
                door: *door,
                outcome: *outcome,
                count: *count,
            })
            .collect();
        // Stable: each part keeps the map's order.
        requests.sort_by_key(|r| r.door != Door::Env);
        requests
    }
}

/// How long a [`Writer`] gathers records before writing them, unless a flush is waiting or
/// [`BATCH_RECORDS`] are gathered first: 50 ms.
pub const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);

/// Most records a [`Writer`] stores in one transaction.
pub const BATCH_RECORDS: usize = 4_096;

/// Executions whose records may wait for the [`Writer`]; a further execution's
/// [`Writer::begin`] or [`Writer::end`] waits (the worker slows down rather than losing audit records).
pub const QUEUE_EXECUTIONS: usize = 4_096;

enum Message {
    /// An execution entered before its guest starts; `done` is told once it is stored.
    Begin {
        execution: ExecutionRecord,
        done: tokio::sync::oneshot::Sender<Result<(), Error>>,
    },
    /// An execution's end with all its requests; nobody waits.
    End(ExecutionRecord),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// What one write of the [`Writer`] gathered, and who waits for it.
#[derive(Default)]
struct Gathered {
    batch: Batch,
    /// Requests taken so far (an execution replaced by its later state counts twice).
    records: usize,
    begun: Vec<tokio::sync::oneshot::Sender<Result<(), Error>>>,
    flushed: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Gathered {
    fn take(&mut self, message: Message) {
        match message {
            Message::Begin { execution, done } => {
                self.records += execution.requests.len();
                self.batch.push_execution(execution);
                self.begun.push(done);
            }
            Message::End(execution) => {
                self.records += execution.requests.len();
                self.batch.push_execution(execution);
            }
            Message::Flush(done) => self.flushed.push(done),
        }
    }

    /// Someone waits: write now rather than gather for the batch window.
    fn urgent(&self) -> bool {
        !self.begun.is_empty() || !self.flushed.is_empty()
    }
}

/// Why a [`Sink`] could not store a batch (shown in logs and in [`Error`]; never a value).
pub type SinkError = Box<dyn std::error::Error + Send + Sync>;

/// Where the audit trail goes: [`crate::store::Store`] writes each batch in one statement.
/// The [`Writer`] hands it every batch it gathers.
pub trait Sink: Send + Sync + 'static {
    /// Stores `batch` (its executions upserted by id with their requests), all or nothing.
    ///
    /// # Errors
    /// Whatever kept the batch from being stored; nothing of it is stored then.
    fn record<'a>(
        &'a self,
        batch: &'a Batch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + 'a>>;
}

/// Stores the audit trail in the background: a tokio task that writes each gathered batch in
/// one statement. Executions entered before their guest starts ([`Writer::begin`]) are
/// written at once, together with whatever else is queued (group commit: under load, many
/// executions share one commit); the rest ([`Writer::end`]) is gathered for up to
/// [`BATCH_WINDOW`] or [`BATCH_RECORDS`] records. Records still queued when the writer is
/// dropped are written by the task before it ends, if the tokio runtime lives on; call
/// [`Writer::flush`] before shutting down to be sure.
pub struct Writer {
    queue: tokio::sync::mpsc::Sender<Message>,
}

impl Writer {
    /// Starts the writer task on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub fn spawn(sink: Arc<dyn Sink>) -> Self {
        let (queue, mut inbox) = tokio::sync::mpsc::channel::<Message>(QUEUE_EXECUTIONS);
        tokio::spawn(async move {
            while let Some(first) = inbox.recv().await {
                let mut gathered = Gathered::default();
                gathered.take(first);
                // Gather what arrives within the batch window, unless someone waits.
                let window = tokio::time::sleep(BATCH_WINDOW);
                tokio::pin!(window);
                while !gathered.urgent() && gathered.records < BATCH_RECORDS {
                    tokio::select! {
                        () = &mut window => break,
                        next = inbox.recv() => match next {
                            Some(message) => gathered.take(message),
                            None => break,
                        },
                    }
                }
                while let Ok(message) = inbox.try_recv() {
                    gathered.take(message);
                }
                let Gathered {
                    batch,
                    begun,
                    flushed,
                    ..
                } = gathered;
                let outcome = if batch.is_empty() {
                    Ok(())
                } else {
                    sink.record(&batch).await.map_err(|e| {
                        tracing::warn!(
                            "{} audit records of {} executions not written: {e}",
                            batch.records(),
                            batch.executions.len()
                        );
                        Error(e.to_string())
                    })
                };
                for done in begun {
                    // The execution may have stopped waiting (cancelled); nothing to tell then.
                    let _ = done.send(outcome.clone());
                }
                for done in flushed {
                    let _ = done.send(());
                }
            }
        });
        Self { queue }
    }

    /// `true` once the writer task has ended (its tokio runtime shut down): records sent now
    /// are lost, start a new writer.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Enters an execution (state [`RunState::Started`]) with the requests known before its
    /// guest starts (the environment door's deliveries), and waits until they are stored.
    ///
    /// # Errors
    /// [`Error`] when the write failed or the writer has stopped: the caller must not start
    /// the guest.
    pub async fn begin(&self, execution: ExecutionRecord) -> Result<(), Error> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let message = Message::Begin { execution, done };
        let stopped = || Error("the audit writer has stopped".to_owned());
        self.queue.send(message).await.map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }

    /// Queues an execution's end (its state and end time) with all its requests (they replace
    /// those entered by [`Writer::begin`]); waits only when [`QUEUE_EXECUTIONS`] executions are
    /// already queued.
    pub async fn end(&self, execution: ExecutionRecord) {
        let count = execution.requests.len();
        if self.queue.send(Message::End(execution)).await.is_err() {
            tracing::warn!("{count} audit records not written: the audit writer has stopped");
        }
    }

    /// Waits until everything queued before this call is stored (or its write failed and
    /// was logged).
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            // An error means the task ended, after which nothing is pending.
            let _ = wait.await;
        }
    }
}

/// Filter of `audit list`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Filter {
    /// Only this action.
    pub action_ref: Option<ActionRef>,
    /// Only records at or after this time.
    pub since: Option<Timestamp>,
    /// At most this many records, newest first.
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_requests_are_counted_and_the_log_is_bounded() {
        let log = Log::default();
        for _ in 0..3 {
            log.note("p.k", Door::GetSecret, Outcome::Delivered);
        }
        log.note("p.k", Door::Env, Outcome::Delivered);
        for i in 0..5_000 {
            log.note(&format!("n{i}"), Door::GetSecret, Outcome::NotFound);
        }
        let records = log.requests();
        assert!(records.len() <= MAX_RECORDS + 1);
        // The environment door's request comes first (it is entered before the guest starts).
        assert_eq!(records[0].door, Door::Env);
        let delivered = records
            .iter()
            .find(|r| r.secret_ref == "p.k" && r.door == Door::GetSecret)
            .map(|r| r.count);
        assert_eq!(delivered, Some(3));
        let total: u64 = records.iter().map(|r| r.count).sum();
        assert_eq!(total, 5_004);
    }
}
