//! The audit trail: one record per (secret, door, outcome) of an execution, with a count;
//! never a value. Stored as one row per execution (`audit_execution`): whether its run started
//! and ended, and its records packed in that row (issue 13; one row and one statement per
//! write, where a row per record cost six rows and their indexes per execution).
//!
//! An execution that receives secrets through the environment door is entered in the trail
//! *before* its guest starts, with those deliveries (a host killed mid-run leaves the delivery
//! on record, its run `started` and never `ended`): on SQLite in the store's journal (one
//! `write`, see `store::journal`), each later delivery too; on PostgreSQL by a commit awaited.
//! Everything else (the other requests, the end of the run) is collected in memory while the
//! guest runs and handed at the end to a [`Writer`], which replaces the execution's row with
//! its complete records; it stores many executions per statement, so neither `get-secret` nor
//! the end of an execution waits on the database.
//!
//! ```text
//! audit     Door, Outcome, Request, Record, RunState, ExecutionRecord, Batch, Log, Filter
//!   writer  Writer (background task, batches, group commit) ─► Sink (the store)
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

mod writer;

pub use writer::{Sink, SinkError, Writer, BATCH_RECORDS, BATCH_WINDOW, QUEUE_EXECUTIONS};

use crate::secrets::names::ActionRef;
use crate::store::journal::{Entry, Journal};
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
}

/// The trail could not be written before a guest started: the guest is not started.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the audit trail cannot be written, so the guest was not started: {0}")]
pub struct Error(String);

impl Error {
    pub(crate) fn new(reason: String) -> Self {
        Self(reason)
    }
}

/// Counts per (secret ref, door, outcome).
type Counts = BTreeMap<(String, Door, Outcome), u64>;

/// The in-memory log of one execution, shared by the executor and the store's secret door.
#[derive(Clone, Default)]
pub struct Log {
    inner: Arc<Mutex<Counts>>,
    /// Where each first delivery is journalled before the value is handed over (a SQLite
    /// store's [`Journal`]), set once the execution is entered.
    journal: Arc<std::sync::OnceLock<(Arc<Journal>, Entry)>>,
}

impl Log {
    /// Counts one request.
    pub fn note(&self, secret_ref: &str, door: Door, outcome: Outcome) {
        let mut map = self.counts();
        Self::count(&mut map, secret_ref, door, outcome);
    }

    // A poisoned lock only means another thread panicked while counting; keep counting.
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn count(map: &mut Counts, secret_ref: &str, door: Door, outcome: Outcome) {
        let key = if map.len() >= MAX_RECORDS
            && !map.contains_key(&(secret_ref.to_owned(), door, outcome))
        {
            ("(other requests)".to_owned(), door, outcome)
        } else {
            (secret_ref.to_owned(), door, outcome)
        };
        *map.entry(key).or_insert(0) += 1;
    }

    /// From now on, each first delivery of a secret through a door is appended to `journal`
    /// before it is counted (see [`Log::deliver`]). Set once; a second call changes nothing.
    pub(crate) fn journal_to(&self, journal: Arc<Journal>, entry: Entry) {
        let _ = self.journal.set((journal, entry));
    }

    /// Counts a delivery of `secret_ref` through `door`, journalled first when the log has a
    /// journal and the secret is not on record as delivered to this execution yet (through any
    /// door: the environment's deliveries are in its entry). The exposure is what must be on
    /// record before the guest has the value; the end of the run records every door and count.
    ///
    /// # Errors
    /// [`Error`] when the journal cannot be written: the value must not be delivered (the
    /// caller answers `unavailable` and notes that instead).
    pub(crate) fn deliver(&self, secret_ref: &str, door: Door) -> Result<(), Error> {
        let mut map = self.counts();
        if let Some((journal, entry)) = self.journal.get() {
            let mut key = (secret_ref.to_owned(), Door::Env, Outcome::Delivered);
            let on_record = [Door::Env, Door::GetSecret, Door::WasiConfig]
                .into_iter()
                .any(|d| {
                    key.1 = d;
                    map.contains_key(&key)
                });
            if !on_record {
                journal.deliver(entry, secret_ref, door)?;
            }
        }
        Self::count(&mut map, secret_ref, door, Outcome::Delivered);
        Ok(())
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
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_delivery_that_cannot_be_journalled_is_refused_and_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("secrets.db");
        // The journal directory is a symbolic link: every append fails.
        std::os::unix::fs::symlink(dir.path(), crate::store::journal::dir_of(&db)).unwrap();
        let log = Log::default();
        log.journal_to(
            Arc::new(Journal::new(&db)),
            Entry {
                execution_id: "e".to_owned(),
                action_ref: ActionRef::new("p.a").unwrap(),
                started: Timestamp::now(),
            },
        );
        assert!(log.deliver("p.k", Door::GetSecret).is_err());
        assert!(log.requests().is_empty(), "nothing counted as delivered");
        // A secret on record as delivered (here through the environment, in the entry) needs
        // no further line: its exposure is on record.
        log.note("p.e", Door::Env, Outcome::Delivered);
        log.deliver("p.e", Door::GetSecret).unwrap();
        log.deliver("p.e", Door::WasiConfig).unwrap();
        assert_eq!(log.requests().len(), 3);
        // Without a journal (PostgreSQL) a delivery is only counted.
        let plain = Log::default();
        plain.deliver("p.k", Door::GetSecret).unwrap();
        assert_eq!(plain.requests()[0].outcome, Outcome::Delivered);
    }

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
