//! The audit trail: one record per (secret, door, outcome) of an execution, with a count;
//! never a value. Collected in memory while the guest runs and handed, at the end of the
//! execution, to a [`Writer`] that stores the records of many executions per transaction, so
//! neither `get-secret` nor the end of an execution waits on the database.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Through which door a secret was asked for or given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Door {
    /// A `SECRET_*` environment variable.
    Env,
    /// The `get-secret` WIT import.
    GetSecret,
}

impl Door {
    /// Stored spelling: `env`, `get-secret`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Env => "env",
            Self::GetSecret => "get-secret",
        }
    }
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// One audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When (RFC 3339 UTC).
    pub at: String,
    /// Execution id.
    pub execution_id: String,
    /// Action ref.
    pub action_ref: String,
    /// Secret ref, or the requested name.
    pub secret_ref: String,
    /// Door.
    pub door: Door,
    /// Outcome.
    pub outcome: Outcome,
    /// How many identical requests.
    pub count: u64,
}

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

    /// The records of this execution, ready to store.
    pub fn records(&self, at: &str, execution_id: &str, action_ref: &str) -> Vec<Record> {
        let map = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter()
            .map(|((secret_ref, door, outcome), count)| Record {
                at: at.to_owned(),
                execution_id: execution_id.to_owned(),
                action_ref: action_ref.to_owned(),
                secret_ref: secret_ref.clone(),
                door: *door,
                outcome: *outcome,
                count: *count,
            })
            .collect()
    }
}

/// How long a [`Writer`] gathers records before writing them, unless a flush is waiting or
/// [`BATCH_RECORDS`] are gathered first: 50 ms.
pub const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);

/// Most records a [`Writer`] stores in one transaction.
pub const BATCH_RECORDS: usize = 4_096;

/// Executions whose records may wait for the [`Writer`]; a further execution's
/// [`Writer::send`] waits (the worker slows down rather than losing audit records).
pub const QUEUE_EXECUTIONS: usize = 4_096;

enum Message {
    Records(Vec<Record>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Stores audit records in the background: a tokio task that gathers records for up to
/// [`BATCH_WINDOW`] (less when a [`Writer::flush`] waits) and writes them in transactions of
/// up to [`BATCH_RECORDS`]. Records still queued when
/// the writer is dropped are written by the task before it ends, if the tokio runtime lives
/// on; call [`Writer::flush`] before shutting down to be sure.
pub struct Writer {
    queue: tokio::sync::mpsc::Sender<Message>,
}

impl Writer {
    /// Starts the writer task on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub fn spawn(store: crate::store::Store) -> Self {
        let (queue, mut inbox) = tokio::sync::mpsc::channel::<Message>(QUEUE_EXECUTIONS);
        tokio::spawn(async move {
            while let Some(first) = inbox.recv().await {
                let mut records = Vec::new();
                let mut flushed = Vec::new();
                let take =
                    |message: Message,
                     records: &mut Vec<Record>,
                     flushed: &mut Vec<tokio::sync::oneshot::Sender<()>>| {
                        match message {
                            Message::Records(r) => records.extend(r),
                            Message::Flush(done) => flushed.push(done),
                        }
                    };
                take(first, &mut records, &mut flushed);
                // Gather what arrives within the batch window, unless someone waits.
                let window = tokio::time::sleep(BATCH_WINDOW);
                tokio::pin!(window);
                while flushed.is_empty() && records.len() < BATCH_RECORDS {
                    tokio::select! {
                        () = &mut window => break,
                        next = inbox.recv() => match next {
                            Some(message) => take(message, &mut records, &mut flushed),
                            None => break,
                        },
                    }
                }
                while let Ok(message) = inbox.try_recv() {
                    take(message, &mut records, &mut flushed);
                }
                for batch in records.chunks(BATCH_RECORDS) {
                    if let Err(e) = store.record_audit(batch).await {
                        tracing::warn!("{} audit records not written: {e}", batch.len());
                    }
                }
                for done in flushed {
                    // The flusher may have stopped waiting; nothing to tell then.
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

    /// Queues one execution's records; waits only when [`QUEUE_EXECUTIONS`] executions are
    /// already queued.
    pub async fn send(&self, records: Vec<Record>) {
        if records.is_empty() {
            return;
        }
        let count = records.len();
        if self.queue.send(Message::Records(records)).await.is_err() {
            tracing::warn!("{count} audit records not written: the audit writer has stopped");
        }
    }

    /// Waits until every record queued before this call is stored (or its write failed and
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
pub struct Filter {
    /// Only this action.
    pub action_ref: Option<String>,
    /// Only records at or after this time (RFC 3339 UTC).
    pub since: Option<String>,
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
        let records = log.records("t", "e", "p.a");
        assert!(records.len() <= MAX_RECORDS + 1);
        let delivered = records
            .iter()
            .find(|r| r.secret_ref == "p.k" && r.door == Door::GetSecret)
            .map(|r| r.count);
        assert_eq!(delivered, Some(3));
        let total: u64 = records.iter().map(|r| r.count).sum();
        assert_eq!(total, 5_004);
    }
}
