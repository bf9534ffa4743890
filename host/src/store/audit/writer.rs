//! The [`Writer`]: the audit trail stored in the background, many executions per statement,
//! to a [`Sink`] (the store); entries journalled first when the trail has a journal.

use std::sync::Arc;

use super::{Batch, Error, ExecutionRecord, Journal, RunState};

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
    /// An execution's state with its requests: its end, or its entry when a journal holds
    /// it already; nobody waits.
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
    /// Where entries go before a guest starts, instead of a commit awaited (SQLite stores).
    journal: Option<Arc<Journal>>,
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
        let settle = journal.clone();
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
                if let (Some(journal), Ok(())) = (&settle, &outcome) {
                    journal.settled(
                        batch
                            .executions
                            .iter()
                            .filter(|e| e.state != RunState::Started)
                            .map(|e| e.execution_id.as_str()),
                    );
                }
                for done in begun {
                    // The execution may have stopped waiting (cancelled); nothing to tell then.
                    let _ = done.send(outcome.clone());
                }
                for done in flushed {
                    let _ = done.send(());
                }
            }
        });
        Self { queue, journal }
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
