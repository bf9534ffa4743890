//! The heartbeat and the worker-name lock, on a thread of their own with one database
//! connection: `attune.worker.last_heartbeat` on the database's clock, and the session-level
//! advisory lock ([`attune_db::lock_name`]) that keeps a second process of the same
//! `worker.name` from starting (two would share one worker id and one queue, and each would
//! take the other's running executions for abandoned after a broker blip).

use std::time::{Duration, Instant};

use sqlx::postgres::PgConnection;
use tokio::sync::{oneshot, watch};

use super::super::attune_db;
use super::super::Error;

/// How many times the lock is tried, [`LOCK_RETRY`] apart, before another process is taken
/// to hold it: a process of the same name that just died (`kill -9`) or is ending may still
/// hold it for a moment, until PostgreSQL notices its session ended.
const LOCK_ATTEMPTS: u32 = 10;

/// The pause between two tries of the lock.
const LOCK_RETRY: Duration = Duration::from_millis(200);

/// The least time given to marking the worker inactive at shutdown, even when the shutdown
/// budget is spent.
const DEREGISTER_WAIT: Duration = Duration::from_secs(1);

/// The heartbeat and the name lock, on a thread and a tokio runtime of their own, with their
/// own database connection (not a pooled one: a pool may close a connection at any time,
/// and the lock would go with it): guests run on the main runtime's threads without
/// yielding, so CPU-bound executions on every slot would otherwise delay the beats until the
/// scheduler takes the worker for dead. Beats every `period` on the database's clock. A
/// failed beat is logged; the connection is then opened again and the lock taken again. If
/// another process of the same name took it meanwhile, [`Heartbeat::lost`] turns `true`.
pub(super) struct Heartbeat {
    id: Option<oneshot::Sender<i64>>,
    stop: Option<oneshot::Sender<Instant>>,
    lost: watch::Receiver<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts the thread and takes the lock of worker `name` (waiting up to about 2 s for a
    /// process of that name that is ending); beats start at [`Heartbeat::begin`].
    ///
    /// # Errors
    /// [`Error::NameInUse`] when another process holds the lock, [`Error::Database`] when the
    /// database cannot be reached, [`Error::Config`] when the thread cannot start.
    pub(super) async fn lock(url: &str, name: &str, period: Duration) -> Result<Self, Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Config(format!("cannot start the heartbeat runtime: {e}")))?;
        let (ready, locked) = oneshot::channel();
        let (id, id_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel();
        let (lost_tx, lost) = watch::channel(false);
        let beat = Beat {
            url: url.to_owned(),
            name: name.to_owned(),
            period,
            lost: lost_tx,
        };
        let thread = std::thread::Builder::new()
            .name("attune-heartbeat".into())
            .spawn(move || runtime.block_on(beat.run(ready, id_rx, stop_rx)))
            .map_err(|e| Error::Config(format!("cannot start the heartbeat thread: {e}")))?;
        let heartbeat = Self {
            id: Some(id),
            stop: Some(stop),
            lost,
            thread: Some(thread),
        };
        match locked.await {
            Ok(Ok(())) => Ok(heartbeat),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Config("the heartbeat thread ended".into())),
        }
    }

    /// Starts beating for the registered worker `id`.
    pub(super) fn begin(&mut self, id: i64) {
        if let Some(sender) = self.id.take() {
            let _ = sender.send(id);
        }
    }

    /// Turns `true` when the lock was lost to another process of the same name.
    pub(super) fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Stops beating; marks the worker `inactive` (unless the lock was lost: the worker's row
    /// is the other process's now) by `deadline`, or within [`DEREGISTER_WAIT`] when that is
    /// later; then releases the lock (closes the connection).
    pub(super) fn stop(mut self, deadline: Instant) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(deadline);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The heartbeat thread's state.
struct Beat {
    url: String,
    name: String,
    period: Duration,
    lost: watch::Sender<bool>,
}

impl Beat {
    async fn run(
        self,
        ready: oneshot::Sender<Result<(), Error>>,
        id: oneshot::Receiver<i64>,
        mut stop: oneshot::Receiver<Instant>,
    ) {
        let mut conn = match self.take().await {
            Ok(conn) => {
                let _ = ready.send(Ok(()));
                Some(conn)
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        // Dropped without an id: the worker did not start (the connection closes).
        let Ok(id) = id.await else { return };
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let deadline = loop {
            tokio::select! {
                deadline = &mut stop => break deadline.ok(),
                _ = tick.tick() => {}
            }
            if *self.lost.borrow() {
                continue;
            }
            // A beat (or the reconnection after a failed one) is not waited for at shutdown:
            // its connection, left mid-statement, is dropped, and the lock taken again below.
            let interrupted = tokio::select! {
                deadline = &mut stop => Some(deadline.ok()),
                () = self.beat(id, &mut conn) => None,
            };
            if let Some(deadline) = interrupted {
                conn = None;
                break deadline;
            }
        };
        if *self.lost.borrow() {
            return;
        }
        let now = Instant::now();
        let within = deadline
            .map_or(DEREGISTER_WAIT, |d| d.saturating_duration_since(now))
            .max(DEREGISTER_WAIT);
        let deregistered = tokio::time::timeout(within, async {
            let mut conn = match conn {
                Some(conn) => conn,
                None => self.take().await?,
            };
            attune_db::deregister(&mut conn, id).await?;
            let _ = sqlx::Connection::close(conn).await;
            Ok::<_, Error>(())
        })
        .await;
        match deregistered {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("cannot mark the worker inactive: {e}"),
            Err(_) => tracing::error!(
                "cannot mark the worker inactive: no answer from Attune's database within {within:?}"
            ),
        }
    }

    /// One beat on the lock's connection; when it fails, the connection is opened and the
    /// lock taken again (or found lost).
    async fn beat(&self, id: i64, conn: &mut Option<PgConnection>) {
        let limit = self.period.max(Duration::from_secs(1));
        if let Some(c) = conn.as_mut() {
            match tokio::time::timeout(limit, attune_db::heartbeat(&mut *c, id)).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => tracing::error!("heartbeat failed: {e}"),
                Err(_) => tracing::error!(
                    "heartbeat failed: no answer from Attune's database within {limit:?}"
                ),
            }
            // The session, and the lock with it, may be gone: start again.
            *conn = None;
        }
        match self.take().await {
            Ok(mut c) => {
                tracing::info!(
                    "database connection of the heartbeat opened again, worker-name lock held"
                );
                if let Err(e) = attune_db::heartbeat(&mut c, id).await {
                    tracing::error!("heartbeat failed: {e}");
                }
                *conn = Some(c);
            }
            Err(Error::NameInUse(_)) => {
                tracing::error!("{}", Error::NameLost(self.name.clone()));
                self.lost.send_replace(true);
            }
            Err(e) => tracing::error!("heartbeat failed: {e}"),
        }
    }

    /// A connection holding the lock of the worker's name (tried [`LOCK_ATTEMPTS`] times).
    async fn take(&self) -> Result<PgConnection, Error> {
        let limit = self.period.max(Duration::from_secs(5));
        let mut conn = tokio::time::timeout(limit, attune_db::connect_one(&self.url))
            .await
            .map_err(|_| {
                Error::Database(format!("no connection within {limit:?} (heartbeat)"))
            })??;
        for attempt in 1..=LOCK_ATTEMPTS {
            if attune_db::lock_name(&mut conn, &self.name).await? {
                return Ok(conn);
            }
            if attempt < LOCK_ATTEMPTS {
                tokio::time::sleep(LOCK_RETRY).await;
            }
        }
        Err(Error::NameInUse(self.name.clone()))
    }
}
