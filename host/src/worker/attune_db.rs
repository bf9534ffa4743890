//! Attune's own tables (schema `attune`), as a worker reads and writes them: its registration
//! in `attune.worker` and the `attune.execution` and `attune.action` rows of a dispatch (its
//! secrets, read only from `attune.key`, are [`crate::store::AttuneKeys`]). Nothing here creates
//! or alters a table. Times are the
//! database's `now()`, never this host's clock.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Row};

use super::Error;

/// Attune's schema.
pub const SCHEMA: &str = "attune";

/// Statuses after which the worker never touches an execution again.
pub const TERMINAL: &[&str] = &["completed", "failed", "cancelled", "timeout", "abandoned"];

/// A pool on Attune's database with `search_path = attune, public` (as Attune's services use).
///
/// # Errors
/// [`Error::Database`] when the URL is malformed or the database cannot be reached.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, Error> {
    let options = PgConnectOptions::from_str(url)
        .map_err(Error::db)?
        .options([("search_path", "attune,public")]);
    PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(Error::db)
}

/// One connection to Attune's database, outside any pool (it holds the worker-name lock, see
/// [`lock_name`], for as long as it lives), with the pool's `search_path` and the
/// `application_name` [`LOCK_APPLICATION`].
///
/// # Errors
/// [`Error::Database`] when the URL is malformed or the database cannot be reached.
pub async fn connect_one(url: &str) -> Result<PgConnection, Error> {
    PgConnectOptions::from_str(url)
        .map_err(Error::db)?
        .options([("search_path", "attune,public")])
        .application_name(LOCK_APPLICATION)
        .connect()
        .await
        .map_err(Error::db)
}

/// The `application_name` of the connection that holds a worker's name lock.
pub const LOCK_APPLICATION: &str = "attune-wasm worker lock";

/// Takes the worker-name lock of `name` on `conn`, if no other session holds it: a
/// session-level PostgreSQL advisory lock (`pg_try_advisory_lock`), held until it is
/// released or the session ends (the process stops, or the connection is cut). Its key is
/// `hashtextextended('attune-wasm worker ' || name, 0)`, a 64-bit hash: one key per name, in
/// the key space of single-`bigint` advisory locks. `false` when another session holds it.
///
/// # Errors
/// [`Error::Database`].
pub async fn lock_name(conn: &mut PgConnection, name: &str) -> Result<bool, Error> {
    sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtextextended('attune-wasm worker ' || $1, 0))",
    )
    .bind(name)
    .fetch_one(conn)
    .await
    .map_err(Error::db)
}

/// Registers (or re-activates) the worker `name`: an upsert by name, as Attune's
/// `WorkerRegistration::register` does, with `capabilities.runtimes = [runtime]`.
///
/// # Errors
/// [`Error::Database`].
pub async fn register(
    pool: &PgPool,
    name: &str,
    host: &str,
    capabilities: &serde_json::Value,
) -> Result<i64, Error> {
    let row = sqlx::query(
        "INSERT INTO worker (name, worker_type, worker_role, host, status, capabilities, last_heartbeat)
         VALUES ($1, 'local', 'action', $2, 'active', $3::text::jsonb, now())
         ON CONFLICT (name) DO UPDATE
           SET status = 'active', last_heartbeat = now(), host = EXCLUDED.host,
               capabilities = EXCLUDED.capabilities, updated = now()
         RETURNING id",
    )
    .bind(name)
    .bind(host)
    .bind(capabilities.to_string())
    .fetch_one(pool)
    .await
    .map_err(Error::db)?;
    row.try_get("id").map_err(Error::db)
}

/// Heartbeat: `last_heartbeat = now()` (the database's clock) and `status = 'active'`.
///
/// # Errors
/// [`Error::Database`].
pub async fn heartbeat<'e, E: sqlx::PgExecutor<'e>>(db: E, id: i64) -> Result<(), Error> {
    sqlx::query(
        "UPDATE worker SET last_heartbeat = now(), status = 'active', updated = now() WHERE id = $1",
    )
    .bind(id)
    .execute(db)
    .await
    .map_err(Error::db)?;
    Ok(())
}

/// Marks the worker `inactive` (shutdown).
///
/// # Errors
/// [`Error::Database`].
pub async fn deregister<'e, E: sqlx::PgExecutor<'e>>(db: E, id: i64) -> Result<(), Error> {
    sqlx::query("UPDATE worker SET status = 'inactive', updated = now() WHERE id = $1")
        .bind(id)
        .execute(db)
        .await
        .map_err(Error::db)?;
    Ok(())
}

/// The columns of `attune.execution` a worker uses.
#[derive(Debug, Clone)]
pub struct ExecutionRow {
    /// `id`.
    pub id: i64,
    /// `action` (may be NULL when the action was deleted).
    pub action: Option<i64>,
    /// `action_ref`.
    pub action_ref: String,
    /// `config`: the parameters.
    pub config: Option<serde_json::Value>,
    /// `status`, lowercase.
    pub status: String,
    /// `timeout_seconds` (snapshotted at creation).
    pub timeout_seconds: Option<i32>,
}

/// The columns of `attune.action` a worker uses.
#[derive(Debug, Clone)]
pub struct ActionRow {
    /// `id`.
    pub id: i64,
    /// `ref`, `pack.name`.
    pub action_ref: String,
    /// `pack_ref`.
    pub pack_ref: String,
    /// `entrypoint`: the file under the pack's `actions/`.
    pub entrypoint: String,
    /// `timeout_seconds`.
    pub timeout_seconds: Option<i32>,
}

/// The execution `id`, if it exists.
///
/// # Errors
/// [`Error::Database`].
pub async fn execution(pool: &PgPool, id: i64) -> Result<Option<ExecutionRow>, Error> {
    let row = sqlx::query(
        "SELECT id, action, action_ref, config::text AS config, status::text AS status, timeout_seconds
         FROM execution WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(Error::db)?;
    row.map(|r| {
        Ok(ExecutionRow {
            id: r.try_get("id")?,
            action: r.try_get("action")?,
            action_ref: r.try_get("action_ref")?,
            config: r
                .try_get::<Option<String>, _>("config")?
                .and_then(|text| serde_json::from_str(&text).ok()),
            status: r.try_get("status")?,
            timeout_seconds: r.try_get("timeout_seconds")?,
        })
    })
    .transpose()
    .map_err(Error::db)
}

/// The action of `execution`: by id, else by ref (an action deleted and registered again).
///
/// # Errors
/// [`Error::Database`].
pub async fn action(pool: &PgPool, execution: &ExecutionRow) -> Result<Option<ActionRow>, Error> {
    let row = sqlx::query(
        "SELECT id, ref, pack_ref, entrypoint, timeout_seconds FROM action
         WHERE ($1::bigint IS NOT NULL AND id = $1) OR ($1::bigint IS NULL AND ref = $2)
         LIMIT 1",
    )
    .bind(execution.action)
    .bind(&execution.action_ref)
    .fetch_optional(pool)
    .await
    .map_err(Error::db)?;
    row.map(|r| {
        Ok(ActionRow {
            id: r.try_get("id")?,
            action_ref: r.try_get("ref")?,
            pack_ref: r.try_get("pack_ref")?,
            entrypoint: r.try_get("entrypoint")?,
            timeout_seconds: r.try_get("timeout_seconds")?,
        })
    })
    .transpose()
    .map_err(Error::db)
}

/// Moves a dispatched execution to `running` (owned by `worker`), when it is still
/// `requested`, `scheduling` or `scheduled`; answers the status it had, or `None` when it was
/// in another state (someone else moved it).
///
/// # Errors
/// [`Error::Refused`] when the database refuses the update (a constraint, a trigger),
/// [`Error::Database`] when it cannot be reached.
pub async fn start(pool: &PgPool, id: i64, worker: i64) -> Result<Option<String>, Error> {
    let row = sqlx::query(
        "WITH prev AS (SELECT status FROM execution WHERE id = $1 FOR UPDATE)
         UPDATE execution e
            SET status = 'running', started_at = now(), worker = $2
           FROM prev
          WHERE e.id = $1 AND prev.status IN ('requested', 'scheduling', 'scheduled')
         RETURNING prev.status::text AS previous",
    )
    .bind(id)
    .bind(worker)
    .fetch_optional(pool)
    .await
    .map_err(Error::statement)?;
    row.map(|r| r.try_get("previous"))
        .transpose()
        .map_err(Error::db)
}

/// Writes the terminal `status` and `result` of execution `id`, when its status is still
/// `expected`; `false` when it was not (another writer ended it first). `db` is the pool or a
/// transaction (the worker's completion ledger writes in the same one).
///
/// # Errors
/// [`Error::Refused`] when the database refuses the update (a constraint, a trigger),
/// [`Error::Database`] when it cannot be reached.
pub async fn finish<'e, E: sqlx::PgExecutor<'e>>(
    db: E,
    id: i64,
    expected: &str,
    status: &str,
    result: &serde_json::Value,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE execution SET status = $3::text::execution_status_enum, result = $4::text::jsonb
         WHERE id = $1 AND (status = $2::text::execution_status_enum
                            OR ($2::text = 'running' AND status = 'canceling'))",
    )
    .bind(id)
    .bind(expected)
    .bind(status)
    .bind(result.to_string())
    .execute(db)
    .await
    .map_err(Error::statement)?;
    Ok(done.rows_affected() == 1)
}

/// The committed `result` of execution `id` (`None` when it has none or does not exist).
///
/// # Errors
/// [`Error::Database`].
pub async fn result(pool: &PgPool, id: i64) -> Result<Option<serde_json::Value>, Error> {
    let row = sqlx::query("SELECT result::text AS result FROM execution WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(Error::db)?;
    let text: Option<String> = match row {
        Some(r) => r.try_get("result").map_err(Error::db)?,
        None => None,
    };
    Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
}
