//! The end of an execution: its terminal status and result committed (with the pending row of
//! the completion ledger, [`super::super::ledger`]), then `ExecutionCompleted` published and
//! recorded; the dispatch is acknowledged only after that.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::super::attune_db::{self, ActionRow, ExecutionRow, TERMINAL};
use super::super::ledger;
use super::super::protocol::{self, Envelope};
use super::super::{Error, Failure};
use super::delivery::Disposition;
use super::result::failure_result;
use super::{Ctx, MAX_BACKOFF};

/// How long a confirmed completion waits for a terminal commit to take its record along
/// before it is recorded by itself.
const RECORD_DELAY: Duration = Duration::from_millis(100);

impl Ctx {
    /// Commits the terminal status (retrying while the database is unreachable), logs the
    /// execution's summary line (`execution ended`, with the status written), publishes
    /// `ExecutionCompleted`, and tells the caller to acknowledge once the broker confirmed it
    /// (see [`Ctx::publish_completed`]). A result the database refuses is replaced by status
    /// `failed` with the refusal as its error; when that is refused too,
    /// [`Disposition::Refused`].
    pub(super) async fn complete(
        &self,
        execution: &ExecutionRow,
        action: Option<&ActionRow>,
        expected: &str,
        status: &str,
        result: Value,
        correlation: Option<String>,
    ) -> Disposition {
        let id = execution.id;
        let written = match self.write_terminal(id, expected, status, &result).await {
            Ok(written) => Ok((status, result, written)),
            Err(Error::Refused(why)) => {
                tracing::error!(
                    execution = id,
                    "Attune's database refused the result; ending the execution failed instead: {why}"
                );
                let duration = result
                    .get("duration_ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                let fallback = failure_result(&Failure::ResultRefused(why), false, duration);
                match self.write_terminal(id, expected, "failed", &fallback).await {
                    Ok(written) => Ok(("failed", fallback, written)),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        let (status, result, written) = match written {
            Ok(w) => w,
            Err(Error::Refused(why)) => return Disposition::Refused(why),
            Err(e) => {
                tracing::error!(
                    execution = id,
                    "cannot write the result, dispatch requeued: {e}"
                );
                return Disposition::Requeue;
            }
        };
        if !written {
            tracing::warn!(
                execution = id,
                "execution changed state while it ran; its result was not written"
            );
            return Disposition::Ack;
        }
        // The summary line: after the commit, with the status written (a refused result
        // ends `failed`).
        let duration_ms = result
            .get("duration_ms")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        tracing::info!(
            execution = id,
            action = %execution.action_ref,
            status,
            duration_ms,
            "execution ended"
        );
        self.metrics.ended(status);
        #[cfg(feature = "fault-injection")]
        super::super::fault::exit_before_completed(id);
        let action_id = action.map(|a| a.id).or(execution.action).unwrap_or(0);
        self.publish_completed(execution, action_id, status, result, correlation)
            .await
    }

    /// Publishes the `ExecutionCompleted` of an ended execution and records it in the
    /// completion ledger: [`Disposition::Ack`] once the broker confirmed it, else
    /// [`Disposition::Requeue`] (the dispatch comes back, and its redelivery publishes the
    /// completion from the committed row).
    pub(super) async fn publish_completed(
        &self,
        execution: &ExecutionRow,
        action_id: i64,
        status: &str,
        result: Value,
        correlation: Option<String>,
    ) -> Disposition {
        let id = execution.id;
        let completed = Envelope::new(
            "ExecutionCompleted",
            protocol::Completed {
                execution_id: id,
                action_id,
                action_ref: execution.action_ref.clone(),
                status: status.to_owned(),
                result: Some(result),
                completed_at: protocol::now_rfc3339(),
            },
            correlation,
        );
        #[cfg(feature = "fault-injection")]
        let injected = super::super::fault::fail_completed(id);
        #[cfg(not(feature = "fault-injection"))]
        let injected = Ok(());
        let published = match injected {
            Ok(()) => self.publish(protocol::COMPLETED_KEY, &completed).await,
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            tracing::warn!(
                execution = id,
                "ExecutionCompleted not published, dispatch requeued: {e}"
            );
            return Disposition::Requeue;
        }
        if self.ledger {
            self.published().push(id);
            self.published_added.notify_one();
        }
        Disposition::Ack
    }

    /// A dispatch of an execution already ended: its `ExecutionCompleted` is published from
    /// the committed row when the completion ledger says it is still pending (the worker
    /// that ended it stopped, or the broker failed, before it was published); otherwise the
    /// dispatch is acknowledged and skipped.
    pub(super) async fn ended(
        &self,
        execution: &ExecutionRow,
        correlation: Option<String>,
    ) -> Disposition {
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

    /// Executions whose `ExecutionCompleted` the broker confirmed and the ledger does not
    /// record yet.
    fn published(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        // A poisoned lock only means a panic while pushing or taking; the list is valid.
        self.published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records the confirmed `ExecutionCompleted` not recorded yet in the ledger, retried with
    /// backoff (5 times) while the database cannot be reached. Not recorded, it is only
    /// logged: the dispatches were acknowledged (the worker would publish them again only
    /// from [`Ctx::publish_pending`], after a restart).
    pub(super) async fn record_published(&self) {
        // Left in the list until written (this future may be dropped while it waits; a
        // terminal commit that takes them meanwhile writes them again, which changes nothing).
        let ids = self.published().clone();
        if ids.is_empty() {
            return;
        }
        let mut delay = Duration::from_millis(100);
        for attempt in 1..=5 {
            match ledger::published(&self.pool, &ids).await {
                Ok(()) => {
                    self.published().retain(|id| !ids.contains(id));
                    return;
                }
                Err(e) if attempt == 5 => {
                    self.published().retain(|id| !ids.contains(id));
                    tracing::warn!(
                        executions = ?ids,
                        "ExecutionCompleted published but not recorded in attune_wasm.completion: {e}"
                    );
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Records confirmed completions [`RECORD_DELAY`] after the first one that no terminal
    /// commit took along (an idle worker); runs until aborted.
    pub(super) async fn record_published_loop(&self) {
        loop {
            self.published_added.notified().await;
            tokio::time::sleep(RECORD_DELAY).await;
            self.record_published().await;
        }
    }

    /// Whether the ledger says the `ExecutionCompleted` of `id` is still to publish, after
    /// recording the confirmed ones this process holds.
    ///
    /// # Errors
    /// [`Error::Database`].
    pub(super) async fn completion_pending(&self, id: i64) -> Result<bool, Error> {
        self.record_published().await;
        ledger::pending(&self.pool, id).await
    }

    /// `attune_db::finish` (with the pending row of the completion ledger and the publication
    /// times of the confirmed completions, in one statement, when the ledger is on), retried with backoff (10 times) while the database cannot be
    /// reached; a refusal is answered at once.
    async fn write_terminal(
        &self,
        id: i64,
        expected: &str,
        status: &str,
        result: &Value,
    ) -> Result<bool, Error> {
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            let finished = if self.ledger {
                // Confirmed completions recorded by the same statement. Left in the list until
                // the statement succeeded: this future may be dropped while it waits (a
                // shutdown past its budget aborts it), and ids taken out then would be written
                // by no one (their completions published again at the next start).
                let published = self.published().clone();
                let finished = ledger::finish(
                    &self.pool,
                    self.worker_id,
                    id,
                    expected,
                    status,
                    result,
                    &published,
                )
                .await;
                if finished.is_ok() {
                    self.published().retain(|id| !published.contains(id));
                }
                finished
            } else {
                attune_db::finish(&self.pool, id, expected, status, result).await
            };
            match finished {
                Err(e @ Error::Database(_)) if attempts < 10 => {
                    attempts += 1;
                    tracing::error!(execution = id, "cannot write the result, retrying: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_BACKOFF);
                }
                other => return other,
            }
        }
    }

    /// Sends on the current channel without waiting for the broker's confirmation (see
    /// [`protocol::send`]); `None` when there is no channel or the send failed.
    pub(super) async fn send<T: Serialize>(
        &self,
        key: &str,
        envelope: &Envelope<T>,
    ) -> Option<lapin::PublisherConfirm> {
        let channel = self.publisher.borrow().clone()?;
        protocol::send(&channel, key, envelope, false).await.ok()
    }

    /// Publishes on the current channel, waiting (up to ~60 s) for a reconnection.
    pub(super) async fn publish<T: Serialize>(
        &self,
        key: &str,
        envelope: &Envelope<T>,
    ) -> Result<(), Error> {
        let mut last = Error::Broker("no broker connection".into());
        for _ in 0..240 {
            let channel = self.publisher.borrow().clone();
            if let Some(channel) = channel {
                match protocol::publish(&channel, key, envelope, false).await {
                    Ok(()) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(last)
    }
}
