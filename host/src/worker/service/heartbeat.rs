//! The heartbeat: `attune.worker.last_heartbeat` on the database's clock, from a thread of its
//! own.

use std::time::Duration;

use sqlx::postgres::PgPool;

use super::super::attune_db;
use super::super::Error;

/// The heartbeat, on a thread and a tokio runtime of its own (with its own database
/// connection): guests run on the main runtime's threads without yielding, so CPU-bound
/// executions on every slot would otherwise delay the beats until the scheduler takes the
/// worker for dead. Beats every `period` on the database's clock; a failed beat is logged and
/// retried at the next period.
pub(super) struct Heartbeat {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Heartbeat {
    pub(super) fn start(url: &str, id: i64, period: Duration) -> Result<Self, Error> {
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
    pub(super) fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
