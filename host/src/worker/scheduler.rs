//! `attune-wasm execute`: a minimal stand-in for Attune's scheduler, for wasm actions only
//! (trying the worker without the rest of Attune; the tests and the fleet script use it).
//!
//! It creates the `attune.execution` row (`scheduled`, assigned to the chosen worker), picks
//! an active worker that runs `wasm` and has a fresh heartbeat (the one that was given an
//! execution least recently: round robin), publishes `ExecutionRequested` on
//! `execution.dispatch.worker.{id}` as Attune's scheduler does, and optionally waits for the
//! terminal status.

use std::time::{Duration, Instant};

use lapin::options::ConfirmSelectOptions;
use serde_json::Value;
use sqlx::postgres::PgPool;
use sqlx::Row;

use super::attune_db::{self, TERMINAL};
use super::config::{DEFAULT_HEARTBEAT_SECS, RUNTIME_NAME};
use super::protocol::{self, Envelope, ExecutionRequested};
use super::Error;
use crate::config::Settings;

/// A dispatched execution.
#[derive(Debug, Clone)]
pub struct Dispatched {
    /// `attune.execution.id`.
    pub execution_id: i64,
    /// The worker it was given to.
    pub worker_id: i64,
    /// That worker's name.
    pub worker_name: String,
}

/// How an execution ended.
#[derive(Debug, Clone)]
pub struct Ended {
    /// Terminal status.
    pub status: String,
    /// Its `result`.
    pub result: Option<Value>,
}

/// Creates and dispatches an execution of `action` with `params` (a JSON object).
///
/// # Errors
/// [`Error::Params`], [`Error::UnknownAction`], [`Error::NoWorker`], [`Error::Database`],
/// [`Error::Broker`].
pub async fn dispatch(
    settings: &Settings,
    action: &str,
    params: &Value,
) -> Result<Dispatched, Error> {
    if !params.is_object() {
        return Err(Error::Params("parameters must be a JSON object".into()));
    }
    // Checked before any row is written.
    let url = super::config::amqp_url(settings)?;
    let pool = pool(settings).await?;
    let row = sqlx::query("SELECT id, ref FROM action WHERE ref = $1")
        .bind(action)
        .fetch_optional(&pool)
        .await
        .map_err(Error::db)?
        .ok_or_else(|| Error::UnknownAction(action.escape_default().to_string()))?;
    let action_id: i64 = row.try_get("id").map_err(Error::db)?;
    // Attune treats a worker as stale after three missed heartbeats.
    let stale = 3 * settings
        .worker
        .heartbeat_interval
        .unwrap_or(DEFAULT_HEARTBEAT_SECS);
    let worker = sqlx::query(
        "SELECT w.id, w.name FROM worker w
          WHERE w.status = 'active' AND w.worker_role = 'action'
            AND w.capabilities -> 'runtimes' ? $1
            AND w.last_heartbeat > now() - make_interval(secs => $2)
          ORDER BY (SELECT max(e.created) FROM execution e WHERE e.worker = w.id) NULLS FIRST, w.id
          LIMIT 1",
    )
    .bind(RUNTIME_NAME)
    .bind(stale as f64)
    .fetch_optional(&pool)
    .await
    .map_err(Error::db)?
    .ok_or(Error::NoWorker(stale))?;
    let worker_id: i64 = worker.try_get("id").map_err(Error::db)?;
    let worker_name: String = worker.try_get("name").map_err(Error::db)?;
    let execution_id: i64 = sqlx::query(
        "INSERT INTO execution (action, action_ref, config, status, worker)
         VALUES ($1, $2, $3::text::jsonb, 'scheduled', $4) RETURNING id",
    )
    .bind(action_id)
    .bind(action)
    .bind(params.to_string())
    .bind(worker_id)
    .fetch_one(&pool)
    .await
    .map_err(Error::db)?
    .try_get("id")
    .map_err(Error::db)?;

    let conn = protocol::connect(&url).await?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| Error::Broker(format!("cannot open a channel: {e}")))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| Error::Broker(format!("cannot enable publisher confirms: {e}")))?;
    protocol::declare_common(&channel).await?;
    let envelope = Envelope::new(
        protocol::EXECUTION_REQUESTED,
        ExecutionRequested {
            execution_id,
            action_id: Some(action_id),
            action_ref: Some(action.to_owned()),
            parent_id: None,
            enforcement_id: None,
            config: Some(params.clone()),
        },
        None,
    );
    if let Err(e) = protocol::publish(
        &channel,
        &protocol::dispatch_key(worker_id),
        &envelope,
        true,
    )
    .await
    {
        // Never leave a row `scheduled` that no worker will ever see.
        let result = serde_json::json!({ "succeeded": false, "error": e.to_string() });
        let _ = attune_db::finish(&pool, execution_id, "scheduled", "failed", &result).await;
        let _ = conn.close(200, "not dispatched".into()).await;
        return Err(e);
    }
    let _ = conn.close(200, "dispatched".into()).await;
    Ok(Dispatched {
        execution_id,
        worker_id,
        worker_name,
    })
}

/// Waits (polling every 20 ms) until execution `id` has a terminal status.
///
/// # Errors
/// [`Error::WaitTimeout`], [`Error::Database`].
pub async fn wait(settings: &Settings, id: i64, limit: Duration) -> Result<Ended, Error> {
    let pool = pool(settings).await?;
    let start = Instant::now();
    loop {
        let row = sqlx::query(
            "SELECT status::text AS status, result::text AS result FROM execution WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .map_err(Error::db)?;
        let status: String = row.try_get("status").map_err(Error::db)?;
        if TERMINAL.contains(&status.as_str()) {
            return Ok(Ended {
                status,
                result: row
                    .try_get::<Option<String>, _>("result")
                    .map_err(Error::db)?
                    .and_then(|text| serde_json::from_str(&text).ok()),
            });
        }
        if start.elapsed() >= limit {
            return Err(Error::WaitTimeout {
                id,
                secs: limit.as_secs(),
                status,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pool(settings: &Settings) -> Result<PgPool, Error> {
    attune_db::connect(super::config::database_url(settings)?, 2).await
}
