//! Cancel requests: the worker's cancel queue and the cancel handles by execution id.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::Connection;
use serde_json::Value;

use super::super::protocol::{self, Envelope};
use super::super::Error;
use super::consume::answer_failure;
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
                ctx.cancel_handle(id).cancel();
                delivery.acker.ack(BasicAckOptions::default()).await
            }
            None => {
                tracing::error!("cancel request dead-lettered: not an ExecutionCancelRequested with a numeric execution_id");
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: false,
                        multiple: false,
                    })
                    .await
            }
        };
        if let Some(reason) = answer_failure(answered) {
            tracing::warn!("cannot answer a delivery ({reason}); the broker will redeliver it");
        }
    }
}

impl Ctx {
    /// The cancel handle of execution `id` (created when there is none yet).
    pub(super) fn cancel_handle(&self, id: i64) -> runtime::Cancel {
        // A poisoned lock only means a panic while inserting or removing; the map is valid.
        self.cancels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(id)
            .or_default()
            .clone()
    }

    pub(super) fn forget_cancel(&self, id: i64) {
        self.cancels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
    }
}
