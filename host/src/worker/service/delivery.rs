//! One delivery from `worker.{id}.executions`: parsed, claimed (one handler per execution in
//! this process), dispatched by the execution's status, and answered to the broker (ack,
//! requeue, dead letter); refusals counted and given up after [`MAX_REFUSALS`].

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use serde_json::Value;
use tokio::sync::watch;

use super::super::attune_db::{self, TERMINAL};
use super::super::protocol::{self, Envelope, ExecutionRequested};
use super::super::Failure;
use super::consume::answer_failure;
use super::{Ctx, MAX_REFUSALS};

/// Marks an execution as handled by this process until dropped; waiters on its receiver are
/// woken when it is.
pub(super) struct InFlight<'a> {
    ctx: &'a Ctx,
    id: i64,
    _done: watch::Sender<()>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.ctx.in_flight().remove(&self.id);
    }
}

/// What to answer the broker about one delivery.
pub(super) enum Disposition {
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

    pub(super) async fn handle(&self, delivery: Delivery) {
        let (id, disposition) = match parse(&delivery) {
            Some((id, correlation)) => {
                let disposition = self.dispatch(id, correlation.clone()).await;
                (Some(id), self.settle(id, disposition, correlation).await)
            }
            None => (None, Disposition::DeadLetter),
        };
        #[cfg(feature = "fault-injection")]
        if let (Some(id), Disposition::Ack, false) = (id, &disposition, delivery.redelivered) {
            super::super::fault::pause_before_ack(id).await;
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
