//! One delivery from `worker.{id}.executions`: parsed, claimed (one handler per execution in
//! this process), dispatched by the execution's status, and answered to the broker (ack,
//! requeue, dead letter); refusals counted and given up after [`MAX_REFUSALS`].

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use serde_json::Value;
use tokio::sync::watch;

use super::super::attune_db::{self, Claimed, ExecutionRow, TERMINAL};
use super::super::ledger;
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
                let carried = protocol::refusals(&delivery.properties);
                (
                    Some(id),
                    self.settle(id, carried, disposition, correlation).await,
                )
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
                    let n = map.entry(id).or_insert(0);
                    *n = (*n).max(carried).saturating_add(1);
                    *n
                };
                if attempts < MAX_REFUSALS {
                    tracing::warn!(
                        execution = id,
                        attempts,
                        "Attune's database refused an update of this execution, dispatch requeued: {why}"
                    );
                    return Disposition::Counted(attempts);
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

    /// A dispatch of an execution already ended: its `ExecutionCompleted` is published from
    /// the committed row when the completion ledger says it is still pending (the worker
    /// that ended it stopped, or the broker failed, before it was published); otherwise the
    /// dispatch is acknowledged and skipped.
    async fn ended(&self, execution: &ExecutionRow, correlation: Option<String>) -> Disposition {
        let id = execution.id;
        let pending = if self.ledger {
            match self.completion_pending(id).await {
                Ok(pending) => pending,
                Err(e) => {
                    tracing::error!(
                        execution = id,
                        "cannot read the completion ledger, dispatch requeued: {e}"
                    );
                    return Disposition::Requeue;
                }
            }
        } else {
            false
        };
        if !pending {
            tracing::info!(
                execution = id,
                status = %execution.status,
                "execution already ended: dispatch acknowledged and skipped"
            );
            return Disposition::Ack;
        }
        self.publish_from_row(execution, correlation).await
    }

    /// Publishes the `ExecutionCompleted` of an ended execution from its committed status
    /// and result (see [`Ctx::publish_completed`]).
    async fn publish_from_row(
        &self,
        execution: &ExecutionRow,
        correlation: Option<String>,
    ) -> Disposition {
        let id = execution.id;
        let result = match attune_db::result(&self.pool, id).await {
            Ok(result) => result.unwrap_or(Value::Null),
            Err(e) => {
                tracing::error!(
                    execution = id,
                    "cannot load the execution's result, dispatch requeued: {e}"
                );
                return Disposition::Requeue;
            }
        };
        let action_id = match execution.action {
            Some(action) => action,
            None => attune_db::action(&self.pool, execution)
                .await
                .ok()
                .flatten()
                .map_or(0, |a| a.id),
        };
        tracing::info!(
            execution = id,
            status = %execution.status,
            "execution already ended, its ExecutionCompleted not yet published: publishing it from the committed row"
        );
        self.publish_completed(execution, action_id, &execution.status, result, correlation)
            .await
    }

    /// Publishes the pending `ExecutionCompleted` of executions this worker ended (the
    /// ledger's rows without a publication time), for those whose dispatch will not come back
    /// (dead-lettered by the queue's message TTL while the broker or the worker was away).
    /// Run on each connection to the broker; an execution a delivery is handling is left to
    /// it.
    pub(super) async fn publish_pending(&self) {
        if !self.ledger {
            return;
        }
        let ids = match ledger::pending_of(&self.pool, self.worker_id, 1000).await {
            Ok(ids) => ids,
            Err(e) => {
                tracing::error!("cannot read the completion ledger: {e}");
                return;
            }
        };
        for id in ids {
            let Ok(_claim) = self.claim(id) else {
                continue;
            };
            let execution = match attune_db::execution(&self.pool, id).await {
                Ok(Some(e)) if TERMINAL.contains(&e.status.as_str()) => e,
                _ => continue,
            };
            if matches!(self.completion_pending(id).await, Ok(true)) {
                self.publish_from_row(&execution, None).await;
            }
        }
    }

    /// One dispatch of execution `id`: what to answer the broker.
    async fn dispatch(&self, id: i64, correlation: Option<String>) -> Disposition {
        let _claim = loop {
            match self.claim(id) {
                Ok(claim) => break claim,
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
        };
        // Loaded, and moved to `running` with its action loaded when it may start.
        let execution = match attune_db::claim(&self.pool, id, self.worker_id).await {
            Ok(Some(Claimed::Started { execution, action })) => {
                return self.run_execution(execution, action, correlation).await;
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
