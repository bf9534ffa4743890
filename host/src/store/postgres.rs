//! PostgreSQL backend (production): tables in a schema of their own (`database.schema`,
//! default `attune`), migrations from `host/migrations/postgres`. What differs from SQLite:
//! opening (schema, advisory lock), times as `timestamptz`, and change notifications
//! (`LISTEN attune_secrets`) that empty a row cache.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor as _};

use super::sql::{Dialect, SqlBackend};
use super::{redact_url, Error, Result};

/// Channel of the change notifications sent by migration `0003` (payload: the schema).
pub(super) const NOTIFY_CHANNEL: &str = "attune_secrets";

/// The PostgreSQL dialect of the store's statements; the schema it works in.
pub(super) struct PgDialect {
    schema: String,
}

super::sql::sql_backend!(PgDialect);

impl Dialect for PgDialect {
    type Db = sqlx::Postgres;
    const KIND: &'static str = "postgres";
    const NOW: &'static str = "now()";
    // `xmax` is 0 for a row this statement inserted.
    const INSERTED: &'static str = "(xmax = 0)";
    const TIME_PARAM: &'static str = "::timestamptz";
    const JSON_ROWS: &'static str = "jsonb_array_elements($1::jsonb) AS j(value)";
    const TEXT_CAST: &'static str = "::text";

    fn time_text(column: &str) -> String {
        format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
    }

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn location(&self) -> String {
        self.schema.clone()
    }

    fn after_write<'a>(
        &'a self,
        _pool: &'a PgPool,
    ) -> impl std::future::Future<Output = ()> + Send + 'a {
        std::future::ready(())
    }

    fn watch_changes(
        &self,
        pool: &PgPool,
        cache: std::sync::Weak<super::cache::RowCache>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        Some(tokio::spawn(Self::invalidate_on_notify(
            pool.clone(),
            self.schema.clone(),
            cache,
        )))
    }
}

/// Opens the store in `schema` (created if missing) on the database at `url`, migrated;
/// creating and migrating happen under an advisory lock keyed by the schema.
pub(super) async fn open(
    url: &str,
    schema: &str,
    max_connections: u32,
) -> Result<SqlBackend<PgDialect>> {
    let open_err = |cause| Error::Open {
        url: redact_url(url),
        cause,
    };
    if !valid_schema(schema) {
        return Err(Error::BadSchema(schema.escape_default().to_string()));
    }
    let options = PgConnectOptions::from_str(url)
        .map_err(open_err)?
        .options([("search_path", schema)]);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options.clone())
        .await
        .map_err(open_err)?;
    // Hosts started at once on a fresh schema take turns (bad-inputs N27): sqlx's migrator
    // locks only around the migrations, not `CREATE SCHEMA`, which fails with a unique
    // violation when two sessions race. A transaction-scoped advisory lock, keyed by the
    // schema, on a connection of its own (the pool may have one connection only) covers
    // both; ending the transaction (or losing the connection) releases it.
    let mut lock_conn = sqlx::PgConnection::connect_with(&options)
        .await
        .map_err(open_err)?;
    let mut lock = lock_conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key(schema))
        .execute(&mut *lock)
        .await?;
    // Attune's own schema is never ours: refuse before creating a table in it (the CLI
    // pointed at Attune's database with the default schema `attune`).
    let attune_tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.tables
          WHERE table_schema = $1 AND table_name IN ('key', 'action', 'execution')",
    )
    .bind(schema)
    .fetch_one(&mut *lock)
    .await?;
    if attune_tables == 3 {
        return Err(Error::AttuneSchema(schema.to_owned()));
    }
    // The schema name is checked above ([a-z_][a-z0-9_]*), so it can be spliced in.
    pool.execute(format!("CREATE SCHEMA IF NOT EXISTS {schema}").as_str())
        .await?;
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    lock.commit().await?;
    let _ = lock_conn.close().await;
    // The audit trail's own connection, opened at its first write; durability is the server's
    // (`synchronous_commit`).
    let audit = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_lazy_with(options);
    Ok(SqlBackend::new(
        pool,
        audit,
        PgDialect {
            schema: schema.to_owned(),
        },
    ))
}

impl PgDialect {
    /// Empties `cache` on every change to this schema's `secrets` table (migration `0003`
    /// sends `NOTIFY attune_secrets, '<schema>'`). The cache serves entries only while the
    /// listener is connected; a lost connection marks it not live (and empties it) until
    /// `LISTEN` is re-established, and for good when this task is cancelled. The listener
    /// holds one connection of the pool (which [`super::Store::open_with`] enlarges by one).
    /// Runs until aborted.
    async fn invalidate_on_notify(
        pool: PgPool,
        schema: String,
        cache: std::sync::Weak<super::cache::RowCache>,
    ) {
        use sqlx::postgres::PgListener;
        // Tells the cache whether notifications arrive. Dropped with this task (the store
        // dropped, or the tokio runtime that ran it shut down), it marks the cache not live
        // for good: nothing would tell it about changes any more.
        struct Live(std::sync::Weak<super::cache::RowCache>);
        impl Live {
            /// `false` once the cache is gone (the task can end).
            fn set(&self, live: bool) -> bool {
                self.0.upgrade().map(|cache| cache.set_live(live)).is_some()
            }
        }
        impl Drop for Live {
            fn drop(&mut self) {
                self.set(false);
            }
        }
        let live = Live(cache.clone());
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            let listener = async {
                let mut listener = PgListener::connect_with(&pool).await?;
                listener.listen(NOTIFY_CHANNEL).await?;
                Ok::<_, sqlx::Error>(listener)
            }
            .await;
            match listener {
                Ok(mut listener) => {
                    if !live.set(true) {
                        return;
                    }
                    backoff = std::time::Duration::from_millis(100);
                    loop {
                        match listener.try_recv().await {
                            Ok(Some(note)) => {
                                if note.payload() == schema {
                                    match cache.upgrade() {
                                        Some(cache) => cache.invalidate(),
                                        None => return,
                                    }
                                }
                            }
                            Ok(None) => {
                                tracing::warn!("secret cache: PostgreSQL listener connection lost; reconnecting");
                                break;
                            }
                            Err(e) => {
                                tracing::warn!(
                                    "secret cache: PostgreSQL listener failed: {e}; reconnecting"
                                );
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!("secret cache: cannot LISTEN on PostgreSQL: {e}"),
            }
            if !live.set(false) {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
        }
    }
}

/// The advisory lock key of `schema`'s creation and migration: the first 8 bytes of
/// SHA-256 of a fixed prefix and the schema name (distinct from sqlx's migration lock, which
/// is keyed by the database name).
fn lock_key(schema: &str) -> i64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("attune-wasm store schema {schema}"));
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Schema names are limited to `[a-z_][a-z0-9_]{0,62}` so they never need quoting.
fn valid_schema(schema: &str) -> bool {
    let mut bytes = schema.bytes();
    schema.len() <= 63
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
