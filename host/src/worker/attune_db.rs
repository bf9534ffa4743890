//! Attune's own tables (schema `attune`), as a worker reads and writes them: its registration
//! in `attune.worker` and the `attune.execution` and `attune.action` rows of a dispatch, with
//! the `attune.key` rows its action may see (read only, parsed by
//! [`crate::store::AttuneKeys`]). Nothing here creates or alters a table. Times are the
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

/// A pooled connection idle for at least this long is checked (a round trip) before it is
/// handed out; one used more recently is handed out as is.
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// A pool on Attune's database with `search_path = attune, public` (as Attune's services use).
///
/// sqlx's default check of every connection before each acquire (`test_before_acquire`: a
/// round trip per statement) is replaced by a check of connections idle for
/// [`CHECK_IDLE_AFTER`] or longer: on a busy worker the connections are never idle that long,
/// after a quiet spell (where a server restart or an idle-timeout of the network is likely)
/// the first acquire still finds a dead connection and replaces it. A connection that died
/// while the pool was busy fails the one statement it is used for; sqlx then discards it (its
/// check on release fails), and the worker's paths handle that statement's error as any lost
/// connection (requeue, retry, or, for the secrets read, one immediate retry).
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
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= CHECK_IDLE_AFTER {
                    // An error closes this connection; the pool tries another or opens one.
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
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
    row.as_ref()
        .map(execution_row)
        .transpose()
        .map_err(Error::db)
}

/// An [`ExecutionRow`] from the columns of that name.
fn execution_row(r: &sqlx::postgres::PgRow) -> Result<ExecutionRow, sqlx::Error> {
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

/// What [`claim`] found: the execution moved to `running`, or as it was.
#[derive(Debug)]
pub enum Claimed {
    /// It was `requested`, `scheduling` or `scheduled` and is now `running`, owned by the
    /// worker; `execution.status` is the status it had, and `action` its action row (`None`
    /// when the action is not in `attune.action`).
    Started {
        /// The row (with the status it had).
        execution: ExecutionRow,
        /// Its action.
        action: Option<ActionRow>,
        /// The `attune.key` rows its action may see, read in the same statement (`None`
        /// without an action).
        keys: Option<KeyRows>,
    },
    /// It was in another state (ended, running, being cancelled) and was left as it is.
    Found(ExecutionRow),
}

/// The `attune.key` rows an action may see as [`claim`] read them: the text of a JSON array
/// of arrays ([`crate::store::AttuneKeys`] parses it). It holds plain keys' values: no
/// `Debug` of its content, wiped when dropped.
pub struct KeyRows(pub(crate) zeroize::Zeroizing<String>);

impl std::fmt::Debug for KeyRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRows({} bytes)", self.0.len())
    }
}

/// The statement of [`claim`]: `$1` the execution id, `$2` the worker id.
static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH prev AS (SELECT id, status FROM execution WHERE id = $1 FOR UPDATE),
              started AS (
                UPDATE execution e
                   SET status = 'running', started_at = now(), worker = $2
                  FROM prev
                 WHERE e.id = prev.id AND prev.status IN ('requested', 'scheduling', 'scheduled')
                RETURNING e.id)
         SELECT e.id, e.action, e.action_ref, e.config::text AS config,
                prev.status::text AS status, e.timeout_seconds, s.id IS NOT NULL AS started,
                a.id AS a_id, a.ref AS a_ref, a.pack_ref AS a_pack_ref,
                a.entrypoint AS a_entrypoint, a.timeout_seconds AS a_timeout_seconds,
                CASE WHEN a.id IS NOT NULL THEN {keys} END AS keys
           FROM prev JOIN execution e ON e.id = prev.id
           LEFT JOIN started s ON s.id = prev.id
           LEFT JOIN LATERAL (
                SELECT id, ref, pack, pack_ref, entrypoint, timeout_seconds FROM action
                 WHERE (e.action IS NOT NULL AND id = e.action)
                    OR (e.action IS NULL AND ref = e.action_ref)
                 LIMIT 1) a ON s.id IS NOT NULL",
        keys = crate::store::attune::KEYS_OF_ACTION_A,
    )
});

/// Loads execution `id` and, when it is still `requested`, `scheduling` or `scheduled`, moves
/// it to `running` (owned by `worker`) and loads its action and the `attune.key` rows that
/// action may see, all in one statement (one round trip, one transaction): the start of every
/// dispatch. `None` when the execution does not exist.
///
/// # Errors
/// [`Error::Refused`] when the database refuses the update (a constraint, a trigger),
/// [`Error::Database`] when it cannot be reached.
pub async fn claim(pool: &PgPool, id: i64, worker: i64) -> Result<Option<Claimed>, Error> {
    let row = sqlx::query(&CLAIM)
        .bind(id)
        .bind(worker)
        .fetch_optional(pool)
        .await
        .map_err(Error::statement)?;
    let Some(r) = row else {
        return Ok(None);
    };
    let claimed = || -> Result<Claimed, sqlx::Error> {
        let execution = execution_row(&r)?;
        if !r.try_get::<bool, _>("started")? {
            return Ok(Claimed::Found(execution));
        }
        let action = match r.try_get::<Option<i64>, _>("a_id")? {
            Some(id) => Some(ActionRow {
                id,
                action_ref: r.try_get("a_ref")?,
                pack_ref: r.try_get("a_pack_ref")?,
                entrypoint: r.try_get("a_entrypoint")?,
                timeout_seconds: r.try_get("a_timeout_seconds")?,
            }),
            None => None,
        };
        let keys = r
            .try_get::<Option<String>, _>("keys")?
            .map(|text| KeyRows(zeroize::Zeroizing::new(text)));
        Ok(Claimed::Started {
            execution,
            action,
            keys,
        })
    };
    claimed().map(Some).map_err(Error::db)
}

/// The statement of [`finish`]: `$1` the id, `$2` the expected status, `$3` the terminal
/// status, `$4` the result as JSON text (the completion ledger embeds it in its own).
pub(crate) const FINISH: &str =
    "UPDATE execution SET status = $3::text::execution_status_enum, result = $4::text::jsonb
      WHERE id = $1 AND (status = $2::text::execution_status_enum
                         OR ($2::text = 'running' AND status = 'canceling'))";

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
    let done = sqlx::query(FINISH)
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
