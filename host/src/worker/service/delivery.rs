//! One delivery from `worker.{id}.executions`: parsed, claimed (one handler per execution in
//! this process), dispatched by the execution's status, and answered to the broker (ack,
//! requeue, dead letter); refusals counted and given up after [`MAX_REFUSALS`].

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::Acker;
use serde_json::Value;
use tokio::sync::watch;

use super::super::attune_db::{self, Claimed, TERMINAL};
use super::super::protocol::{self, Envelope, ExecutionRequested};
use super::super::{Error, Failure};
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
    /// The database refused an update of the execution (the error): counted, and given up
    /// after [`MAX_REFUSALS`].
    Refused(String),
    /// A refusal counted (the count so far): the dispatch is put back in its queue with the
    /// count in its headers ([`protocol::REFUSALS_HEADER`]), or requeued as it is.
    Counted(u32),
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
    pub(super) fn claim(&self, id: i64) -> Result<InFlight<'_>, watch::Receiver<()>> {
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

    /// Handles one delivery and answers the broker. A panic while handling it (a bug) is
    /// caught here: the execution ends `failed` with a fixed reason ([`Ctx::after_panic`]), and
    /// the worker goes on serving.
    pub(super) async fn handle(&self, delivery: Delivery) {
        let (id, disposition) = match parse(&delivery) {
            Some((id, correlation)) => {
                let carried = protocol::refusals(&delivery.properties);
                let handled = AssertUnwindSafe(async {
                    let disposition = self.dispatch(id, correlation.clone()).await;
                    self.settle(id, carried, disposition, correlation.clone())
                        .await
                })
                .catch_unwind()
                .await;
                let disposition = match handled {
                    Ok(disposition) => disposition,
                    Err(_) => {
                        let disposition = self.after_panic(id, correlation.clone()).await;
                        self.settle(id, carried, disposition, correlation).await
                    }
                };
                (Some(id), disposition)
            }
            None => (None, Disposition::DeadLetter),
        };
        #[cfg(feature = "fault-injection")]
        if let (Some(id), Disposition::Ack, false) = (id, &disposition, delivery.redelivered) {
            super::super::fault::pause_before_ack(id).await;
        }
        let answered = match disposition {
            Disposition::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
            Disposition::DeadLetter => dead_letter(&delivery.acker).await,
            Disposition::Requeue | Disposition::Refused(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                requeue(&delivery).await
            }
            Disposition::Counted(refusals) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let channel = self.publisher.borrow().clone();
                let republished = match channel {
                    Some(channel) => protocol::republish(&channel, &delivery, refusals).await,
                    None => Err(super::super::Error::Broker("no broker connection".into())),
                };
                match republished {
                    Ok(()) => delivery.acker.ack(BasicAckOptions::default()).await,
                    Err(e) => {
                        tracing::warn!(
                            execution = id,
                            "cannot put the refused dispatch back with its count, requeued as it is: {e}"
                        );
                        requeue(&delivery).await
                    }
                }
            }
        };
        // The channel is gone (lapin answers `Ok(false)` for a delivery of a closed channel):
        // the broker redelivers, and the redelivery finds the execution ended (acknowledged
        // and skipped then, or its completion published when it was not). An old delivery's
        // tag is never answered on a newer channel (each acker belongs to its own channel).
        match answer_failure(answered) {
            Some(reason) => tracing::warn!(
                execution = id,
                "cannot answer a delivery ({reason}); the broker will redeliver it"
            ),
            None => tracing::debug!(execution = id, "delivery answered"),
        }
    }

    /// Counts a refusal (after the `carried` ones of the dispatch's [`protocol::REFUSALS_HEADER`],
    /// or this process's own count when it is higher); past [`MAX_REFUSALS`] gives the
    /// execution up. Forgets the count once the dispatch is acknowledged or dead-lettered.
    async fn settle(
        &self,
        id: i64,
        carried: u32,
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
                    let attempts = next_refusal(map.remove(id).unwrap_or(0), carried);
                    if attempts < MAX_REFUSALS {
                        map.insert(id, attempts, std::time::Instant::now());
                    }
                    attempts
                };
                if attempts < MAX_REFUSALS {
                    tracing::warn!(
                        execution = id,
                        attempts,
                        "Attune's database refused an update of this execution, dispatch requeued: {why}"
                    );
                    return Disposition::Counted(attempts);
                }
                self.metrics.given_up();
                self.give_up(id, attempts, why, correlation).await
            }
            Disposition::Requeue => Disposition::Requeue,
            done => {
                refusals().remove(id);
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
            // Ended `failed`: acknowledged once its completion is published, else requeued.
            done @ (Disposition::Ack | Disposition::Requeue) => done,
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

    /// Claims execution `id`, waiting for the delivery that handles it now, if any.
    async fn claim_wait(&self, id: i64) -> InFlight<'_> {
        loop {
            match self.claim(id) {
                Ok(claim) => return claim,
                Err(mut done) => {
                    // The broker redelivered a dispatch this process is still handling (its
                    // connection was lost): handled again once that run has ended (then
                    // found ended, and acknowledged or its completion published).
                    tracing::info!(
                        execution = id,
                        "redelivered while it runs here: handled after it ends"
                    );
                    while done.changed().await.is_ok() {}
                }
            }
        }
    }

    /// After a panic while handling execution `id` (a bug): the execution ends `failed` with
    /// a fixed reason ([`Failure::Internal`]; the panic's message could hold secret data, so
    /// it goes nowhere), unless it had ended (then as any dispatch of an ended execution);
    /// its `ExecutionCompleted` is published and the dispatch acknowledged after the commit.
    /// A second panic dead-letters the dispatch.
    async fn after_panic(&self, id: i64, correlation: Option<String>) -> Disposition {
        self.cancels.forget(id);
        tracing::error!(
            execution = id,
            "internal error while handling this execution (a bug; details withheld, they could hold secret data): ending it failed"
        );
        let recovered = AssertUnwindSafe(async {
            let _claim = self.claim_wait(id).await;
            let execution = match attune_db::execution(&self.pool, id).await {
                Ok(Some(e)) => e,
                Ok(None) => return Disposition::DeadLetter,
                Err(e) => {
                    tracing::error!(
                        execution = id,
                        "cannot load the execution, dispatch requeued: {e}"
                    );
                    return Disposition::Requeue;
                }
            };
            if TERMINAL.contains(&execution.status.as_str()) {
                return self.ended(&execution, correlation).await;
            }
            let expected = execution.status.clone();
            self.end_with(
                &execution,
                &expected,
                "failed",
                &Failure::Internal,
                correlation,
            )
            .await
        })
        .catch_unwind()
        .await;
        recovered.unwrap_or_else(|_| {
            tracing::error!(
                execution = id,
                "dispatch dead-lettered: internal error again while ending this execution failed"
            );
            Disposition::DeadLetter
        })
    }

    /// One dispatch of execution `id`: what to answer the broker.
    async fn dispatch(&self, id: i64, correlation: Option<String>) -> Disposition {
        let _claim = self.claim_wait(id).await;
        // Loaded, and moved to `running` with its action loaded when it may start.
        let execution = match attune_db::claim(&self.pool, id, self.worker_id).await {
            Ok(Some(Claimed::Started {
                execution,
                action,
                keys,
            })) => {
                return self
                    .run_execution(execution, action, keys, correlation)
                    .await;
            }
            Ok(Some(Claimed::Found(e))) => e,
            Ok(None) => {
                tracing::error!(
                    execution = id,
                    "dispatch dead-lettered: no such execution in attune.execution"
                );
                return Disposition::DeadLetter;
            }
            Err(Error::Refused(why)) => return Disposition::Refused(why),
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
            s if TERMINAL.contains(&s) => self.ended(&execution, correlation).await,
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
            _ => {
                tracing::info!(
                    execution = id,
                    "execution changed state before it started: dispatch acknowledged and skipped"
                );
                Disposition::Ack
            }
        }
    }
}

/// The refusal count after one more refusal: this process's own count `own` (0 when it kept
/// none) or the `carried` count of the dispatch's [`protocol::REFUSALS_HEADER`], whichever is
/// higher, plus this one. The header is trusted only as a count, and at most as
/// [`MAX_REFUSALS`]` - 1` earlier refusals: whoever can publish to the worker's queue can
/// already dispatch anything, but a forged count never gives an execution up before the
/// database refused it at least once here.
fn next_refusal(own: u32, carried: u32) -> u32 {
    own.max(carried.min(MAX_REFUSALS.saturating_sub(1)))
        .saturating_add(1)
}

/// Dead-letters a delivery (nack without requeue: to its queue's dead-letter exchange,
/// `attune.dlx`).
pub(super) async fn dead_letter(acker: &Acker) -> Result<bool, lapin::Error> {
    acker
        .nack(BasicNackOptions {
            requeue: false,
            multiple: false,
        })
        .await
}

/// Puts a delivery back in its queue (nack with requeue).
async fn requeue(delivery: &Delivery) -> Result<bool, lapin::Error> {
    delivery
        .acker
        .nack(BasicNackOptions {
            requeue: true,
            multiple: false,
        })
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_refusal_count_never_gives_up_before_a_refusal_here() {
        // Counted on: the header, or this process's count when it is higher.
        assert_eq!(next_refusal(0, 0), 1);
        assert_eq!(next_refusal(0, 2), 3);
        assert_eq!(next_refusal(3, 1), 4);
        // A forged count (any value) weighs at most MAX_REFUSALS - 1 earlier refusals: the
        // execution is given up only on a refusal this worker saw, never skipped.
        for forged in [MAX_REFUSALS, MAX_REFUSALS + 1, 1_000, u32::MAX] {
            assert_eq!(next_refusal(0, forged), MAX_REFUSALS);
        }
        assert!(next_refusal(0, MAX_REFUSALS - 2) < MAX_REFUSALS);
    }
}
