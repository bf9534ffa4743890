//! Cancel requests: the worker's cancel queue and the cancel handles by execution id
//! ([`Cancels`], bounded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use serde_json::Value;

use super::super::protocol::{self, Envelope, WORKER_QUEUE_TTL_MS};
use super::super::Error;
use super::consume::answer_failure;
use super::delivery::dead_letter;
use super::recent::Recent;
use super::Ctx;
use crate::runtime;

/// Consumes `worker.{id}.cancel` (declared with the dispatch queue).
pub(super) async fn open_cancels(conn: &Connection, id: i64) -> Result<lapin::Consumer, Error> {
    let broker = |what: &'static str| move |e: lapin::Error| Error::Broker(format!("{what}: {e}"));
    let channel = conn
        .create_channel()
        .await
        .map_err(broker("cannot open a channel"))?;
    channel
        .basic_qos(10, BasicQosOptions::default())
        .await
        .map_err(broker("cannot set the prefetch count"))?;
    channel
        .basic_consume(
            protocol::cancel_queue(id).as_str().into(),
            format!("attune-wasm-cancel-{id}-{}", uuid::Uuid::new_v4().simple())
                .as_str()
                .into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("cannot consume the worker's cancel queue"))
}

/// `ExecutionCancelRequested`: cancels the execution if it runs here, or marks it so that it
/// ends `cancelled` at once when its dispatch comes. Malformed messages are dead-lettered.
pub(super) async fn cancel_loop(ctx: Arc<Ctx>, mut consumer: lapin::Consumer) {
    while let Some(Ok(delivery)) = consumer.next().await {
        let id = serde_json::from_slice::<Envelope<Value>>(&delivery.data)
            .ok()
            .filter(|e| e.message_type == "ExecutionCancelRequested")
            .and_then(|e| e.payload.get("execution_id").and_then(Value::as_i64));
        let answered = match id {
            Some(id) => {
                tracing::info!(execution = id, "cancel requested");
                ctx.cancels.request(id, Instant::now());
                delivery.acker.ack(BasicAckOptions::default()).await
            }
            None => {
                tracing::error!("cancel request dead-lettered: not an ExecutionCancelRequested with a numeric execution_id");
                dead_letter(&delivery.acker).await
            }
        };
        if let Some(reason) = answer_failure(answered) {
            tracing::warn!("cannot answer a delivery ({reason}); the broker will redeliver it");
        }
    }
}

/// How long a cancel request for an execution that is not running here is kept for its
/// dispatch: twice the dispatch queue's message TTL (a dispatch waiting longer than that in
/// the queue has been dead-lettered). The execution's own status (`canceling`) still ends a
/// later dispatch `cancelled`.
pub(super) const STRAY_CANCEL_TTL: Duration =
    Duration::from_millis(2 * WORKER_QUEUE_TTL_MS.unsigned_abs() as u64);

/// Most cancel requests kept for executions that are not running here; past it the oldest
/// is dropped.
pub(super) const MAX_STRAY_CANCELS: usize = 10_000;

/// Cancel handles by execution id: of running executions, and of executions cancelled
/// before their dispatch came (they end at once when it does). Those are bounded: dropped
/// after [`STRAY_CANCEL_TTL`], and the oldest dropped past [`MAX_STRAY_CANCELS`] (a cancel
/// for an execution this worker never receives would otherwise stay forever), in O(1)
/// amortised per request ([`Recent`]).
pub(super) struct Cancels {
    inner: Mutex<Inner>,
    /// Set by [`Cancels::cancel_all`]: a run that registers later (its dispatch was taken,
    /// its guest not started yet) is cancelled at once, never left running past shutdown.
    all: std::sync::atomic::AtomicBool,
}

struct Inner {
    /// Runs of this process (never dropped until [`Cancels::forget`]).
    running: HashMap<i64, runtime::Cancel>,
    /// Requests for executions not running here (already cancelled handles).
    strays: Recent<runtime::Cancel>,
}

impl Default for Cancels {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                running: HashMap::new(),
                strays: Recent::new(STRAY_CANCEL_TTL, MAX_STRAY_CANCELS),
            }),
            all: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Cancels {
    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic while inserting or removing; the maps are valid.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cancel handle of a run of execution `id` starting now: the one of an earlier
    /// cancel request (already cancelled), or a new one.
    pub(super) fn running(&self, id: i64) -> runtime::Cancel {
        let mut inner = self.inner();
        let cancel = match inner.strays.remove(id) {
            Some(cancel) => cancel,
            None => inner.running.get(&id).cloned().unwrap_or_default(),
        };
        if self.all.load(std::sync::atomic::Ordering::SeqCst) {
            cancel.cancel();
        }
        inner.running.insert(id, cancel.clone());
        cancel
    }

    /// A cancel request for execution `id` at `now`: cancels its run, or keeps the request
    /// for its dispatch (dropping expired requests, and the oldest past the cap).
    pub(super) fn request(&self, id: i64, now: Instant) {
        let mut inner = self.inner();
        if let Some(cancel) = inner.running.get(&id) {
            cancel.cancel();
            return;
        }
        if inner.strays.get(id).is_some() {
            return;
        }
        let cancel = runtime::Cancel::default();
        cancel.cancel();
        inner.strays.insert(id, cancel, now);
    }

    /// Forgets execution `id` (its run ended).
    pub(super) fn forget(&self, id: i64) {
        self.inner().running.remove(&id);
    }

    /// Cancels every run (shutdown timeout).
    pub(super) fn cancel_all(&self) {
        let inner = self.inner();
        // Under the lock: a run registering now sees the flag or is in the map.
        self.all.store(true, std::sync::atomic::Ordering::SeqCst);
        for cancel in inner.running.values().chain(inner.strays.values()) {
            cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Cancels {
        /// Every execution with a handle, and whether it runs (tests).
        fn map(&self) -> HashMap<i64, View> {
            let inner = self.inner();
            let strays: Vec<i64> = inner.strays.ids().collect();
            let running = inner.running.keys().map(|id| (*id, View { running: true }));
            running
                .chain(strays.into_iter().map(|id| (id, View { running: false })))
                .collect()
        }
    }

    /// What the tests see of one handle.
    struct View {
        running: bool,
    }

    #[test]
    fn a_run_registering_after_cancel_all_starts_cancelled() {
        let cancels = Cancels::default();
        let before = cancels.running(1);
        cancels.cancel_all();
        assert!(before.is_cancelled());
        assert!(
            cancels.running(2).is_cancelled(),
            "taken before shutdown, started after"
        );
    }

    #[test]
    fn stray_cancel_requests_expire_and_are_capped() {
        let cancels = Cancels::default();
        let t0 = Instant::now();
        // A request before the dispatch: the run starts cancelled, and is forgotten after.
        cancels.request(1, t0);
        assert!(cancels.running(1).is_cancelled());
        cancels.forget(1);
        assert_eq!(cancels.map().len(), 0);
        // A running execution is cancelled by a request, and never expires.
        let run = cancels.running(2);
        cancels.request(2, t0);
        assert!(run.is_cancelled());
        // Requests for executions never dispatched here expire after the TTL.
        cancels.request(3, t0);
        cancels.request(4, t0 + STRAY_CANCEL_TTL / 2);
        assert_eq!(cancels.map().len(), 3);
        cancels.request(5, t0 + STRAY_CANCEL_TTL + Duration::from_secs(1));
        let mut ids: Vec<i64> = cancels.map().keys().copied().collect();
        ids.sort_unstable();
        assert_eq!(ids, [2, 4, 5]);
        // And are capped: the oldest goes first; the running one stays.
        let later = t0 + STRAY_CANCEL_TTL + Duration::from_secs(2);
        for id in 100..100 + MAX_STRAY_CANCELS as i64 {
            cancels.request(id, later);
        }
        let map = cancels.map();
        assert_eq!(
            map.values().filter(|e| !e.running).count(),
            MAX_STRAY_CANCELS
        );
        assert!(map.contains_key(&2) && map[&2].running);
        assert!(!map.contains_key(&4) && !map.contains_key(&5));
        assert!(map.contains_key(&(100 + MAX_STRAY_CANCELS as i64 - 1)));
        drop(map);
        cancels.cancel_all();
        assert!(run.is_cancelled());
    }
}
