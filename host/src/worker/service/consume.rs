//! The broker side of the worker: connecting (with backoff), declaring, consuming dispatches
//! into the execution slots, and the drain on shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// The longest part of `worker.shutdown_timeout` kept for the executions cancelled when it
/// runs out (to end `cancelled`, be reported and acknowledged): a quarter of it, at most this.
const MAX_CANCEL_GRACE: Duration = Duration::from_secs(5);

/// The least time given to closing the broker connection at the end of a shutdown, even
/// when the shutdown budget is spent.
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// Why the consume loop left a connection.
enum Left {
    /// Shutdown: stop consuming, drain.
    Stop,
    /// The connection failed: reconnect.
    Lost,
}

/// The consume loop, reconnecting to the broker with backoff, until `shutdown`; then drains:
/// returns the shutdown's deadline (`worker.shutdown_timeout` after it began), which every
/// wait of the drain kept to.
pub(super) async fn consume(
    ctx: &Arc<Ctx>,
    cfg: &WorkerConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Instant, Error> {
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
            let cancels = open_cancels(&conn, ctx.worker_id).await?;
            Ok::<_, Error>((conn, consumer, channel, tag, cancels))
        };
        let connected = tokio::select! {
            _ = shutdown.changed() => break 'connect,
            connected = connected => connected,
        };
        let (conn, mut consumer, channel, tag, cancels) = match connected {
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
        let _cancels = AbortOnDrop(tokio::spawn(cancel_loop(Arc::clone(ctx), cancels)));
        // Not aborted with the connection: a publication cut between the broker's
        // confirmation and its record would be published again.
        let pending = Arc::clone(ctx);
        tokio::spawn(async move { pending.publish_pending().await });
        // A lost connection is noticed here even while every slot is busy (running executions
        // publish their results on the next connection, so it must not wait for a free slot).
        let mut events = conn.events_listener();
        tracing::info!(queue = %protocol::executions_queue(ctx.worker_id), "consuming dispatches");
        let left = loop {
            while tasks.try_join_next().is_some() {}
            // A free slot, then the next delivery; dropped at once on shutdown or a lost
            // connection (a permit taken is given back, a delivery not yet taken stays).
            let next = async {
                let permit = Arc::clone(&slots).acquire_owned().await;
                (permit, consumer.next().await)
            };
            let (permit, next) = tokio::select! {
                _ = shutdown.changed() => break Left::Stop,
                Some(lapin::Event::Error(e)) = events.next() => {
                    tracing::warn!("broker connection lost ({e}); reconnecting");
                    break Left::Lost;
                }
                next = next => next,
            };
            let Ok(permit) = permit else {
                // The semaphore is never closed; treated as a shutdown.
                break Left::Stop;
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
                    break Left::Lost;
                }
                None => {
                    tracing::warn!("the broker ended the consumer; reconnecting");
                    break Left::Lost;
                }
            }
        };
        if let Left::Stop = left {
            last = Some((conn, channel, tag));
            break;
        }
    }
    let deadline = Instant::now() + cfg.shutdown_timeout;
    drain(ctx, cfg, &mut tasks, last, deadline).await;
    Ok(deadline)
}

/// The shutdown, within `deadline`: stop consuming (what was prefetched and not started
/// returns to the queue on close), let running executions end until a grace before the
/// deadline ([`MAX_CANCEL_GRACE`]), then cancel the rest (each ends `cancelled`, reported and
/// acknowledged) and, at the deadline, abandon what still has not ended (unacknowledged: its
/// dispatch returns to the queue).
async fn drain(
    ctx: &Ctx,
    cfg: &WorkerConfig,
    tasks: &mut JoinSet<()>,
    last: Option<(Connection, Channel, String)>,
    deadline: Instant,
) {
    let grace = (cfg.shutdown_timeout / 4).min(MAX_CANCEL_GRACE);
    if let Some((_, channel, tag)) = &last {
        let cancel = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
        let _ = tokio::time::timeout_at((deadline - grace).into(), cancel).await;
    }
    if join_all(tasks, deadline - grace).await.is_err() {
        tracing::warn!(
            running = tasks.len(),
            "shutdown timeout passed: cancelling the executions still running"
        );
        ctx.cancels.cancel_all();
        if join_all(tasks, deadline).await.is_err() {
            tracing::warn!(
                running = tasks.len(),
                "shutdown: executions still not ended are abandoned unacknowledged (their dispatches return to the queue)"
            );
            tasks.abort_all();
        }
    }
    if let Some((conn, _, _)) = last {
        let within = deadline
            .saturating_duration_since(Instant::now())
            .max(CLOSE_WAIT);
        let _ = tokio::time::timeout(within, conn.close(200, "worker shutdown".into())).await;
    }
}

/// Waits for every task of `tasks` to end, until `at`.
async fn join_all(tasks: &mut JoinSet<()>, at: Instant) -> Result<(), tokio::time::error::Elapsed> {
    tokio::time::timeout_at(at.into(), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
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
