//! The broker side of the worker: connecting (with backoff), declaring, consuming dispatches
//! into the execution slots, and the drain on shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use super::super::config::WorkerConfig;
use super::super::protocol;
use super::super::Error;
use super::cancel::{cancel_loop, open_cancels};
use super::{AbortOnDrop, Ctx, MAX_BACKOFF};

/// The consume loop, reconnecting to the broker with backoff, until `shutdown`; then drains.
pub(super) async fn consume(
    ctx: &Arc<Ctx>,
    cfg: &WorkerConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), Error> {
    let slots = Arc::new(Semaphore::new(
        usize::try_from(cfg.max_concurrent).unwrap_or(1),
    ));
    // Attune's prefetch: max_concurrent_tasks + 2; a delivery waits for a free slot.
    let prefetch = u16::try_from(cfg.max_concurrent.saturating_add(2)).unwrap_or(u16::MAX);
    let mut tasks = JoinSet::new();
    let mut backoff = Duration::from_millis(100);
    let mut last: Option<(Connection, Channel, String)> = None;
    'connect: loop {
        if *shutdown.borrow() {
            break;
        }
        let connected = async {
            let conn = protocol::connect(&cfg.amqp_url).await?;
            let (consumer, channel, tag) = open_consumer(&conn, ctx, prefetch).await?;
            Ok::<_, Error>((conn, consumer, channel, tag))
        }
        .await;
        let (conn, mut consumer, channel, tag) = match connected {
            Ok(c) => c,
            Err(e @ Error::Declare { .. }) => return Err(e),
            Err(e) => {
                tracing::error!("{e}; retrying in {backoff:?}");
                tokio::select! {
                    _ = shutdown.changed() => break 'connect,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let cancels = match open_cancels(&conn, ctx.worker_id).await {
            Ok(consumer) => tokio::spawn(cancel_loop(Arc::clone(ctx), consumer)),
            Err(e) => {
                tracing::error!("{e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let _cancels = AbortOnDrop(cancels);
        // Not aborted with the connection: a publication cut between the broker's
        // confirmation and its record would be published again.
        let pending = Arc::clone(ctx);
        tokio::spawn(async move { pending.publish_pending().await });
        // A lost connection is noticed here even while every slot is busy (running executions
        // publish their results on the next connection, so it must not wait for a free slot).
        let mut events = conn.events_listener();
        tracing::info!(queue = %protocol::executions_queue(ctx.worker_id), "consuming dispatches");
        loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                _ = shutdown.changed() => {
                    last = Some((conn, channel, tag));
                    break 'connect;
                }
                Some(lapin::Event::Error(e)) = events.next() => {
                    tracing::warn!("broker connection lost ({e}); reconnecting");
                    break;
                }
                permit = Arc::clone(&slots).acquire_owned() => match permit {
                    Ok(p) => p,
                    Err(_) => break 'connect,
                },
            };
            let next = tokio::select! {
                _ = shutdown.changed() => {
                    last = Some((conn, channel, tag));
                    break 'connect;
                }
                Some(lapin::Event::Error(e)) = events.next() => {
                    tracing::warn!("broker connection lost ({e}); reconnecting");
                    break;
                }
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    let ctx = Arc::clone(ctx);
                    tasks.spawn(async move {
                        ctx.handle(delivery).await;
                        drop(permit);
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!("broker connection lost ({e}); reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("the broker ended the consumer; reconnecting");
                    break;
                }
            }
        }
    }
    // Stop consuming; what was prefetched and not started returns to the queue on close.
    if let Some((_, channel, tag)) = &last {
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    let drained = tokio::time::timeout(cfg.shutdown_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // The rest are cancelled: each ends `cancelled`, reported and acknowledged.
        tracing::warn!(
            running = tasks.len(),
            "shutdown timeout passed: cancelling the executions still running"
        );
        ctx.cancels.cancel_all();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if ended.is_err() {
            tracing::warn!(
                running = tasks.len(),
                "shutdown: executions still not ended are abandoned unacknowledged (their dispatches return to the queue)"
            );
            tasks.abort_all();
        }
    }
    if let Some((conn, _, _)) = last {
        let _ = conn.close(200, "worker shutdown".into()).await;
    }
    Ok(())
}

/// Declares the topology, opens the publishing channel (confirm mode) and the consumer.
async fn open_consumer(
    conn: &Connection,
    ctx: &Ctx,
    prefetch: u16,
) -> Result<(lapin::Consumer, Channel, String), Error> {
    let broker = |what: &'static str| move |e: lapin::Error| Error::Broker(format!("{what}: {e}"));
    let channel = conn
        .create_channel()
        .await
        .map_err(broker("cannot open a channel"))?;
    protocol::declare_common(&channel).await?;
    protocol::declare_worker(&channel, ctx.worker_id).await?;
    let publisher = conn
        .create_channel()
        .await
        .map_err(broker("cannot open a channel"))?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(broker("cannot enable publisher confirms"))?;
    ctx.publisher.send_replace(Some(publisher));
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(broker("cannot set the prefetch count"))?;
    let tag = format!(
        "attune-wasm-worker-{}-{}",
        ctx.worker_id,
        uuid::Uuid::new_v4().simple()
    );
    let consumer = channel
        .basic_consume(
            protocol::executions_queue(ctx.worker_id).as_str().into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("cannot consume the worker's queue"))?;
    Ok((consumer, channel, tag))
}

/// Why an ack or nack did not reach the broker, if it did not: lapin answers `Ok(false)`
/// (not an error) for a delivery whose channel was closed meanwhile.
pub(super) fn answer_failure(answered: Result<bool, lapin::Error>) -> Option<String> {
    match answered {
        Ok(true) => None,
        Ok(false) => Some("its channel is closed".to_owned()),
        Err(e) => Some(e.to_string()),
    }
}
