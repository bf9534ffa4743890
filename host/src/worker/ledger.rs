//! The completion ledger: which executions this worker ended, and whether their
//! `ExecutionCompleted` reached the broker. One table of our own,
//! `attune_wasm.completion` (schema [`OWN_SCHEMA`], never Attune's), written in the same
//! transaction as the terminal status (a pending row) and again once the broker confirmed the
//! message (its `published` time). The `published` times are not a transaction of their own
//! per execution: the worker keeps the confirmed ids in memory and writes them with its next
//! terminal commit (same statement), or by themselves after a short delay when no execution
//! ends meanwhile, and before it reads the ledger (a redelivery, a reconnection) or stops.
//!
//! This makes `ExecutionCompleted` at-least-once with no duplicate in the normal paths: a
//! dispatch is acknowledged only once its completion is published; a redelivered dispatch
//! whose execution is terminal publishes the completion from the committed row when the
//! ledger says it is pending, and is skipped when it says published (or when the ledger has no
//! row: the execution was ended by someone else). What is left is one window: the worker
//! dies between the broker's confirmation and the `published` write (a few milliseconds under
//! load, at most that delay when idle), or that write fails; at its restart it then publishes
//! a second `ExecutionCompleted` for the execution (Attune's
//! completion listener releases the action's slot by execution id, so a second one finds no
//! slot and changes nothing there).
//!
//! The table is created by the worker at start (`CREATE TABLE IF NOT EXISTS` under an advisory
//! lock, after the store has created the schema): the store's migrations are shared with
//! every PostgreSQL secret store, and this table is the worker's alone.

use sqlx::postgres::PgPool;
use sqlx::Row;

use super::attune_db;
use super::{Error, OWN_SCHEMA};

/// The ledger's table, qualified by [`OWN_SCHEMA`].
pub const TABLE: &str = "attune_wasm.completion";

/// Advisory lock key taken while the table is created (workers started at once would
/// otherwise race in `CREATE TABLE IF NOT EXISTS`): "attune-wasm completion ledger" in 8 bytes.
const CREATE_LOCK: i64 = 0x6177_636f_6d70_6c31;

/// Creates the ledger's table if it is missing; the schema [`OWN_SCHEMA`] must exist.
///
/// # Errors
/// [`Error::Database`] when the table cannot be created (no `CREATE` on the schema).
pub async fn ensure(pool: &PgPool) -> Result<(), Error> {
    debug_assert_eq!(TABLE.split('.').next(), Some(OWN_SCHEMA));
    let mut tx = pool.begin().await.map_err(Error::db)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CREATE_LOCK)
        .execute(&mut *tx)
        .await
        .map_err(Error::db)?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS attune_wasm.completion (
             execution_id BIGINT PRIMARY KEY,
             worker       BIGINT NOT NULL,
             status       TEXT NOT NULL,
             committed    TIMESTAMPTZ NOT NULL DEFAULT now(),
             published    TIMESTAMPTZ
         )",
    )
    .execute(&mut *tx)
    .await
    .map_err(Error::db)?;
    tx.commit().await.map_err(Error::db)
}

/// [`attune_db::finish`] and, when it wrote, the pending ledger row of execution `id` (ended
/// by `worker`), with the publication times of the executions `published` (confirmed by the
/// broker since the last such write), in one statement: one transaction, one round trip.
///
/// # Errors
/// As [`attune_db::finish`]: [`Error::Refused`] for a refused statement, [`Error::Database`]
/// when the database cannot be reached. Nothing is written then (`published` included).
pub async fn finish(
    pool: &PgPool,
    worker: i64,
    id: i64,
    expected: &str,
    status: &str,
    result: &serde_json::Value,
    published: &[i64],
) -> Result<bool, Error> {
    static STATEMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH finished AS ({} RETURNING id),
              pending AS (
                INSERT INTO attune_wasm.completion (execution_id, worker, status)
                SELECT id, $5, $3 FROM finished
                ON CONFLICT (execution_id) DO UPDATE
                  SET worker = EXCLUDED.worker, status = EXCLUDED.status, committed = now(),
                      published = NULL),
              marked AS (
                UPDATE attune_wasm.completion SET published = now()
                 WHERE execution_id = ANY($6) AND execution_id <> $1 AND published IS NULL)
         SELECT count(*) AS n FROM finished",
            attune_db::FINISH
        )
    });
    let row = sqlx::query(STATEMENT.as_str())
        .bind(id)
        .bind(expected)
        .bind(status)
        .bind(result.to_string())
        .bind(worker)
        .bind(published)
        .fetch_one(pool)
        .await
        .map_err(Error::statement)?;
    Ok(row.try_get::<i64, _>("n").map_err(Error::db)? == 1)
}

/// Records that the `ExecutionCompleted` of the executions `ids` were confirmed by the broker.
///
/// # Errors
/// [`Error::Database`].
pub async fn published(pool: &PgPool, ids: &[i64]) -> Result<(), Error> {
    sqlx::query(
        "UPDATE attune_wasm.completion SET published = now()
          WHERE execution_id = ANY($1) AND published IS NULL",
    )
    .bind(ids)
    .execute(pool)
    .await
    .map_err(Error::db)?;
    Ok(())
}

/// Whether the `ExecutionCompleted` of execution `id` is still to be published: `true` when
/// this ledger has its pending row (ended here, not yet confirmed), `false` when it was
/// published or was not ended through this ledger.
///
/// # Errors
/// [`Error::Database`].
pub async fn pending(pool: &PgPool, id: i64) -> Result<bool, Error> {
    let row = sqlx::query(
        "SELECT published IS NULL AS pending FROM attune_wasm.completion WHERE execution_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(Error::db)?;
    row.map_or(Ok(false), |r| r.try_get("pending").map_err(Error::db))
}

/// Executions ended by `worker` whose `ExecutionCompleted` is still pending, oldest first (at
/// most `limit`).
///
/// # Errors
/// [`Error::Database`].
pub async fn pending_of(pool: &PgPool, worker: i64, limit: i64) -> Result<Vec<i64>, Error> {
    let rows = sqlx::query(
        "SELECT execution_id FROM attune_wasm.completion
          WHERE worker = $1 AND published IS NULL ORDER BY committed LIMIT $2",
    )
    .bind(worker)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(Error::db)?;
    rows.iter()
        .map(|r| r.try_get("execution_id").map_err(Error::db))
        .collect()
}
