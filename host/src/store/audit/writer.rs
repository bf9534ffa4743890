//! The [`Writer`]: the audit trail stored in the background, many executions per statement,
//! to a [`Sink`] (the store); entries journalled first when the trail has a journal.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Batch, Error, ExecutionRecord, Journal, RunState};

/// How long a [`Writer`] gathers records before writing them, unless a flush is waiting or
/// [`BATCH_RECORDS`] are gathered first: 50 ms.
pub const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(50);

/// Records after which a [`Writer`] stops gathering for its window and writes (what is queued
/// already joins that write, up to [`QUEUE_EXECUTIONS`] executions).
pub const BATCH_RECORDS: usize = 4_096;

/// Executions whose records may wait in the [`Writer`]'s queue, and the most one write holds
/// (a refused one included); a further execution's [`Writer::begin`] or [`Writer::end`] waits
/// (the worker slows down rather than losing audit records).
pub const QUEUE_EXECUTIONS: usize = 4_096;

/// First wait before a batch the [`Sink`] refused is written again: 50 ms, doubling after each
/// failed attempt up to [`RETRY_MAX`].
pub const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(50);

/// Longest wait between two attempts at a batch the [`Sink`] refused: 5 s.
pub const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// How often a [`Writer`] whose batches keep failing says so again: once a minute (the first
/// failure and the recovery are always logged).
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

enum Message {
    /// An execution entered before its guest starts; `done` is told once it is stored.
    Begin {
        execution: ExecutionRecord,
        done: tokio::sync::oneshot::Sender<Result<(), Error>>,
    },
    /// An execution's state with its requests: its end, or its entry when a journal holds
    /// it already; nobody waits.
    End(ExecutionRecord),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// What the next write of the [`Writer`] stores, and who waits for it. After a failed write
/// it is kept and written again, with what arrived meanwhile (see [`Failing`]).
#[derive(Default)]
struct Gathered {
    batch: Batch,
    /// The index of each execution in `batch.executions`, by id.
    index: HashMap<String, usize>,
    /// Requests taken since the last write (an execution replaced by its later state counts
    /// twice): what [`BATCH_RECORDS`] bounds.
    records: usize,
    /// The executions whose [`Writer::begin`] waits, by id.
    begun: Vec<(String, tokio::sync::oneshot::Sender<Result<(), Error>>)>,
    flushed: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Gathered {
    fn take(&mut self, message: Message) {
        match message {
            Message::Begin { execution, done } => {
                self.begun.push((execution.execution_id.clone(), done));
                self.upsert(execution);
            }
            Message::End(execution) => self.upsert(execution),
            Message::Flush(done) => self.flushed.push(done),
        }
    }

    /// Adds an execution, replacing an earlier state of the same id (the later state wins).
    fn upsert(&mut self, execution: ExecutionRecord) {
        self.records += execution.requests.len();
        match self.index.get(&execution.execution_id) {
            Some(&i) => self.batch.executions[i] = execution,
            None => {
                self.index
                    .insert(execution.execution_id.clone(), self.batch.executions.len());
                self.batch.executions.push(execution);
            }
        }
    }

    /// Drops an execution from the batch (its guest will not start: its entry failed).
    fn remove(&mut self, execution_id: &str) {
        if let Some(i) = self.index.remove(execution_id) {
            self.batch.executions.swap_remove(i);
            if let Some(moved) = self.batch.executions.get(i) {
                self.index.insert(moved.execution_id.clone(), i);
            }
        }
    }

    /// Nothing to write and nobody waiting.
    fn is_empty(&self) -> bool {
        self.batch.is_empty() && self.begun.is_empty() && self.flushed.is_empty()
    }

    /// Someone waits: write now rather than gather for the batch window.
    fn urgent(&self) -> bool {
        !self.begun.is_empty() || !self.flushed.is_empty()
    }

    /// Whether to stop gathering for the window: when [`Gathered::at_capacity`]; unless a
    /// refused batch is held (`retrying`), also when someone waits or [`BATCH_RECORDS`] are
    /// gathered (what is queued already still joins this write).
    fn full(&self, retrying: bool) -> bool {
        self.at_capacity() || (!retrying && (self.urgent() || self.records >= BATCH_RECORDS))
    }

    /// Whether to take no further message before this write: [`QUEUE_EXECUTIONS`] executions
    /// are gathered. One write never holds more, so a refused batch held for the next attempt
    /// is bounded too (the queue then fills and the worker waits: nothing is dropped).
    fn at_capacity(&self) -> bool {
        self.batch.executions.len() >= QUEUE_EXECUTIONS
    }
}

/// The writer task's state: what it holds and its inbox. Dropped when the task ends (its
/// [`Writer`] dropped while the store refuses, or its tokio runtime shut down), it warns of the
/// records still held or queued: they are not stored, or (a write cut short by the shutdown)
/// not confirmed; their journal lines, if any, stay for the next opening.
struct Held {
    gathered: Gathered,
    inbox: tokio::sync::mpsc::Receiver<Message>,
}

impl Drop for Held {
    fn drop(&mut self) {
        while let Ok(message) = self.inbox.try_recv() {
            self.gathered.take(message);
        }
        let batch = &self.gathered.batch;
        if !batch.is_empty() {
            tracing::warn!(
                "{} audit records of {} executions may not be stored: the audit writer stopped \
                 before the store confirmed them",
                batch.records(),
                batch.executions.len()
            );
        }
    }
}

/// A trail whose writes fail: how long, how often, and when it was last said.
struct Failing {
    /// Failed attempts at the held batch so far.
    attempts: u64,
    /// The wait before the next attempt.
    delay: std::time::Duration,
    /// When the failure was last logged.
    reported: tokio::time::Instant,
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
/// [`BATCH_WINDOW`] or [`BATCH_RECORDS`] records.
///
/// A batch the [`Sink`] refuses is never dropped: it is held and written again after
/// [`RETRY_FIRST`], doubling up to [`RETRY_MAX`], together with what arrives meanwhile, until
/// it is stored (its journal lines, if any, stay until then). While it fails, entries awaited
/// by [`Writer::begin`] fail (their guests do not start); one write holds at most
/// [`QUEUE_EXECUTIONS`] executions and as many wait in the queue, and then [`Writer::end`]
/// and [`Writer::begin`] wait: the worker slows down rather than losing records or memory.
/// The first failure, one a minute after it and the recovery are logged.
///
/// Records still queued when the writer is dropped are written by the task before it ends, if
/// the tokio runtime lives on (a refused batch is tried until the wait between attempts has
/// reached [`RETRY_MAX`]); call [`Writer::flush`] before shutting down to be sure. Records the
/// task still holds when it ends (given up, or its runtime shut down) are named in a warning;
/// their journal lines, if any, stay for the next opening.
pub struct Writer {
    queue: tokio::sync::mpsc::Sender<Message>,
    /// Where entries go before a guest starts, instead of a commit awaited (SQLite stores).
    journal: Option<Arc<Journal>>,
    /// Failed writes so far: [`Writer::flush`] returns after one rather than waiting for a
    /// trail that does not take records.
    failures: tokio::sync::watch::Receiver<u64>,
}

/// The writer task: gathers, writes, holds and retries (see [`Writer`]).
async fn run(
    sink: Arc<dyn Sink>,
    settle: Option<Arc<Journal>>,
    inbox: tokio::sync::mpsc::Receiver<Message>,
    failures: tokio::sync::watch::Sender<u64>,
) {
    // Dropped with the task (the runtime shut down mid-wait too): warns of what it held.
    let mut held = Held {
        gathered: Gathered::default(),
        inbox,
    };
    let Held { gathered, inbox } = &mut held;
    let mut failing: Option<Failing> = None;
    // A refused batch is held for the next attempt (not merely: the last write failed).
    let mut holding = false;
    loop {
        if gathered.is_empty() {
            // `None` only once every `Writer` is gone and the queue is empty.
            match inbox.recv().await {
                Some(first) => gathered.take(first),
                None => return,
            }
        }
        // A refused batch is held: wait before the next attempt, gathering meanwhile.
        let retrying = holding;
        let wait = match &failing {
            Some(f) if retrying => f.delay,
            _ => BATCH_WINDOW,
        };
        let window = tokio::time::sleep(wait);
        tokio::pin!(window);
        loop {
            // Closed: every `Writer` is gone, nothing more arrives (what is queued is taken
            // below), so the window is not waited for unless this is a retry.
            if gathered.full(retrying) || inbox.is_closed() {
                if retrying {
                    // Never a busy loop: the wait is kept even when nothing more is taken.
                    window.as_mut().await;
                }
                break;
            }
            tokio::select! {
                () = &mut window => break,
                next = inbox.recv() => if let Some(message) = next {
                    gathered.take(message);
                },
            }
        }
        // Group commit: whatever is queued joins this write.
        while !gathered.at_capacity() {
            match inbox.try_recv() {
                Ok(message) => gathered.take(message),
                Err(_) => break,
            }
        }
        if gathered.batch.is_empty() {
            // Only flushes waited: nothing to write, nothing learnt about the store.
            for done in std::mem::take(&mut gathered.flushed) {
                let _ = done.send(());
            }
            continue;
        }
        match sink.record(&gathered.batch).await {
            Ok(()) => {
                holding = false;
                if let Some(f) = failing.take() {
                    tracing::warn!(
                        "audit trail written again after {} failed attempts ({} records of {} \
                         executions in this write)",
                        f.attempts,
                        gathered.batch.records(),
                        gathered.batch.executions.len()
                    );
                }
                let Gathered {
                    batch,
                    begun,
                    flushed,
                    ..
                } = std::mem::take(gathered);
                if let Some(journal) = &settle {
                    journal.settled(
                        batch
                            .executions
                            .iter()
                            .filter(|e| e.state != RunState::Started)
                            .map(|e| e.execution_id.as_str()),
                    );
                }
                for (_, done) in begun {
                    // The execution may have stopped waiting (cancelled); nothing to tell then.
                    let _ = done.send(Ok(()));
                }
                for done in flushed {
                    let _ = done.send(());
                }
            }
            Err(e) => {
                let error = Error(e.to_string());
                // Their guests will not start: their entries leave the batch.
                let refused = gathered.begun.len();
                for (id, done) in std::mem::take(&mut gathered.begun) {
                    gathered.remove(&id);
                    let _ = done.send(Err(error.clone()));
                }
                for done in std::mem::take(&mut gathered.flushed) {
                    let _ = done.send(());
                }
                gathered.records = 0;
                let now = tokio::time::Instant::now();
                let f = failing.get_or_insert(Failing {
                    attempts: 0,
                    delay: RETRY_FIRST,
                    reported: now,
                });
                if f.attempts == 0 || now.duration_since(f.reported) >= REPORT_EVERY {
                    tracing::warn!(
                        "audit trail not written; {} records of {} executions held and retried \
                         until stored, {refused} guests not started: {e}",
                        gathered.batch.records(),
                        gathered.batch.executions.len()
                    );
                    f.reported = now;
                }
                f.attempts += 1;
                // The first wait is RETRY_FIRST; each further one twice the last.
                if f.attempts > 1 {
                    f.delay = (f.delay * 2).min(RETRY_MAX);
                }
                holding = !gathered.batch.is_empty();
                // Every `Writer` is gone and the waits have reached their longest: give up.
                let give_up = inbox.is_closed() && f.delay >= RETRY_MAX;
                failures.send_modify(|n| *n += 1);
                if give_up {
                    // `held` warns as it is dropped.
                    return;
                }
            }
        }
    }
}

impl Writer {
    /// Starts the writer task on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (as `tokio::spawn`).
    pub fn spawn(sink: Arc<dyn Sink>) -> Self {
        Self::spawn_journaled(sink, None)
    }

    /// Starts the writer task; with a `journal`, [`Writer::begin`] appends the entry there
    /// and does not wait for the database (lines are settled once their end is stored).
    pub(crate) fn spawn_journaled(sink: Arc<dyn Sink>, journal: Option<Arc<Journal>>) -> Self {
        let (queue, inbox) = tokio::sync::mpsc::channel::<Message>(QUEUE_EXECUTIONS);
        let (failed, failures) = tokio::sync::watch::channel(0);
        tokio::spawn(run(sink, journal.clone(), inbox, failed));
        Self {
            queue,
            journal,
            failures,
        }
    }

    /// The journal entries go to, if any.
    pub(crate) fn journal(&self) -> Option<&Arc<Journal>> {
        self.journal.as_ref()
    }

    /// `true` once the writer task has ended (its tokio runtime shut down): records sent now
    /// are lost, start a new writer.
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Enters an execution (state [`RunState::Started`]) with the requests known before its
    /// guest starts (the environment door's deliveries), and waits until they are stored: in
    /// the journal when the writer has one (one `write`; the database gets them with the next
    /// batch), else in the database.
    ///
    /// # Errors
    /// [`Error`] when the write failed or the writer has stopped: the caller must not start
    /// the guest.
    pub async fn begin(&self, execution: ExecutionRecord) -> Result<(), Error> {
        if let Some(journal) = &self.journal {
            journal.enter(&execution)?;
            self.end(execution).await;
            return Ok(());
        }
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

    /// Waits until everything queued before this call is stored, or until a write fails (it
    /// was logged; the records stay held and are written once the store takes them again).
    pub async fn flush(&self) {
        let mut failures = self.failures.clone();
        failures.mark_unchanged();
        let (done, wait) = tokio::sync::oneshot::channel();
        let stored = async {
            if self.queue.send(Message::Flush(done)).await.is_ok() {
                // An error means the task ended, after which nothing is pending.
                let _ = wait.await;
            }
        };
        tokio::select! {
            () = stored => {}
            // A failed write (or the task's end, an error here).
            _ = failures.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::store::audit::{Door, Outcome, Request};
    use crate::store::journal::dir_of;
    use crate::store::Timestamp;
    use crate::ActionRef;

    /// A store that refuses every write while `refuse` is set, and keeps what it takes.
    #[derive(Default)]
    struct Flaky {
        refuse: AtomicBool,
        /// How long each write takes, in milliseconds.
        slow_ms: std::sync::atomic::AtomicU64,
        attempts: AtomicUsize,
        /// The most executions one write was handed.
        largest: AtomicUsize,
        stored: Mutex<HashMap<String, ExecutionRecord>>,
    }

    impl Sink for Flaky {
        fn record<'a>(
            &'a self,
            batch: &'a Batch,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + 'a>>
        {
            Box::pin(async move {
                self.attempts.fetch_add(1, Ordering::SeqCst);
                let slow = self.slow_ms.load(Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
                self.largest
                    .fetch_max(batch.executions.len(), Ordering::SeqCst);
                if self.refuse.load(Ordering::SeqCst) {
                    return Err("database is locked".into());
                }
                let mut stored = self.stored.lock().unwrap();
                for e in &batch.executions {
                    stored.insert(e.execution_id.clone(), e.clone());
                }
                Ok(())
            })
        }
    }

    impl Flaky {
        fn refusing() -> Arc<Self> {
            let sink = Arc::new(Self::default());
            sink.refuse.store(true, Ordering::SeqCst);
            sink
        }

        fn state_of(&self, id: &str) -> Option<RunState> {
            self.stored.lock().unwrap().get(id).map(|e| e.state)
        }

        fn count(&self) -> usize {
            self.stored.lock().unwrap().len()
        }
    }

    fn record(id: &str, state: RunState) -> ExecutionRecord {
        ExecutionRecord {
            execution_id: id.to_owned(),
            action_ref: ActionRef::new("mypack.deploy").unwrap(),
            started: Timestamp::now(),
            ended: (state != RunState::Started).then(Timestamp::now),
            state,
            requests: vec![Request {
                secret_ref: "mypack.api_key".to_owned(),
                door: Door::Env,
                outcome: Outcome::Delivered,
                count: 1,
            }],
        }
    }

    /// Waits (a liveness bound, not a timing) until `done` holds.
    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..3_000 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("never happened: {what}");
    }

    #[tokio::test]
    async fn a_refused_batch_is_held_and_written_once_the_store_takes_it() {
        let sink = Flaky::refusing();
        let writer = Writer::spawn(sink.clone());
        for i in 0..100 {
            writer
                .end(record(&format!("e{i}"), RunState::Started))
                .await;
        }
        // A flush returns after the failed write rather than waiting for the store.
        tokio::time::timeout(std::time::Duration::from_secs(10), writer.flush())
            .await
            .unwrap();
        assert_eq!(sink.count(), 0);
        // Later states of half of them arrive while the batch is held: they replace those.
        for i in 0..50 {
            writer.end(record(&format!("e{i}"), RunState::Ended)).await;
        }
        until("a second attempt", || {
            sink.attempts.load(Ordering::SeqCst) >= 2
        })
        .await;
        sink.refuse.store(false, Ordering::SeqCst);
        until("the held batch is stored", || sink.count() == 100).await;
        writer.flush().await;
        for i in 0..100 {
            let state = if i < 50 {
                RunState::Ended
            } else {
                RunState::Started
            };
            assert_eq!(sink.state_of(&format!("e{i}")), Some(state), "e{i}");
        }
        // Back to normal: the next record is written within the batch window.
        writer.end(record("after", RunState::Ended)).await;
        writer.flush().await;
        assert_eq!(sink.state_of("after"), Some(RunState::Ended));
    }

    #[tokio::test]
    async fn an_entry_the_store_refuses_fails_its_begin_and_is_not_stored_later() {
        let sink = Flaky::refusing();
        let writer = Writer::spawn(sink.clone());
        writer.end(record("ended", RunState::Ended)).await;
        let refused = writer.begin(record("refused", RunState::Started)).await;
        assert!(refused.is_err(), "the guest must not start");
        sink.refuse.store(false, Ordering::SeqCst);
        writer
            .begin(record("accepted", RunState::Started))
            .await
            .unwrap();
        writer.flush().await;
        assert_eq!(
            sink.state_of("ended"),
            Some(RunState::Ended),
            "held, then stored"
        );
        assert_eq!(sink.state_of("accepted"), Some(RunState::Started));
        assert_eq!(sink.state_of("refused"), None, "its guest never started");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_store_holds_at_most_the_queue_and_the_worker_waits() {
        let sink = Flaky::refusing();
        let writer = Arc::new(Writer::spawn(sink.clone()));
        let total = QUEUE_EXECUTIONS * 3;
        let sent = Arc::new(AtomicUsize::new(0));
        let sender = {
            let (writer, sent) = (writer.clone(), sent.clone());
            tokio::spawn(async move {
                for i in 0..total {
                    writer.end(record(&format!("e{i}"), RunState::Ended)).await;
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            })
        };
        until("the held batch is full", || {
            sink.largest.load(Ordering::SeqCst) >= QUEUE_EXECUTIONS
        })
        .await;
        // Held and queued, no more: the sender waits for the store.
        until("the queue is full", || {
            sent.load(Ordering::SeqCst) >= 2 * QUEUE_EXECUTIONS
        })
        .await;
        // A flush that cannot even be queued returns after the next failed write.
        tokio::time::timeout(std::time::Duration::from_secs(10), writer.flush())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(sent.load(Ordering::SeqCst) <= 2 * QUEUE_EXECUTIONS + 1);
        assert!(!sender.is_finished());
        assert!(sink.largest.load(Ordering::SeqCst) <= QUEUE_EXECUTIONS);
        sink.refuse.store(false, Ordering::SeqCst);
        sender.await.unwrap();
        writer.flush().await;
        assert_eq!(sink.count(), total, "nothing was dropped");
    }

    /// The first refused batch was gathered while the store worked, from a full queue: one
    /// write still holds no more than [`QUEUE_EXECUTIONS`] executions.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_gathered_from_a_full_queue_is_bounded_too() {
        let sink = Arc::new(Flaky::default());
        let writer = Arc::new(Writer::spawn(sink.clone()));
        writer.end(record("first", RunState::Ended)).await;
        writer.flush().await;
        // The queue fills while the writer waits for its window, then the store refuses.
        sink.refuse.store(true, Ordering::SeqCst);
        let sender = {
            let writer = writer.clone();
            tokio::spawn(async move {
                for i in 0..4 * QUEUE_EXECUTIONS {
                    writer.end(record(&format!("e{i}"), RunState::Ended)).await;
                }
            })
        };
        until("two refused writes", || {
            sink.attempts.load(Ordering::SeqCst) >= 3
        })
        .await;
        sink.refuse.store(false, Ordering::SeqCst);
        sender.await.unwrap();
        writer.flush().await;
        assert_eq!(sink.count(), 4 * QUEUE_EXECUTIONS + 1);
        assert!(sink.largest.load(Ordering::SeqCst) <= QUEUE_EXECUTIONS);
    }

    /// A refusing store whose writer was given a full batch and a full queue
    /// (2 × [`QUEUE_EXECUTIONS`] executions), then dropped.
    async fn dropped_with_a_full_batch() -> Arc<Flaky> {
        let sink = Flaky::refusing();
        let writer = Writer::spawn(sink.clone());
        for i in 0..2 * QUEUE_EXECUTIONS {
            writer.end(record(&format!("e{i}"), RunState::Ended)).await;
        }
        drop(writer);
        sink
    }

    /// A writer dropped while it holds a full refused batch (its inbox closed, no message
    /// taken) ends once the wait between attempts has reached [`RETRY_MAX`]: it does not keep
    /// the store and the records forever.
    #[tokio::test]
    async fn a_dropped_writer_holding_a_full_batch_ends() {
        let sink = dropped_with_a_full_batch().await;
        until("the task let go of the store", || {
            Arc::strong_count(&sink) == 1
        })
        .await;
        assert_eq!(sink.count(), 0);
    }

    /// Records queued when the last `Writer` is dropped are still written, while the store
    /// works and after it recovers.
    #[tokio::test]
    async fn what_a_dropped_writer_queued_is_written() {
        let sink = Arc::new(Flaky::default());
        sink.slow_ms.store(200, Ordering::SeqCst);
        let writer = Writer::spawn(sink.clone());
        writer.end(record("a", RunState::Ended)).await;
        // `a`'s write is under way when `b` is queued and the writer dropped.
        until("a's write began", || {
            sink.attempts.load(Ordering::SeqCst) == 1
        })
        .await;
        writer.end(record("b", RunState::Ended)).await;
        drop(writer);
        until("both stored", || sink.count() == 2).await;

        let sink = dropped_with_a_full_batch().await;
        until("two refused writes", || {
            sink.attempts.load(Ordering::SeqCst) >= 2
        })
        .await;
        sink.refuse.store(false, Ordering::SeqCst);
        until("held and queued stored", || {
            sink.count() == 2 * QUEUE_EXECUTIONS
        })
        .await;
    }

    /// Refused entries with nothing else held are not retried: each is answered at once, and
    /// the first entry after the store recovers is not kept waiting by the refusals before it.
    #[tokio::test]
    async fn refused_entries_are_not_held_back_by_a_retry_wait() {
        let sink = Flaky::refusing();
        let writer = Writer::spawn(sink.clone());
        let started = std::time::Instant::now();
        for i in 0..8 {
            assert!(writer
                .begin(record(&format!("b{i}"), RunState::Started))
                .await
                .is_err());
        }
        sink.refuse.store(false, Ordering::SeqCst);
        writer.begin(record("ok", RunState::Started)).await.unwrap();
        // Waiting the doubling retry delays would take 50 ms + 100 ms + … + 5 s ≈ 11 s.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(sink.count(), 1);
    }

    /// After a refused entry nothing is held: a flush does not touch the store, and no
    /// recovery is claimed until a write succeeds.
    #[tokio::test]
    async fn a_refused_entry_leaves_nothing_held() {
        let sink = Flaky::refusing();
        let writer = Writer::spawn(sink.clone());
        assert!(writer.begin(record("b", RunState::Started)).await.is_err());
        let attempts = sink.attempts.load(Ordering::SeqCst);
        writer.flush().await;
        assert_eq!(
            sink.attempts.load(Ordering::SeqCst),
            attempts,
            "nothing to write"
        );
        assert!(writer.begin(record("c", RunState::Started)).await.is_err());
        sink.refuse.store(false, Ordering::SeqCst);
        writer.begin(record("d", RunState::Started)).await.unwrap();
        assert_eq!(sink.count(), 1);
    }

    /// Records held when the tokio runtime shuts down are named in a warning.
    #[test]
    fn records_held_when_the_runtime_shuts_down_are_named() {
        #[derive(Clone, Default)]
        struct Logs(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Logs {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let logs = Logs::default();
        let writer_of = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || writer_of.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let sink = Flaky::refusing();
            runtime.block_on(async {
                let writer = Writer::spawn(sink.clone());
                writer.end(record("lost", RunState::Ended)).await;
                writer.flush().await;
            });
            drop(runtime);
        });
        let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        assert!(
            logs.contains("audit trail not written; 1 records of 1 executions held"),
            "{logs}"
        );
        assert!(
            logs.contains(
                "1 audit records of 1 executions may not be stored: the audit writer stopped \
                 before the store confirmed them"
            ),
            "{logs}"
        );
    }

    #[tokio::test]
    async fn journal_lines_stay_until_their_held_ends_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("secrets.db");
        let journal = Arc::new(Journal::new(&db));
        let sink = Flaky::refusing();
        let writer = Writer::spawn_journaled(sink.clone(), Some(journal.clone()));
        writer.begin(record("j", RunState::Started)).await.unwrap();
        writer.end(record("j", RunState::Ended)).await;
        writer.flush().await;
        let lines = || -> u64 {
            std::fs::read_dir(dir_of(&db))
                .unwrap()
                .flatten()
                .map(|f| f.metadata().unwrap().len())
                .sum()
        };
        assert!(lines() > 0, "unsettled while its end is not stored");
        sink.refuse.store(false, Ordering::SeqCst);
        until("the end is stored", || {
            sink.state_of("j") == Some(RunState::Ended)
        })
        .await;
        writer.flush().await;
        assert_eq!(lines(), 0, "settled once stored");
    }
}
